#!/usr/bin/env bash
# The prepared GPU run (issue 4): install fusedbn without network, record the machine, run the test
# suite on CUDA, then the quick benchmark. Meant for a lent H100/H200 with torch, triton, pytest and
# pytest-xdist but no optuna and no network; about 6 minutes, at most 8 (each step has a timeout).
#
#   OUT=/some/folder bash benchmarks/gpu_check.sh     (from anywhere; OUT defaults to runs/gpu-check)
#
# Writes into $OUT (8 files): env.log, tests.log, bench.log, steps.txt (each step's exit code and
# seconds), and from the benchmark results.csv, summary.txt, speedup.png, bandwidth.png.
# A failing or stuck step does not stop the later ones; the script exits with the first failing
# step's code. Where the copy has no .git, set FUSEDBN_COMMIT to the commit it was made from.
# Timeouts and budgets in seconds can be changed through the environment variables below.
set -uo pipefail
OUT=${OUT:-$(dirname "$0")/../runs/gpu-check}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
cd "$(dirname "$0")/.."

INSTALL_TIMEOUT=${INSTALL_TIMEOUT:-60}
TESTS_TIMEOUT=${TESTS_TIMEOUT:-150}
BENCH_TIMEOUT=${BENCH_TIMEOUT:-250}
# The benchmark stops measuring after BENCH_BUDGET s (torch.compile after COMPILE_BUDGET s of
# compiling) and then writes its report, well inside BENCH_TIMEOUT.
BENCH_BUDGET=${BENCH_BUDGET:-190}
COMPILE_BUDGET=${COMPILE_BUDGET:-130}
export PYTHONUNBUFFERED=1
# The benchmark's kind of run: --quick here; --smoke checks this script on a machine without a GPU.
BENCH_MODE=${BENCH_MODE:---quick}
python=${PYTHON:-python3}
: > "$OUT/steps.txt"
first_failure=0

# step NAME TIMEOUT LOG COMMAND...: run COMMAND under timeout, tee its output to LOG, record the code.
step() {
    local name=$1 limit=$2 log=$3
    shift 3
    local start=$SECONDS
    echo "=== $name (timeout ${limit}s): $*" | tee -a "$log"
    timeout --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$log"
    local code=${PIPESTATUS[0]}
    [ "$code" -eq 124 ] && echo "=== $name TIMED OUT after ${limit}s" | tee -a "$log"
    echo "$name rc=$code $((SECONDS - start))s" | tee -a "$OUT/steps.txt"
    if [ "$code" -ne 0 ] && [ "$first_failure" -eq 0 ]; then first_failure=$code; fi
    return 0
}

# Run from another folder (so that the repository root on sys.path proves nothing) with the
# repository as argument: fusedbn and fusedbn.kernels must come from this tree, not another copy.
IMPORTS_PY='
import pathlib, sys
import fusedbn, fusedbn.kernels, fusedbn.bench.cli
root = pathlib.Path(sys.argv[1]).resolve()
package = pathlib.Path(fusedbn.__file__).resolve()
kernels = pathlib.Path(fusedbn.kernels.__file__).resolve()
print("fusedbn from", package, "and its kernels from", kernels)
sys.exit(0 if package.is_relative_to(root / "src") and kernels.is_relative_to(root / "kernels") else 3)
'
imports_ok() {
    (cd /tmp && "$python" -c "$IMPORTS_PY" "$OLDPWD")
}
VERSIONS_PY='
import sys, torch, triton
print("python", sys.version.split()[0], "torch", torch.__version__, "triton", triton.__version__)
print("cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version(), "gpu", torch.cuda.is_available())
if torch.cuda.is_available():
    print(torch.cuda.get_device_name(), torch.cuda.get_device_properties(0))
'

# 1. Install: editable, no dependencies, no index. Where that fails (setuptools without wheel, say),
#    put a package folder of links on PYTHONPATH that maps src/fusedbn to fusedbn and kernels/ to
#    fusedbn.kernels, as setup.py's package_dir does. Only the import check after it counts as a step.
start=$SECONDS
echo "=== install: $python -m pip install --no-index --no-deps --no-build-isolation -e ." >> "$OUT/env.log"
timeout --kill-after=10 "$INSTALL_TIMEOUT" \
    "$python" -m pip install --no-index --no-deps --no-build-isolation -e . >> "$OUT/env.log" 2>&1
pip_code=$?
if imports_ok >> "$OUT/env.log" 2>&1; then
    how="the editable install"
else
    shim=$(mktemp -d)
    mkdir -p "$shim/fusedbn"
    for entry in "$PWD"/src/fusedbn/*; do ln -s "$entry" "$shim/fusedbn/"; done
    ln -s "$PWD/kernels" "$shim/fusedbn/kernels"
    export PYTHONPATH="$shim${PYTHONPATH:+:$PYTHONPATH}"
    how="PYTHONPATH=$PYTHONPATH"
fi
echo "install (pip rc=$pip_code) uses $how $((SECONDS - start))s" | tee -a "$OUT/env.log" "$OUT/steps.txt"
step imports 30 "$OUT/env.log" bash -c 'cd /tmp && exec "$0" -c "$1" "$2"' "$python" "$IMPORTS_PY" "$PWD"

# 2. The machine.
step nvidia-smi 20 "$OUT/env.log" nvidia-smi
step versions 30 "$OUT/env.log" "$python" -c "$VERSIONS_PY"

# 3. The test suite on CUDA (tests/tuning needs optuna, which is not there).
step tests "$TESTS_TIMEOUT" "$OUT/tests.log" \
    "$python" -m pytest tests --ignore=tests/tuning -q -n 8 --maxfail=25 -p no:cacheprovider

# 4. The quick benchmark; should it be cut short, render what reached results.csv.
step bench "$BENCH_TIMEOUT" "$OUT/bench.log" \
    "$python" -m fusedbn.bench.cli "$BENCH_MODE" --out "$OUT" \
    --time-budget "$BENCH_BUDGET" --compile-budget "$COMPILE_BUDGET"
if [ ! -s "$OUT/summary.txt" ] && [ -s "$OUT/results.csv" ]; then
    step report 60 "$OUT/bench.log" "$python" -m fusedbn.bench.cli --report "$OUT/results.csv" --out "$OUT"
fi

# 5. Short summary, last.
echo
echo "================ gpu_check summary ================"
cat "$OUT/steps.txt"
echo "tests: $(grep -E '(passed|failed|error)' "$OUT/tests.log" | tail -n 1)"
if [ -s "$OUT/summary.txt" ]; then
    head -n 2 "$OUT/summary.txt"
    sed -n '/^target /,$p' "$OUT/summary.txt" | head -n 40
fi
echo "files in $OUT:"
ls -l "$OUT"
exit "$first_failure"
