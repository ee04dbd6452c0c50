#!/usr/bin/env bash
# Target-system benchmark (issue 7): an end-to-end sync of RECORDS visit reports (default
# 50,000) for one trust, 500 pupils at 4 schools, into in-process fakes of Arbor, Wonde,
# Xporter and Ed-Fi each answering in 10 ms (the shipped connector files); then the same
# records to one CSV destination alone.
# Usage: scripts/bench-targets.sh [RECORDS]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked --quiet --example bench_targets
exec target/release/examples/bench_targets --records "${1:-50000}"
