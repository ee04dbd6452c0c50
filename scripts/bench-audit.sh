#!/usr/bin/env bash
# Evidence-trail benchmark: ingests N generated records all at one school (CELT 136401),
# exports that school's year with `audit export`, and verifies it with `audit verify`.
# Usage: scripts/bench-audit.sh [N]   (default 200000)
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-200000}
# DOORSTEP_BIN: a binary to measure instead of building this tree's (see bench-ab.sh).
if [ -z "${DOORSTEP_BIN:-}" ]; then cargo build --release --locked --quiet; fi
bin=${DOORSTEP_BIN:-$PWD/target/release/doorstep}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
"$bin" audit keygen --name bench.example --out log.key 2>/dev/null >/dev/null
printf 'mappings = "%s/mappings"\n[store]\nsqlite = "bench.db"\n[audit]\nsigning_key = { file = "log.key" }\n' "$OLDPWD" > doorstep.toml
"$bin" gen --count "$n" --seed 42 \
  | sed -e 's/"trust":"thrive"/"trust":"celt"/' -e 's/"urn":"[0-9]*"/"urn":"136401"/' > records.jsonl
t() { local s e; s=$(date +%s.%N); "$@" > "$work/out.txt"; e=$(date +%s.%N); awk -v a="$s" -v b="$e" 'BEGIN{printf "%.2f", b-a}'; }
echo "machine: $(nproc) cores, $(uname -m); $n records at one school"
echo "ingest (with evidence trail): $(t "$bin" ingest records.jsonl) s"
echo "audit export of the year:      $(t "$bin" audit export --trust celt --school 136401 --from 2026-01-01 --to 2026-12-31 --out bundle) s ($(wc -l < bundle/entries.jsonl) entries, $(du -m bundle | cut -f1) MiB)"
secs=$(t "$bin" audit verify bundle)
awk -v s="$secs" -v e="$(wc -l < bundle/entries.jsonl)" 'BEGIN{printf "audit verify:                  %.2f s (%.0f entries/s)\n", s, e/s}'
cat "$work/out.txt"
