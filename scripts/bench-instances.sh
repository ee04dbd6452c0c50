#!/usr/bin/env bash
# Several instances on one PostgreSQL (issue 21): deliveries per second with 1, 2 and 3
# `doorstep sync` processes sharing one store against a local webhook fake (20 ms, concurrency
# 8 per instance), and `ingest` on PostgreSQL beside SQLite.
# Usage: scripts/bench-instances.sh [RECORDS] [LATENCY_MS] [CONCURRENCY]   (20000 20 8)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked --quiet --bin doorstep --example bench_instances
target=${CARGO_TARGET_DIR:-$PWD/target}
exec "$target/release/examples/bench_instances" --records "${1:-20000}" \
  --latency-ms "${2:-20}" --concurrency "${3:-8}"
