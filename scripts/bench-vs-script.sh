#!/usr/bin/env bash
# Durable ingest against the script a school's IT would write instead (issue 22): the Python
# script's text is taken from BENCHMARKS.md (between the bench-vs-script.py markers), both
# run on one generated file, alternately, three rounds, each into a fresh store. Prints each
# rate, doorstep's peak RSS, each round's ratio (doorstep / script) and the median ratio.
# Usage: scripts/bench-vs-script.sh [N]   (default 100000)
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-100000}
# DOORSTEP_BIN: a binary to measure instead of building this tree's.
if [ -z "${DOORSTEP_BIN:-}" ]; then cargo build --release --locked --quiet; fi
bin=${DOORSTEP_BIN:-${CARGO_TARGET_DIR:-$PWD/target}/release/doorstep}
python=${PYTHON:-python3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
awk '/<!-- bench-vs-script.py: begin -->/ {on = 1; next}
     /<!-- bench-vs-script.py: end -->/ {on = 0}
     on && !/^```/' BENCHMARKS.md > "$work/ingest.py"
[ -s "$work/ingest.py" ] || { echo "no script between the markers in BENCHMARKS.md"; exit 2; }
# doorstep with both trusts' policies: full validation, policy, evidence trail.
printf 'mappings = "%s/mappings"\n[store]\nsqlite = "store.db"\n' "$PWD" > "$work/doorstep.toml"
"$bin" gen --count "$n" --seed 42 > "$work/records.jsonl"
echo "machine: $(nproc) cores, $(uname -m); $("$python" --version); $n records, $(du -m "$work/records.jsonl" | cut -f1) MiB of JSON lines"

# run NAME CMD…: wall seconds into $work/NAME.s, peak RSS (KiB) into $work/NAME.rss.
run() {
  local name=$1; shift
  rm -f "$work"/store.db* "$work"/script.db*
  /usr/bin/time -f '%e %M' -o "$work/$name.t" "$@" > /dev/null
  read -r secs rss < "$work/$name.t"
  echo "$secs" > "$work/$name.s"; echo "$rss" > "$work/$name.rss"
}
ratios=()
for round in 1 2 3; do
  run script "$python" "$work/ingest.py" "$work/records.jsonl" "$work/script.db"
  run doorstep "$bin" ingest --config "$work/doorstep.toml" "$work/records.jsonl"
  s=$(cat "$work/script.s"); d=$(cat "$work/doorstep.s"); rss=$(cat "$work/doorstep.rss")
  ratio=$(awk -v s="$s" -v d="$d" 'BEGIN { printf "%.2f", s / d }')
  ratios+=("$ratio")
  awk -v n="$n" -v s="$s" -v d="$d" -v rss="$rss" -v r="$ratio" -v k="$round" 'BEGIN {
    printf "round %d: script %6.2f s = %7.0f rec/s; doorstep ingest %6.2f s = %7.0f rec/s, peak %.0f MiB; ratio %s\n",
      k, s, n / s, d, n / d, rss / 1024, r }'
done
median=$(printf '%s\n' "${ratios[@]}" | sort -n | sed -n 2p)
echo "median ratio (doorstep / script): $median   (aim: >= 2)"
