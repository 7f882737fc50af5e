#!/usr/bin/env bash
# The compile gate's full sweep (python -m fusedbn.bench.compile_check, see its docstring), once with
# this environment's Triton and once with each Triton site folder given: every kernel specialisation
# fusedbn launches for ResNet-50's BatchNorm inputs (fp16/bf16/fp32/fp64, NCHW and channels_last,
# epilogues none/relu/add+relu, training and eval, forward and backward, planned for 108, 132 and
# 148 SMs), compiled for sm_80, sm_90 and sm_100 on the CPU. Install the other Triton versions into
# their own folders first, not into the environment:
#
#   for v in 3.6.0 3.7.1 3.8.0; do pip install --no-deps --target triton-sites/$v triton==$v; done
#   bash benchmarks/compile_check.sh triton-sites/3.6.0 triton-sites/3.7.1 triton-sites/3.8.0
#
# Writes OUT/triton-<version>.json per version and OUT/REPORT.md over all of them (OUT defaults to
# benchmarks/results/<today>-compile-gate). Exits 1 if any version had a crash, a compile error, a timeout
# or a spill. About 10 minutes of two idle cores per version; JOBS sets the worker processes.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results/$(date -u +%F)-compile-gate}
JOBS=${JOBS:-2}
python=${PYTHON:-python3}
status=0
for site in "" "$@"; do
    echo "== Triton ${site:-of this environment}"
    "$python" -m fusedbn.bench.compile_check --out "$OUT" --jobs "$JOBS" ${site:+--site "$site"} \
        || status=1
done
exit $status
