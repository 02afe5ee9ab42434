#!/usr/bin/env bash
# Run the test suite (what CI runs after bootstrap.sh). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || bash scripts/bootstrap.sh
. .venv/bin/activate
exec python -m pytest -n 2 --dist loadfile -q "$@"
