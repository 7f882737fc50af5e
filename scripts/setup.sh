#!/usr/bin/env bash
# Install what fusedbn needs into the current Python environment.
# - No torch yet: the CPU build of torch 2.13.0 (an unpinned torch would pull a multi-GB CUDA build).
#   An existing torch (a CUDA build, say) is left alone.
# - Then fusedbn itself, editable, with the "test" extra: the core (torch, triton), the harnesses'
#   extras ("tune": optuna, scikit-learn, ...; "bench": matplotlib; "postgres") and the test tools,
#   which is what both `make tune` and `make test` need.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}

if ! "$python" -c "import torch" 2>/dev/null; then
    echo "setup: installing the CPU build of torch 2.13.0" >&2
    "$python" -m pip install --quiet torch==2.13.0
fi
"$python" -m pip install --quiet -e ".[test]"
"$python" -c "import fusedbn, torch, triton; print(f'setup: fusedbn {fusedbn.__version__}, torch {torch.__version__}, triton {triton.__version__}')" >&2
