#!/usr/bin/env bash
# Intake benchmark: generates N records with `doorstep gen`, then times `check` and a durable
# `ingest` into a fresh SQLite store, with peak memory (RSS) for each.
# Usage: scripts/bench.sh [N]   (default 200000)
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-200000}
# DOORSTEP_BIN: a binary to measure instead of building this tree's (see bench-ab.sh).
if [ -z "${DOORSTEP_BIN:-}" ]; then cargo build --release --locked --quiet; fi
bin=${DOORSTEP_BIN:-target/release/doorstep}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
printf '[store]\nsqlite = "bench.db"\n' > "$work/doorstep.toml"

"$bin" gen --count "$n" --seed 42 > "$work/records.jsonl"
size=$(du -m "$work/records.jsonl" | cut -f1)
echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB, $(uname -m); records: $n ($size MiB of JSON lines)"

measure() { # name, command...
  local name=$1; shift
  local t0 t1
  t0=$(date +%s.%N)
  /usr/bin/time -f '%M' -o "$work/rss" "$@" > /dev/null
  t1=$(date +%s.%N)
  awk -v n="$n" -v a="$t0" -v b="$t1" -v rss="$(cat "$work/rss")" -v name="$name" \
    'BEGIN { s = b - a; printf "%-11s %8.2f s  %10.0f records/s  peak RSS %6.1f MiB\n", name, s, n / s, rss / 1024 }'
}

measure check "$bin" check "$work/records.jsonl"
# The same records as one .json array: streamed too, so memory stays flat.
{ echo '['; sed '$!s/$/,/' "$work/records.jsonl"; echo ']'; } > "$work/records.json"
measure check-array "$bin" check "$work/records.json"
rm "$work/records.json"
measure ingest "$bin" ingest --config "$work/doorstep.toml" "$work/records.jsonl"
measure re-ingest "$bin" ingest --config "$work/doorstep.toml" "$work/records.jsonl"
echo "store: $(du -m "$work/bench.db" | cut -f1) MiB"
