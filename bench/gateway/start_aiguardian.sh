#!/usr/bin/env bash
# Starts AIGuardian for ../shared/bench/run.sh: the full default pipeline (auth, rate limits, budgets, guards,
# audit, usage ledger) on PostgreSQL + Redis with 2 workers, in front of $UPSTREAM_BASE.
# run.sh exports GW_PORT GW_KEY GW_MODEL UPSTREAM_BASE UPSTREAM_KEY. AIG_BENCH_WORK names an instance made by
# prepare_aiguardian.sh (bench/gateway/run.sh makes one, so that the harness times the server's start only);
# without it this script prepares one itself and drops it when the server stops.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
BIN="${AIG_BIN:-$HERE/../../.venv/bin}"
WORK="${AIG_BENCH_WORK:-}"
if [ -z "$WORK" ]; then
  WORK="$("$HERE/prepare_aiguardian.sh")"
  trap '"$HERE/prepare_aiguardian.sh" --drop "$WORK"' EXIT
fi
# shellcheck disable=SC1091
. "$WORK/env.sh"
"$BIN/aiguardian" serve --host 127.0.0.1 --port "$GW_PORT" --workers "${BENCH_WORKERS:-2}" &
child=$!
trap 'kill -TERM $child 2>/dev/null; wait $child' TERM INT
wait $child
