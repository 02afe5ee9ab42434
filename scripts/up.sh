#!/usr/bin/env bash
# The main job on a fresh machine: the whole stack (editor :8001, verifier :8002 with the playground at /,
# reward :8003) via `etchr up`, which starts a local redis-server if ETCHR_REDIS_URL is unreachable.
# Without ETCHR_EDITOR_MODEL it serves the tiny random-init checkpoint, whose edits are noise; without
# ETCHR_MLLM_BASE_URL/ETCHR_MLLM_MODEL the verifier and reward run but answer 503 saying what to set.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || bash scripts/bootstrap.sh
. .venv/bin/activate
if [ -z "${ETCHR_EDITOR_MODEL:-}" ]; then
    exec etchr up --tiny "$@"
fi
exec etchr up "$@"
