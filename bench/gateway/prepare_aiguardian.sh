#!/usr/bin/env bash
# Prepares a benchmark instance of AIGuardian and prints its folder: a PostgreSQL database, the config (one
# deployment of $GW_MODEL in front of $UPSTREAM_BASE), an account and the API key $GW_KEY, and env.sh with
# the settings start_aiguardian.sh serves with. Kept out of the timed start: making an account is set-up.
# Remove with: bench/gateway/prepare_aiguardian.sh --drop FOLDER
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
BIN="${AIG_BIN:-$HERE/../../.venv/bin}"
PG_ADMIN="${BENCH_PG_ADMIN_URL:-postgresql://postgres@127.0.0.1:5432/test}"
if [ "${1:-}" = "--drop" ]; then
  # shellcheck disable=SC1091
  . "$2/env.sh"
  psql "$PG_ADMIN" -qc "DROP DATABASE IF EXISTS ${DATABASE_URL##*/} WITH (FORCE)" >/dev/null 2>&1 || true
  rm -rf "$2"
  exit 0
fi
: "${GW_KEY:?}" "${GW_MODEL:?}" "${UPSTREAM_BASE:?}"
WORK="$(mktemp -d)"
DB="aig_bench_$$"
psql "$PG_ADMIN" -qc "CREATE DATABASE $DB" >/dev/null
cat > "$WORK/env.sh" <<ENV
export DATABASE_URL="${PG_ADMIN%/*}/$DB"
export REDIS_URL="${BENCH_REDIS_URL:-redis://127.0.0.1:6379/0}"
export AIG_CACHE_NAMESPACE="bench-$$"
export AIG_SECRET_KEY="bench-secret-$$-$(date +%s)"
export AIG_DATA_DIR="$WORK/data"
export AIG_CONFIG_FILE="$WORK/config.yaml"
export AIG_LOG_LEVEL="${AIG_LOG_LEVEL:-WARNING}"   # LiteLLM runs with LITELLM_LOG=ERROR: no access log either
# Limits stay in the pipeline but far above the load, as a production limit would be.
export AIG_RATE_LIMIT_PER_IP="100000000/minute"
ENV
cat > "$WORK/config.yaml" <<YAML
deployments:
  - model: ${GW_MODEL}
    provider: openai
    base_url: ${UPSTREAM_BASE}
    api_key_env: UPSTREAM_KEY
demo_model_enabled: false
YAML
# shellcheck disable=SC1091
. "$WORK/env.sh"
"$BIN/aiguardian" migrate >/dev/null
"$BIN/aiguardian" admin create-user --email bench@example.com --password "bench-password-123" >/dev/null
"$BIN/aiguardian" admin create-key --email bench@example.com --scopes chat --secret "$GW_KEY" \
  --rate-limit "100000000/minute" >/dev/null
echo "$WORK"
