#!/usr/bin/env bash
# The main job on a fresh machine: the editor service (HTTP front + in-process worker) on :8001.
# Without ETCHR_EDITOR_MODEL it serves the tiny random-init checkpoint, whose edits are noise.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || bash scripts/bootstrap.sh
. .venv/bin/activate

export ETCHR_REDIS_URL=${ETCHR_REDIS_URL:-redis://localhost:6379/0}
if ! python - <<'PY'
import os, redis
redis.Redis.from_url(os.environ["ETCHR_REDIS_URL"], socket_connect_timeout=1).ping()
PY
then
    port=$(python -c "from urllib.parse import urlparse; import os; print(urlparse(os.environ['ETCHR_REDIS_URL']).port or 6379)")
    echo "no Redis at $ETCHR_REDIS_URL: starting a local redis-server on port $port (no persistence)"
    redis-server --port "$port" --save "" --appendonly no --daemonize yes >/dev/null
fi

if [ -z "${ETCHR_EDITOR_MODEL:-}" ]; then
    [ -f artifacts/tiny-editor/model_index.json ] || etchr tiny-editor artifacts/tiny-editor
    export ETCHR_EDITOR_MODEL=artifacts/tiny-editor
    export ETCHR_EDITOR_STEPS=${ETCHR_EDITOR_STEPS:-4}
fi
exec etchr serve editor "$@"
