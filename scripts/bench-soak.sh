#!/usr/bin/env bash
# Soak benchmark (PostgreSQL, two `serve` instances on one schema): MINUTES minutes of a
# steady RATE records/s posted to them, delivered to a local fake webhook receiver; a line
# a minute (dead tuples, deliveries table size, end-to-end latency, throughput) and a
# markdown table at the end. Needs psql and a PostgreSQL server (DOORSTEP_PG_URL, default
# postgres://root@127.0.0.1:5432/test); makes and drops a throw-away schema. Never builds:
# DOORSTEP_BIN picks the binary (default /work/bench/target/release/doorstep). Further
# arguments go to scripts/soak.py (e.g. --vacuum-every 60 where the server runs no
# autovacuum, --keep, --markdown FILE).
# Usage: scripts/bench-soak.sh [MINUTES] [RATE] [soak.py options…]
set -euo pipefail
cd "$(dirname "$0")/.."
minutes="${1:-30}"
rate="${2:-50}"
shift $(( $# > 2 ? 2 : $# ))
exec python3 scripts/soak.py --minutes "$minutes" --rate "$rate" \
  --bin "${DOORSTEP_BIN:-/work/bench/target/release/doorstep}" "$@"
