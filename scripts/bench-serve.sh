#!/usr/bin/env bash
# `serve` benchmark (issue 18): oha against GET /healthz (the HTTP ceiling), then oha posting
# one distinct record a request while 100 `immediate` flags are timed to a local webhook
# receiver. Needs oha: `cargo install oha`. Arguments go to the bench, e.g. --seconds 20
# --clients 64 --flags 100.
# Usage: scripts/bench-serve.sh [--seconds S] [--clients C] [--flags N]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked --quiet --bin doorstep --example bench_serve
exec "${CARGO_TARGET_DIR:-target}/release/examples/bench_serve" \
  --doorstep "${CARGO_TARGET_DIR:-target}/release/doorstep" "$@"
