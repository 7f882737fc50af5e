#!/usr/bin/env bash
# Download into .whl/ (git-ignored) the wheels that benchmarks/gpu_check.sh installs on the offline GPU
# machine (Python 3.12, x86_64 Linux, with torch, triton, torchvision, pytest and hypothesis, but no
# Optuna and no network). Run it here, where there is network, then carry .whl/ along with the run.
#
#   bash scripts/fetch-gpu-wheels.sh [--with-sklearn] [--with-matplotlib] [--dry-run]
#
# Always: FlagGems (for the per-op suite's flag_gems provider; installed without its pinned
# dependencies, which would replace numpy) with PyYAML, and Optuna with its dependencies (for
# tests/tuning and `fusedbn tune`). --with-sklearn adds scikit-learn and SciPy (the digits task:
# ~50 MB) and mnist1d with requests (the MNIST-1D task), --with-matplotlib adds matplotlib and its
# dependencies (~15 MB; mnist1d imports it too), for a machine that lacks them. A device run carries
# at most 64 MiB: the script prints the total. Every wheel is for CPython 3.12 on manylinux x86_64 (or
# pure Python); --no-deps with the explicit lists below keeps the packages already there out of it.
set -euo pipefail
cd "$(dirname "$0")/.."

DEST=${DEST:-.whl}
PYTHON=${PYTHON:-python3}
# 5.0.2 is built against Triton 3.5 (flagtree 0.5.0+3.5) and imports the same Triton APIs on 3.6.
FLAG_GEMS_VERSION=${FLAG_GEMS_VERSION:-5.0.2}

packages=(
    "flag-gems==$FLAG_GEMS_VERSION" PyYAML
    optuna alembic Mako MarkupSafe sqlalchemy greenlet colorlog tqdm typing_extensions packaging
)
dry_run=0
for option in "$@"; do
    case $option in
        --with-sklearn)
            packages+=(scikit-learn scipy joblib threadpoolctl)
            packages+=(mnist1d requests charset-normalizer idna urllib3 certifi) ;;
        --with-matplotlib)
            packages+=(matplotlib contourpy cycler fonttools kiwisolver pyparsing python-dateutil six) ;;
        --dry-run) dry_run=1 ;;
        -h | --help) sed -n '2,14p' "$0"; exit 0 ;;
        *) echo "fetch-gpu-wheels: unknown option $option (see --help)" >&2; exit 2 ;;
    esac
done

command=(
    "$PYTHON" -m pip download --no-deps --only-binary=:all: --dest "$DEST"
    --python-version 3.12 --implementation cp --abi cp312 --abi abi3 --abi none
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64
    --platform any
    "${packages[@]}"
)
if [ "$dry_run" -eq 1 ]; then
    printf '%q ' "${command[@]}"
    echo
    exit 0
fi
mkdir -p "$DEST"
"${command[@]}"

# Every package must have its wheel: NAME-VERSION-...whl, the name lower-cased with "_" for "-".
missing=0
for package in "${packages[@]}"; do
    name=$(echo "${package%%==*}" | tr '[:upper:]' '[:lower:]' | tr '-' '_')
    if ! ls "$DEST" | tr '[:upper:]' '[:lower:]' | grep -q "^${name}-"; then
        echo "fetch-gpu-wheels: no wheel for ${package%%==*} in $DEST" >&2
        missing=1
    fi
done
total_kib=$(du -sk "$DEST" | cut -f1)
echo "fetch-gpu-wheels: $(ls "$DEST"/*.whl | wc -l) wheels, $((total_kib / 1024)) MiB in $DEST"
if [ "$total_kib" -gt $((60 * 1024)) ]; then
    echo "fetch-gpu-wheels: warning: over 60 MiB; a device run carries at most 64 MiB in all" >&2
fi
exit "$missing"
