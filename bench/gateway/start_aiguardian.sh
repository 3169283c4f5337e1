#!/usr/bin/env bash
# Starts AIGuardian for ../shared/bench/run.sh: the full default pipeline (auth, rate limits, budgets,
# audit, usage ledger) on PostgreSQL + Redis with 2 workers, in front of $UPSTREAM_BASE.
# run.sh exports GW_PORT GW_KEY GW_MODEL UPSTREAM_BASE UPSTREAM_KEY; BENCH_PG_ADMIN_URL and BENCH_REDIS_URL
# may point elsewhere than this machine's defaults.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
BIN="${AIG_BIN:-$HERE/../../.venv/bin}"
PG_ADMIN="${BENCH_PG_ADMIN_URL:-postgresql://postgres@127.0.0.1:5432/test}"
WORKERS="${BENCH_WORKERS:-2}"
DB="aig_bench_$$"
WORK="$(mktemp -d)"
cd "$WORK"
psql "$PG_ADMIN" -qc "CREATE DATABASE $DB" >/dev/null
export DATABASE_URL="${PG_ADMIN%/*}/$DB"
export REDIS_URL="${BENCH_REDIS_URL:-redis://127.0.0.1:6379/0}"
export AIG_CACHE_NAMESPACE="bench-$$"
export AIG_SECRET_KEY="bench-secret-$$-$(date +%s)"
export AIG_LOG_LEVEL="${AIG_LOG_LEVEL:-WARNING}"   # LiteLLM runs with LITELLM_LOG=ERROR: no access log either
# Limits stay in the pipeline but far above the load, as a production limit would be.
export AIG_RATE_LIMIT_PER_IP="100000000/minute"
cat > config.yaml <<YAML
deployments:
  - model: ${GW_MODEL}
    provider: openai
    base_url: ${UPSTREAM_BASE}
    api_key_env: UPSTREAM_KEY
demo_model_enabled: false
YAML
export AIG_CONFIG_FILE="$WORK/config.yaml"
"$BIN/aiguardian" admin create-user --email bench@example.com --password "bench-password-123" >/dev/null
"$BIN/aiguardian" admin create-key --email bench@example.com --scopes chat --secret "$GW_KEY" \
  --rate-limit "100000000/minute" >/dev/null
cleanup() { psql "$PG_ADMIN" -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1 || true; rm -rf "$WORK"; }
trap cleanup EXIT
"$BIN/aiguardian" serve --host 127.0.0.1 --port "$GW_PORT" --workers "$WORKERS" &
child=$!
trap 'kill -TERM $child 2>/dev/null; wait $child; cleanup' TERM INT
wait $child
