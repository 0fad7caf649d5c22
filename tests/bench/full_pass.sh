#!/usr/bin/env bash
# The full benchmark pass of docs/bench.md, one run at a time: 10, 100 and 1000 sessions, 300
# commands/s and the mixed load, on SQLite and on Postgres (a fresh database each run).
# Usage: tests/bench/full_pass.sh OUT_DIR [POSTGRES_URL]   (histograms to OUT_DIR, logs and JSON to OUT_DIR/raw)
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:?usage: $0 OUT_DIR [POSTGRES_URL]}
PG=${2:-postgres://postgres@127.0.0.1:5432/vterm_bench}
mkdir -p "$OUT/raw"
run() {  # name, sqlite|pg, bench arguments...
  local name=$1 db=$2; shift 2
  local extra=()
  if [ "$db" = pg ]; then
    local base=${PG%/*} dbname=${PG##*/}
    psql "$base/postgres" -qc "DROP DATABASE IF EXISTS $dbname" -c "CREATE DATABASE $dbname" || return
    extra=(--stack-env "DATABASE_URL=$PG")
  fi
  echo "== $name $(date -u +%T), load $(cut -d' ' -f1-3 /proc/loadavg)"
  .venv/bin/python manage.py vterm_bench "$@" "${extra[@]}" --json "$OUT/raw/$name.json" \
    --histogram "$OUT/$name.png" > "$OUT/raw/$name.log" 2>&1
  echo "   exit $?; table in $OUT/raw/$name.log"
  sleep 10
}
run s10-sqlite sqlite --sessions 10 --rate 1 --duration 30 --channel both
run s100-sqlite sqlite --sessions 100 --rate 1 --duration 60 --channel rest
run s10-pg pg --sessions 10 --rate 1 --duration 30 --channel both
run s100-pg pg --sessions 100 --rate 1 --duration 60 --channel rest
run r300-sqlite sqlite --sessions 100 --rate 3 --duration 30 --channel rest
run r300-pg pg --sessions 100 --rate 3 --duration 30 --channel rest
run s1000-sqlite sqlite --sessions 1000 --rate 0.05 --duration 20 --channel rest --create-concurrency 32
run s1000-pg pg --sessions 1000 --rate 0.05 --duration 20 --channel rest --create-concurrency 32
run mixed-sqlite sqlite --sessions 50 --rate 1 --duration 40 --mixed --channel rest
psql "${PG%/*}/postgres" -qc "DROP DATABASE IF EXISTS ${PG##*/}"
