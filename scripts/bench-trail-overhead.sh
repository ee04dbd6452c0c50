#!/usr/bin/env bash
# What the evidence trail costs `ingest` (issue 8: aim ≤ +15%). Builds this commit twice — as
# it is, and with the trail's append taken out of the ingest transaction (a copy in a temporary
# git worktree, never shipped) — then ingests the same N records into a fresh store with each,
# alternating, R rounds, and prints every run and the medians.
# Usage: scripts/bench-trail-overhead.sh [N] [R]   (defaults 200000 and 5)
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-200000}
rounds=${2:-5}
cargo build --release --locked --quiet
with=$PWD/target/release/doorstep
work=$(mktemp -d)
trap 'git worktree remove --force "$work/src-copy" >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
git worktree add --detach "$work/src-copy" HEAD >/dev/null 2>&1
line='        self.append_events(&mut tx, &events).await.map_err(&err)?;'
file="$work/src-copy/src/store/sqlite.rs"
[ "$(grep -cF "$line" "$file")" = 1 ] || { echo "the ingest's append line moved: update $0" >&2; exit 2; }
awk -v l="$line" '$0 == l { print "        let _ = events;"; next } { print }' "$file" > "$file.new"
mv "$file.new" "$file"
repo=$PWD
(cd "$work/src-copy" && CARGO_TARGET_DIR="$repo/target/no-trail" cargo build --release --locked --quiet)
without=$repo/target/no-trail/release/doorstep
cd "$work"
printf 'mappings = "%s/mappings"\n[store]\nsqlite = "bench.db"\n' "$repo" > doorstep.toml
"$with" gen --count "$n" --seed 42 \
  | sed -e 's/"trust":"thrive"/"trust":"celt"/' -e 's/"urn":"[0-9]*"/"urn":"136401"/' > records.jsonl
echo "machine: $(nproc) cores, $(uname -m); $n records at one school, $rounds rounds"
for r in $(seq "$rounds"); do
  for variant in without with; do
    bin=${!variant}
    rm -f bench.db bench.db-wal bench.db-shm
    /usr/bin/time -f "$variant %e %U %S" "$bin" ingest records.jsonl 2>>times.txt >/dev/null || true
  done
done
grep -E '^(with|without) ' times.txt | awk '{print "  " $1 ": " $2 " s wall, " $3 "+" $4 " s CPU"}'
for variant in without with; do
  grep "^$variant " times.txt | awk '{print $2}' | sort -n \
    | awk -v v="$variant" '{a[NR]=$1; s+=$1} END {m=(NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2; printf "%-8s median %.2f s, mean %.2f s\n", v, m, s/NR}'
done
