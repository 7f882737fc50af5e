#!/usr/bin/env bash
# The prepared GPU run, steps 1 to 9 below: install fusedbn and the carried wheels without network,
# record the machine, run the test suite on CUDA, the host-time report, the quick per-op suite with the
# cost table it calibrates, the ResNet-50 training-step benchmark and a short tuning study. Meant for a
# lent H100/H200 with torch, triton, torchvision, pytest and pytest-xdist but no optuna and no network;
# about 8 minutes, at most TOTAL_BUDGET seconds (480): every step has a timeout, none starts past the total.
#
#   bash scripts/fetch-gpu-wheels.sh                  (here, with network: wheels into .whl/)
#   OUT=/some/folder bash benchmarks/gpu_check.sh     (on the GPU machine, from anywhere)
#   OUT=/tmp/rehearsal GPU_CHECK_SMOKE=1 bash benchmarks/gpu_check.sh
#                                                     (CPU rehearsal: every step in its smoke form,
#                                                      installs nothing, writes only into OUT)
#
# Writes into $OUT (7 files): steps.txt (each step's exit code and seconds), console.log (everything
# printed), summary.txt (per-op suite), cost_table.json (the cost model fitted to it: this GPU's
# table for FUSEDBN_COST_TABLE), host_time.md, training_step.txt, and gpu-check.tar.gz with every
# step's files (logs, CSVs, plots, kernel tables, tuning summary) under run/.
# A failing or stuck step does not stop the later ones; the script exits with the first failing
# step's code. Where the copy has no .git, set FUSEDBN_COMMIT to the commit it was made from.
# Timeouts and budgets in seconds can be changed through the environment variables below.
set -uo pipefail
OUT=${OUT:-$(dirname "$0")/../runs/gpu-check}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
cd "$(dirname "$0")/.."

SMOKE=${GPU_CHECK_SMOKE:-0}
TOTAL_BUDGET=${TOTAL_BUDGET:-480}
INSTALL_TIMEOUT=${INSTALL_TIMEOUT:-60}
TESTS_TIMEOUT=${TESTS_TIMEOUT:-110}
TUNING_TESTS_TIMEOUT=${TUNING_TESTS_TIMEOUT:-60}
HOST_TIMEOUT=${HOST_TIMEOUT:-60}
BENCH_TIMEOUT=${BENCH_TIMEOUT:-170}
STEP_TIMEOUT=${STEP_TIMEOUT:-190}
TUNE_TIMEOUT=${TUNE_TIMEOUT:-40}
# The benchmarks stop starting cases after their budget and then write their reports, well inside
# their timeouts: the per-op suite after BENCH_BUDGET s (torch.compile after COMPILE_BUDGET s of
# compiling), then profiles kernels for PROFILE_BUDGET s; the training-step benchmark starts no case
# after STEP_BUDGET s (its CSVs are rewritten after every case).
BENCH_BUDGET=${BENCH_BUDGET:-100}
COMPILE_BUDGET=${COMPILE_BUDGET:-60}
PROFILE_BUDGET=${PROFILE_BUDGET:-25}
STEP_BUDGET=${STEP_BUDGET:-150}
export PYTHONUNBUFFERED=1
python=${PYTHON:-python3}
RUN="$OUT/run"
mkdir -p "$RUN"
: > "$OUT/steps.txt"
exec > >(tee -a "$OUT/console.log") 2>&1
first_failure=0

