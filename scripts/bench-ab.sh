#!/usr/bin/env bash
# Before/after: runs bench.sh, bench-deliver.sh and bench-audit.sh against two builds,
# alternating (A, B, A, B…) so that a shared machine's drift falls on both alike.
# Usage: scripts/bench-ab.sh A_DIR B_DIR [ROUNDS]
#   each DIR holds a release `doorstep` and `bench_deliver` (target/release/{,examples/}).
set -euo pipefail
cd "$(dirname "$0")/.."
a=$1 b=$2 rounds=${3:-2}
for round in $(seq 1 "$rounds"); do
  for side in A B; do
    dir=$a; [ "$side" = B ] && dir=$b
    echo "=== round $round, $side ($dir)"
    DOORSTEP_BIN=$dir/doorstep scripts/bench.sh
    DOORSTEP_BENCH_DELIVER=$dir/bench_deliver scripts/bench-deliver.sh
    DOORSTEP_BIN=$dir/doorstep scripts/bench-audit.sh
  done
done
