#!/usr/bin/env bash
# Evidence-trail benchmark: ingests N generated records all at one school (CELT 136401),
# exports that school's year with `audit export`, and verifies it with `audit verify` — wall
# time and peak RSS of each — beside this machine's SHA-256 rate (`openssl speed`), which
# bounds verify.
# Usage: scripts/bench-audit.sh [N]   (default 200000)
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-200000}
# DOORSTEP_BIN: a binary to measure instead of building this tree's (see bench-ab.sh).
if [ -z "${DOORSTEP_BIN:-}" ]; then cargo build --release --locked --quiet; fi
bin=${DOORSTEP_BIN:-${CARGO_TARGET_DIR:-$PWD/target}/release/doorstep}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
"$bin" audit keygen --name bench.example --out log.key 2>/dev/null >/dev/null
printf 'mappings = "%s/mappings"\n[store]\nsqlite = "bench.db"\n[audit]\nsigning_key = { file = "log.key" }\n' "$OLDPWD" > doorstep.toml
"$bin" gen --count "$n" --seed 42 \
  | sed -e 's/"trust":"thrive"/"trust":"celt"/' -e 's/"urn":"[0-9]*"/"urn":"136401"/' > records.jsonl
# t CMD…: runs it, prints "<seconds> s, <peak RSS> MiB peak".
t() {
  /usr/bin/time -f "%e %M" -o "$work/time.txt" "$@" > "$work/out.txt"
  awk '{printf "%.2f s, %.0f MiB peak", $1, $2/1024}' "$work/time.txt"
}
echo "machine: $(nproc) cores, $(uname -m); $n records at one school"
echo "sha256: $(openssl speed -seconds 2 -bytes 1024 -evp sha256 2>/dev/null | awk '/^sha256/ {print $2 " (1 KiB blocks)"}')"
echo "ingest (with evidence trail): $(t "$bin" ingest records.jsonl)"
echo "audit export of the year:      $(t "$bin" audit export --trust celt --school 136401 --from 2026-01-01 --to 2026-12-31 --out bundle) ($(wc -l < bundle/entries.jsonl) entries, $(du -m bundle | cut -f1) MiB)"
entries=$(wc -l < bundle/entries.jsonl)
bytes=$(cat bundle/* | wc -c)
echo "audit verify:                  $(t "$bin" audit verify bundle)"
awk -v e="$entries" -v b="$bytes" '{printf "  = %.0f entries/s; %.0f MB of bundle hashed and read at %.0f MB/s\n", e/$1, b/1e6, b/1e6/$1}' "$work/time.txt"
cat "$work/out.txt"
