#!/usr/bin/env bash
# Install into $PYTHON (default python3) torch 2.13.0 as chosen below, then fusedbn, editable, with the
# "test" extra (the core, the harnesses' extras and the test tools: what `make tune` and `make test` need).
# --torch (or FUSEDBN_TORCH): auto (default: keep an installed torch, else install the CPU build), cpu (the
# CPU build, from where pip finds torch==2.13.0+cpu, else PyTorch's CPU index), cuda (PyPI's build, the
# CUDA one on Linux: several GB). --dry-run prints the pip commands instead. See docs/install.md.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
choice=${FUSEDBN_TORCH:-auto}
dry_run=0
TORCH_VERSION=2.13.0
CPU_INDEX=https://download.pytorch.org/whl/cpu

usage="usage: scripts/setup.sh [--torch auto|cpu|cuda] [--dry-run]"
while [ $# -gt 0 ]; do
    case "$1" in
        --torch) choice=${2:-}; shift 2 || { echo "$usage" >&2; exit 2; } ;;
        --torch=*) choice=${1#--torch=}; shift ;;
        --dry-run) dry_run=1; shift ;;
        -h|--help) echo "$usage"; exit 0 ;;
        *) echo "setup: unknown option $1; $usage" >&2; exit 2 ;;
    esac
done

run() {
    if [ "$dry_run" = 1 ]; then echo "$*"; else "$@"; fi
}

install_cpu_torch() {
    echo "setup: installing the CPU build of torch $TORCH_VERSION" >&2
    if [ "$dry_run" = 1 ]; then
        echo "$python -m pip install --quiet torch==$TORCH_VERSION+cpu"
        echo "  (if that finds none: $python -m pip install --quiet torch==$TORCH_VERSION+cpu --index-url $CPU_INDEX)"
    elif ! "$python" -m pip install --quiet "torch==$TORCH_VERSION+cpu" 2>/dev/null; then
        "$python" -m pip install --quiet "torch==$TORCH_VERSION+cpu" --index-url "$CPU_INDEX"
    fi
}

case "$choice" in
    auto)
        if "$python" -c "import torch" 2>/dev/null; then
            echo "setup: keeping the installed torch (--torch cpu or cuda replaces it)" >&2
        else
            install_cpu_torch
        fi ;;
    cpu) install_cpu_torch ;;
    cuda)
        echo "setup: installing torch $TORCH_VERSION from PyPI, the CUDA build: several GB" >&2
        # A CPU build of the same version would satisfy torch==VERSION: take it out first.
        if "$python" -c "import sys, torch; sys.exit(torch.version.cuda is not None)" 2>/dev/null; then
            run "$python" -m pip uninstall --quiet --yes torch
        fi
        run "$python" -m pip install --quiet "torch==$TORCH_VERSION" ;;
    *) echo "setup: unknown torch choice '$choice' (FUSEDBN_TORCH or --torch): use auto, cpu or cuda" >&2; exit 2 ;;
esac
run "$python" -m pip install --quiet -e ".[test]"
if [ "$dry_run" = 0 ]; then
    "$python" -c "import fusedbn, torch, triton; print(f'setup: fusedbn {fusedbn.__version__}, torch {torch.__version__} (CUDA {torch.version.cuda or \"none: CPU build\"}), triton {triton.__version__}')" >&2
fi
