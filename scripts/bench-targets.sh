#!/usr/bin/env bash
# Target-system benchmark (issue 7): an end-to-end sync of RECORDS visit reports (default
# 50,000) for one trust, 500 pupils at 4 schools, into in-process fakes of Arbor, Wonde,
# Xporter and Ed-Fi each answering in 10 ms (the shipped connector files); then the same
# records to one CSV destination alone. Any further arguments go to the bench as they are,
# e.g. `--faults 30` (issue 17: 30% of the fakes' answers faulted), `--fault-seed N`,
# `--pupils N`.
# Usage: scripts/bench-targets.sh [RECORDS] [ARGS...]   e.g. scripts/bench-targets.sh 2000 --faults 30
set -euo pipefail
cd "$(dirname "$0")/.."
records=50000
if [[ $# -gt 0 && $1 != -* ]]; then
  records=$1
  shift
fi
cargo build --release --locked --quiet --example bench_targets
exec "${CARGO_TARGET_DIR:-target}/release/examples/bench_targets" --records "$records" "$@"