# step NAME TIMEOUT LOG COMMAND...: run COMMAND under timeout (cut to what is left of TOTAL_BUDGET),
# tee its output to LOG, record the code. A step with under 15 s left is skipped.
step() {
    local name=$1 limit=$2 log=$3
    shift 3
    local left=$((TOTAL_BUDGET - SECONDS - 5))
    if [ "$left" -lt 15 ]; then
        echo "$name skipped: total budget of ${TOTAL_BUDGET}s spent" | tee -a "$OUT/steps.txt"
        return 0
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    local start=$SECONDS
    echo "=== $name (timeout ${limit}s): $*" | tee -a "$log"
    timeout --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$log"
    local code=${PIPESTATUS[0]}
    [ "$code" -eq 124 ] && echo "=== $name TIMED OUT after ${limit}s" | tee -a "$log"
    echo "$name rc=$code $((SECONDS - start))s" | tee -a "$OUT/steps.txt"
    if [ "$code" -ne 0 ] && [ "$first_failure" -eq 0 ]; then first_failure=$code; fi
    return 0
}
skip() {
    echo "$1 skipped: $2" | tee -a "$OUT/steps.txt"
}
# pick_args SMOKE_WORDS -- GPU_WORDS: set the array ARGS to the words for this kind of run.
pick_args() {
    local split=1
    while [ "${!split}" != -- ]; do split=$((split + 1)); done
    if [ "$SMOKE" = 1 ]; then ARGS=("${@:1:split-1}"); else ARGS=("${@:split+1}"); fi
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
check_imports=(bash -c 'cd /tmp && exec "$0" -c "$1" "$2"' "$python" "$IMPORTS_PY" "$PWD")
VERSIONS_PY='
import importlib, sys, torch, triton
print("python", sys.version.split()[0], "torch", torch.__version__, "triton", triton.__version__)
print("cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version(), "gpu", torch.cuda.is_available())
if torch.cuda.is_available():
    print(torch.cuda.get_device_name(), torch.cuda.get_device_properties(0))
for name in ("torchvision", "numpy", "optuna", "sklearn", "matplotlib", "flag_gems"):
    try:
        print(name, getattr(importlib.import_module(name), "__version__", "?"))
    except Exception as error:
        print(name, "does not import:", type(error).__name__, str(error).splitlines()[0] if str(error) else "")
'

# 1. Install: editable, no dependencies, no index. Where that fails (setuptools without wheel, say),
#    or in the rehearsal, which installs nothing, put a package folder of links on PYTHONPATH that
#    maps src/fusedbn to fusedbn and kernels/ to fusedbn.kernels, as setup.py's package_dir does.
start=$SECONDS
if [ "$SMOKE" != 1 ]; then
    echo "=== install: $python -m pip install --no-index --no-deps --no-build-isolation -e ." >> "$RUN/env.log"
    timeout --kill-after=10 "$INSTALL_TIMEOUT" \
        "$python" -m pip install --no-index --no-deps --no-build-isolation -e . >> "$RUN/env.log" 2>&1
    pip_code=$?
fi
if [ "$SMOKE" != 1 ] && "${check_imports[@]}" >> "$RUN/env.log" 2>&1; then
    how="the editable install (pip rc=$pip_code)"
else
    shim=$(mktemp -d)
    mkdir -p "$shim/fusedbn"
    for entry in "$PWD"/src/fusedbn/*; do ln -s "$entry" "$shim/fusedbn/"; done
    ln -s "$PWD/kernels" "$shim/fusedbn/kernels"
    export PYTHONPATH="$shim${PYTHONPATH:+:$PYTHONPATH}"
    how="PYTHONPATH=$PYTHONPATH"
fi
echo "install uses $how $((SECONDS - start))s" | tee -a "$RUN/env.log" "$OUT/steps.txt"
step imports 30 "$RUN/env.log" "${check_imports[@]}"

# 2. The carried wheels (scripts/fetch-gpu-wheels.sh): FlagGems without its pinned dependencies, then
#    Optuna, and scikit-learn and matplotlib where they were brought, with dependencies found in .whl/
#    or already installed.
if [ "$SMOKE" = 1 ]; then
    skip wheels "rehearsal installs nothing"
elif ls .whl/*.whl > /dev/null 2>&1; then
    wanted=(PyYAML optuna)
    ls .whl | grep -qi '^scikit_learn-' && wanted+=(scikit-learn)
    ls .whl | grep -qi '^matplotlib-' && wanted+=(matplotlib)
    step wheels "$INSTALL_TIMEOUT" "$RUN/env.log" bash -c '
        "$0" -m pip install --no-index --find-links .whl --no-deps flag-gems || exit $?
        exec "$0" -m pip install --no-index --find-links .whl "$@"' "$python" "${wanted[@]}"
else
    skip wheels "no .whl/ folder (run scripts/fetch-gpu-wheels.sh before the run)"
fi

# 3. The machine.
[ "$SMOKE" = 1 ] || step nvidia-smi 20 "$RUN/env.log" nvidia-smi
step versions 60 "$RUN/env.log" "$python" -c "$VERSIONS_PY"
has_tuning_packages() { "$python" -c "import optuna, sklearn, matplotlib" > /dev/null 2>&1; }

# 4. The test suite on CUDA; tests/tuning where Optuna, scikit-learn and matplotlib import.
pick_args tests/bench/test_profiling.py -- tests --ignore=tests/tuning -n 8 --maxfail=25
step tests "$TESTS_TIMEOUT" "$RUN/tests.log" "$python" -m pytest "${ARGS[@]}" -q -p no:cacheprovider
if [ "$SMOKE" = 1 ]; then
    skip tuning-tests "rehearsal"
elif has_tuning_packages; then
    step tuning-tests "$TUNING_TESTS_TIMEOUT" "$RUN/tests.log" \
        "$python" -m pytest tests/tuning -q -n 8 --maxfail=10 -p no:cacheprovider
else
    skip tuning-tests "optuna, scikit-learn or matplotlib does not import"
fi

# 5. Host time per call of a small layer, fusedbn against torch eager, variant by variant (the
#    rehearsal runs it on the fake GPU).
pick_args --smoke --fake-gpu --
step host-time "$HOST_TIMEOUT" "$RUN/host_time.log" \
    "$python" benchmarks/host_time.py "${ARGS[@]}" --out "$RUN/host-time"

# 6. The quick per-op suite (fusedbn's kernels, auto, eager, FlagGems, torch.compile), and the cost
#    table fitted to it (--calibrate); should it be cut short, render what reached results.csv.
pick_args --smoke --dtypes fp32 --shapes 64x16 -- --quick --calibrate --profile-kernels "$PROFILE_BUDGET"
step bench "$BENCH_TIMEOUT" "$RUN/bench.log" \
    "$python" -m fusedbn.bench.cli "${ARGS[@]}" --out "$RUN/bench" \
    --time-budget "$BENCH_BUDGET" --compile-budget "$COMPILE_BUDGET"
if [ ! -s "$RUN/bench/summary.txt" ] && [ -s "$RUN/bench/results.csv" ]; then
    [ "$SMOKE" = 1 ] || calibrate=--calibrate
    step report 60 "$RUN/bench.log" \
        "$python" -m fusedbn.bench.cli --report "$RUN/bench/results.csv" --out "$RUN/bench" ${calibrate:-}
fi

# 7. ResNet-50 training steps, batch 64, bf16 autocast, NCHW and channels_last: torch's BatchNorm,
#    fusedbn's kernels and auto, eager then the CUDA graph of the whole step (about 6 s a case), then
#    compiled (about a minute of compiling a case, as far as the budget goes: NCHW first). fp16, batch
#    128 and the epilogue variant are for a longer session: python benchmarks/training_step.py.
pick_args --smoke -- --batches 64 --precisions bf16 --layouts nchw,channels_last \
    --variants torch,fusedbn-auto,fusedbn --executions eager,cuda-graph,compile \
    --warmup 5 --steps 20 --profile-steps 2
step training-step "$STEP_TIMEOUT" "$RUN/training_step.log" \
    "$python" benchmarks/training_step.py "${ARGS[@]}" --out "$RUN/training-step" --time-budget "$STEP_BUDGET"

# 8. A short tuning study on the GPU.
pick_args --device cpu --trials 2 --stages 1 --epochs 1 -- --device cuda --trials 4 --stages 1 --epochs 3
if has_tuning_packages; then
    step tune "$TUNE_TIMEOUT" "$RUN/tune.log" \
        "$python" -m fusedbn.cli tune "${ARGS[@]}" --no-progress --out "$RUN/tune"
else
    skip tune "optuna, scikit-learn or matplotlib does not import"
fi

# 9. The few files that come back, everything else packed, and a short summary last.
for file in bench/summary.txt bench/cost_table.json host-time/host_time.md training-step/training_step.txt; do
    [ -s "$RUN/$file" ] && cp "$RUN/$file" "$OUT/"
done
echo
echo "================ gpu_check summary ================"
cat "$OUT/steps.txt"
echo "tests: $(grep -E '(passed|failed|error)' "$RUN/tests.log" 2>/dev/null | tail -n 2 | tr '\n' ' ')"
if [ -s "$OUT/summary.txt" ]; then
    head -n 2 "$OUT/summary.txt"
    sed -n '/^| target /,$p' "$OUT/summary.txt" | head -n 30
fi
[ -s "$OUT/training_step.txt" ] && sed -n '1,40p' "$OUT/training_step.txt"
if tar czf "$OUT/gpu-check.tar.gz" -C "$OUT" run; then
    rm -rf "$RUN"
fi
echo "files in $OUT:"
ls -l "$OUT"
exit "$first_failure"
