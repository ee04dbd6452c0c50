#!/usr/bin/env bash
# Delivery benchmark: 100,000 records to a local webhook fake answering in 5 ms at
# concurrency 64 (20,000 at 8, 2,000 at 1), the loopback ceiling (a fake answering at once),
# and the latency of one immediate flag while 50,000 routine deliveries are queued.
# Usage: scripts/bench-deliver.sh [RECORDS] [QUEUED]
set -euo pipefail
cd "$(dirname "$0")/.."
# DOORSTEP_BENCH_DELIVER: an example binary to measure instead of building this tree's.
if [ -z "${DOORSTEP_BENCH_DELIVER:-}" ]; then cargo build --release --locked --quiet --example bench_deliver; fi
exec "${DOORSTEP_BENCH_DELIVER:-target/release/examples/bench_deliver}" --records "${1:-100000}" --queued "${2:-50000}"
