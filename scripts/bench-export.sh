#!/usr/bin/env bash
# Record exporter and retention benchmark (issue 20).
#  1. N records (default 200,000) generated at one school (CELT 136401) and ingested, then a
#     year exported in each format (`doorstep export`): wall time, peak RSS, size.
#  2. M revisions (default 1,000,000) ingested into a second store, each then given one
#     delivery delivered on 2026-08-01 and a received time of 2026-08-01 (with sqlite3: it
#     stands in for months of delivery), then `purge --content-days 90`: wall time, peak RSS,
#     the store's size before and after, and after `purge --vacuum`.
# Usage: scripts/bench-export.sh [N] [M]   (M = 0: part 1 only)
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-200000}
m=${2:-1000000}
# DOORSTEP_BIN: a binary to measure instead of building this tree's.
if [ -z "${DOORSTEP_BIN:-}" ]; then cargo build --release --locked --quiet; fi
bin=${DOORSTEP_BIN:-${CARGO_TARGET_DIR:-$PWD/target}/release/doorstep}
command -v sqlite3 >/dev/null || { echo "needs the sqlite3 command (part 2's fixture)"; exit 2; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
repo=$PWD
cd "$work"
"$bin" audit keygen --name bench.example --out log.key >/dev/null 2>&1
for s in small big; do
  printf 'mappings = "%s/mappings"\n[store]\nsqlite = "%s.db"\n[audit]\nsigning_key = { file = "log.key" }\n' "$repo" "$s" > "$s.toml"
done
# t CMD…: runs it, prints "<seconds> s, <peak RSS> MiB peak".
t() {
  /usr/bin/time -f "%e %M" -o "$work/time.txt" "$@" > "$work/out.txt"
  awk '{printf "%.2f s, %.0f MiB peak", $1, $2/1024}' "$work/time.txt"
}
size() { du -cb "$@" 2>/dev/null | tail -1 | awk '{printf "%.0f MiB", $1/1048576}'; }
one_school() { sed -e 's/"trust":"thrive"/"trust":"celt"/' -e 's/"urn":"[0-9]*"/"urn":"136401"/'; }

echo "machine: $(nproc) cores, $(uname -m)"
"$bin" gen --count "$n" --seed 42 | one_school > records.jsonl
echo "part 1: $n records at one school"
echo "  ingest:          $(t "$bin" ingest --config small.toml records.jsonl)"
for f in jsonl csv chronology html; do
  printf '  export %-10s %s' "$f:" "$(t "$bin" export --config small.toml --trust celt --school 136401 \
    --from 2026-01-01 --to 2026-12-31 --format "$f" --out "out.$f" --reason audit)"
  echo " ($(size "out.$f"); $(head -1 "$work/out.txt" | sed 's/^wrote //')…)"
  grep -h "visit_report" "$work/out.txt" | sed 's/^/      /'
done

[ "$m" -gt 0 ] || exit 0
"$bin" gen --count "$m" --seed 7 | one_school > big.jsonl
echo "part 2: $m revisions, each delivered 2026-08-01, purged with content_days = 90"
echo "  ingest:          $(t "$bin" ingest --config big.toml big.jsonl)"
sqlite3 big.db > /dev/null <<'SQL'
PRAGMA journal_mode = WAL;
UPDATE records SET routed = 1, received_at = '2026-08-01T00:00:00.000000Z';
INSERT INTO deliveries (trust, destination, kind, record_id, revision, school_urn, route, map,
    priority, idempotency_key, state, attempts, next_at, delivered_at, created_at, updated_at)
  SELECT trust, 'contact_log', kind, id, revision, school_urn, 'bench', 'bench', 2,
    'bench-' || rowid, 'delivered', 1, received_at, received_at, received_at, received_at
  FROM records;
PRAGMA wal_checkpoint(TRUNCATE);
SQL
revisions=$(sqlite3 big.db "SELECT count(*) FROM records")
echo "  store before:    $(size big.db big.db-wal) ($revisions revisions)"
echo "  purge:           $(t "$bin" purge --config big.toml --content-days 90)"
cat "$work/out.txt" | sed 's/^/    /'
awk -v r="$revisions" '{printf "    = %.0f revisions/s\n", r/$1}' "$work/time.txt"
echo "  store after:     $(size big.db big.db-wal)"
echo "  purge --vacuum:  $(t "$bin" purge --config big.toml --content-days 90 --vacuum)"
echo "  store vacuumed:  $(size big.db big.db-wal)"
