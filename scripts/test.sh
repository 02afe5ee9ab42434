#!/usr/bin/env bash
# Run the test suite (what CI runs after bootstrap.sh). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || bash scripts/bootstrap.sh
. .venv/bin/activate
# Two xdist workers share the machine's cores: one torch/OpenMP thread each (inherited by the services the
# tests start), since oversubscribed OpenMP threads spin and slow the tiny model's runs many times over.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
exec python -m pytest -n 2 --dist loadfile -q "$@"
