#!/usr/bin/env bash
# AIGuardian against LiteLLM's proxy (2 workers), both in front of the same mock upstream, in one run.
# Needs ../shared/bench/ beside the repository (the harness: mock upstream, wrk script, LiteLLM recipe).
#   bench/gateway/run.sh                 # direct, LiteLLM 2 workers, AIGuardian 2 workers
#   REPEAT=3 bench/gateway/run.sh        # medians over 3 fresh starts of each
# The account and key AIGuardian serves are made before the harness starts timing (prepare_aiguardian.sh).
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
HARNESS="${HARNESS:-$HERE/../../../shared/bench/run.sh}"
[ -x "$HARNESS" ] || { echo "no harness at $HARNESS (set HARNESS=.../shared/bench/run.sh)" >&2; exit 1; }
export GW_KEY="${GW_KEY:-sk-bench-1234}" GW_MODEL="${GW_MODEL:-gpt-4o-mini}"
export UPSTREAM_BASE="http://127.0.0.1:${MOCK_PORT:-18000}/v1"
AIG_BENCH_WORK="$("$HERE/prepare_aiguardian.sh")"
export AIG_BENCH_WORK
trap '"$HERE/prepare_aiguardian.sh" --drop "$AIG_BENCH_WORK"' EXIT
"$HARNESS" direct "litellm:${LITELLM_WORKERS:-2}" --gw aiguardian 8080 "$HERE/start_aiguardian.sh"
