#!/usr/bin/env bash
# The compile gate's full sweep (python -m fusedbn.bench.compile_check with its defaults; see
# docs/compile-gate.md), once with this environment's Triton and once per Triton site folder given:
#
#   for v in 3.6.0 3.7.1 3.8.0; do pip install --no-deps --target triton-sites/$v triton==$v; done
#   bash benchmarks/compile_check.sh triton-sites/3.6.0 triton-sites/3.7.1 triton-sites/3.8.0
#
# Writes OUT/triton-<version>.json per version and OUT/REPORT.md (OUT defaults to
# benchmarks/results/<today>-compile-gate); exits 1 if any version had a crash, a compile error, a timeout
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
