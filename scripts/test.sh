#!/usr/bin/env bash
# Set up, start the PostgreSQL server the study tests use, lint, and run the test suite on both of
# fusedbn's CPU paths. The tests of fusedbn's API, modules and PyTorch tools run on both; the kernels'
# own tests (and the benchmarks', which measure or compile them) on the kernel path only; the
# harnesses, the command line, the documentation and the install, which do not depend on the path,
# on the torch path only, where they run at the CPU's native speed.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
kernels_only=(tests/kernels tests/bench tests/test_sync.py)
path_independent=(tests/tuning tests/science tests/test_docs.py tests/test_cli.py tests/test_install.py
                  tests/test_setup.py tests/test_outputs.py)

bash scripts/setup.sh
if [ -z "${FUSEDBN_TEST_POSTGRES_URL:-}" ]; then
    eval "$(bash scripts/start-postgres.sh)"
fi
"$python" -m ruff check .
# The kernel path: the Triton kernels on the CPU under Triton's interpreter (the code a GPU runs).
"$python" -m pytest tests -n 2 -q "${path_independent[@]/#/--ignore=}" "$@"
# The torch path: what a CPU user runs, torch's BatchNorm behind fusedbn's API.
FUSEDBN_TEST_CPU_PATH=torch "$python" -m pytest tests -n 2 -q "${kernels_only[@]/#/--ignore=}" "$@"
