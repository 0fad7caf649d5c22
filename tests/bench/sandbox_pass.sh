#!/usr/bin/env bash
# The sandbox's cost (docs/bench.md, "Sandboxed shells"): the same runs with VTERM_SANDBOX=off and on,
# alternately, in one pass. Session creation one at a time (its p50), commands at 1/s over 20
# sessions (their p50, beside the floor), and memory (PSS) per session at 1000 idle sessions.
#   tests/bench/sandbox_pass.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:-docs/bench/sandbox}
mkdir -p "$out"
bench() { .venv/bin/python manage.py vterm_bench "$@"; }
for i in 1 2; do
  for mode in off on; do
    bench --sessions 20 --create-concurrency 1 --rate 1 --duration 20 --channel rest \
      --stack-env VTERM_SANDBOX=$mode --json "$out/s20-$mode-$i.json" > "$out/s20-$mode-$i.txt"
  done
done
for mode in off on; do
  bench --sessions 1000 --create-concurrency 32 --rate 0.02 --duration 20 --channel rest \
    --stack-env VTERM_SANDBOX=$mode --json "$out/s1000-$mode.json" > "$out/s1000-$mode.txt"
done
