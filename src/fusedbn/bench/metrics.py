"""Ratios between providers and the targets of issue 4, computed from a run's results.

The targets (measured, never asserted by a test):
  1. fwd+bwd at least 1.25x faster than torch eager: geometric mean over the ResNet-50 shapes, float16
     and bfloat16, both layouts;
  2. not slower than torch.compile on any of those cases;
  3. at least 80% of the measured copy bandwidth on the large shapes (every mode);
  4. no case more than 10% slower than torch eager.
"""

import math
from collections.abc import Iterable
from dataclasses import dataclass

from fusedbn.bench.cases import (
    COMPILE,
    EAGER,
    FUSEDBN,
    FWDBWD,
    LARGE_NUMEL,
    RESNET50,
    shape_named,
)
from fusedbn.bench.results import Result

TARGET_DTYPES = ("float16", "bfloat16")
SPEEDUP_GOAL = 1.25
VS_COMPILE_GOAL = 1.0
BANDWIDTH_GOAL = 0.80
SLOWDOWN_LIMIT = 1.10


def geometric_mean(values: Iterable[float]) -> float:
    """The geometric mean of positive ``values`` (NaN when there are none)."""
    values = list(values)
    if not values:
        return math.nan
    return math.exp(sum(math.log(v) for v in values) / len(values))


def speedups(results: list[Result], baseline: str, provider: str = FUSEDBN) -> dict[tuple, float]:
    """baseline time / provider time for every case key where both were measured."""
    times: dict[tuple[str, tuple], float] = {
        (r.provider, r.key): r.median_ms for r in results if r.ok and r.provider in (baseline, provider)
    }
    return {
        key: times[(baseline, key)] / times[(provider, key)]
        for (name, key) in times
        if name == provider and (baseline, key) in times
    }


def _is_target_case(key: tuple[str, str, str, str]) -> bool:
    shape, dtype, _, mode = key
    return mode == FWDBWD and dtype in TARGET_DTYPES and shape_named(shape).group == RESNET50


@dataclass(frozen=True)
class Target:
    """One target: the measured value, the goal, whether it is met, on how many cases and where."""

    name: str
    value: float  # NaN when no case was measured
    goal: str
    met: bool | None  # None when no case was measured
    cases: int
    where: str = ""


def _case_name(key: tuple[str, str, str, str]) -> str:
    return " ".join(key)


def compute_targets(results: list[Result]) -> list[Target]:
    """The four targets of issue 4 for ``results`` (one run)."""
    vs_eager = speedups(results, EAGER)
    vs_compile = speedups(results, COMPILE)
    targets = []

    target_speedups = [s for key, s in vs_eager.items() if _is_target_case(key)]
    mean = geometric_mean(target_speedups)
    targets.append(
        Target(
            "fwd+bwd speedup over eager, geomean (ResNet-50, fp16+bf16, both layouts)",
            mean,
            f">= {SPEEDUP_GOAL:.2f}x",
            None if not target_speedups else mean >= SPEEDUP_GOAL,
            len(target_speedups),
        )
    )

    compile_cases = {key: s for key, s in vs_compile.items() if _is_target_case(key)}
    worst_key = min(compile_cases, key=compile_cases.get, default=None)
    targets.append(
        Target(
            "worst fwd+bwd speedup over torch.compile (same cases)",
            compile_cases[worst_key] if worst_key else math.nan,
            f">= {VS_COMPILE_GOAL:.2f}x",
            None if worst_key is None else compile_cases[worst_key] >= VS_COMPILE_GOAL,
            len(compile_cases),
            _case_name(worst_key) if worst_key else "",
        )
    )

    large = [
        r for r in results if r.ok and r.provider == FUSEDBN and shape_named(r.shape).numel >= LARGE_NUMEL
    ]
    lowest = min(large, key=lambda r: r.copy_share, default=None)
    targets.append(
        Target(
            f"lowest share of copy bandwidth, large shapes (>= {LARGE_NUMEL} elements), all modes",
            lowest.copy_share if lowest else math.nan,
            f">= {BANDWIDTH_GOAL:.0%}",
            None if lowest is None else lowest.copy_share >= BANDWIDTH_GOAL,
            len(large),
            _case_name(lowest.key) if lowest else "",
        )
    )

    slowest_key = min(vs_eager, key=vs_eager.get, default=None)
    slowdown = 1.0 / vs_eager[slowest_key] if slowest_key else math.nan
    targets.append(
        Target(
            "worst case: fusedbn time / eager time, all cases",
            slowdown,
            f"<= {SLOWDOWN_LIMIT:.2f}",
            None if slowest_key is None else slowdown <= SLOWDOWN_LIMIT,
            len(vs_eager),
            _case_name(slowest_key) if slowest_key else "",
        )
    )
    return targets


def breakdown(results: list[Result]) -> list[tuple[str, str, float, float, int]]:
    """Per (dtype, layout), the fwd+bwd ResNet-50 geomean speedup over eager and the network-weighted one.

    The weighted ratio is the total eager time of ResNet-50's 53 BatchNorm layers (each shape's time
    times its layer count) over fusedbn's. Rows: (dtype, layout, geomean, weighted, shapes).
    """
    times = {(r.provider, r.key): r.median_ms for r in results if r.ok}
    shapes = [shape_named(name) for name in dict.fromkeys(r.shape for r in results)]
    rows = []
    for dtype, layout in sorted({(r.dtype, r.layout) for r in results}):
        ratios, eager_total, fused_total = [], 0.0, 0.0
        for shape in shapes:
            key = (shape.name, dtype, layout, FWDBWD)
            if shape.group != RESNET50 or (EAGER, key) not in times or (FUSEDBN, key) not in times:
                continue
            ratios.append(times[(EAGER, key)] / times[(FUSEDBN, key)])
            eager_total += shape.layers * times[(EAGER, key)]
            fused_total += shape.layers * times[(FUSEDBN, key)]
        if ratios:
            rows.append((dtype, layout, geometric_mean(ratios), eager_total / fused_total, len(ratios)))
    return rows


# Largest relative difference from torch eager's output (see providers.relative_difference) that is
# still rounding: a few units of the output dtype's precision.
DIFF_LIMITS = {"float32": 1e-4, "float16": 5e-3, "bfloat16": 3e-2}


def mismatches(results: list[Result]) -> list[Result]:
    """Measured non-eager results whose output differs from eager's by more than rounding (or is NaN)."""
    return [r for r in results if r.ok and r.provider != EAGER and not r.rel_diff <= DIFF_LIMITS[r.dtype]]
