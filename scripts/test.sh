#!/usr/bin/env bash
# Set up, start the PostgreSQL server the study tests use, lint, and run the test suite on both of
# fusedbn's CPU paths: the kernels under Triton's interpreter (the code a GPU runs; every test), then
# torch's BatchNorm behind fusedbn's API (what CPU users run; the tests of the API, the modules and
# the PyTorch tools; tests/conftest.py skips the kernels' own tests there).
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}

bash scripts/setup.sh
if [ -z "${FUSEDBN_TEST_POSTGRES_URL:-}" ]; then
    eval "$(bash scripts/start-postgres.sh)"
fi
"$python" -m ruff check .
"$python" -m pytest tests -n 2 -q "$@"
FUSEDBN_TEST_CPU_PATH=torch "$python" -m pytest tests -n 2 -q \
    --ignore=tests/kernels --ignore=tests/tuning --ignore=tests/science --ignore=tests/bench \
    --ignore=tests/test_cli.py --ignore=tests/test_install.py --ignore=tests/test_setup.py \
    --ignore=tests/test_outputs.py --ignore=tests/test_sync.py "$@"
