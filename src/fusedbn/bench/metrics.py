"""Ratios between providers and the project's per-op speed targets (measured, never asserted by a test).

On the target cases (training fwd+bwd of the ResNet-50 shapes in float16 and bfloat16, both layouts), for
fusedbn's kernels: speed, at least 1.25x torch eager as a geometric mean; floor, no case below 0.9x eager; at
least as fast as torch.compile on at least half of them. On the large shapes: fwd+bwd at least 60%, eval at
least 85% of the measured copy bandwidth. For backend "auto": never slower, every measured case at least
0.97x eager (below is beyond noise); NCHW speed, at least 1.3x eager as a geometric mean of the NCHW targets.
"""

import math
import statistics
from collections.abc import Iterable
from dataclasses import dataclass

from fusedbn.bench.cases import (
    AUTO,
    COMPILE,
    EAGER,
    EVAL,
    FUSEDBN,
    FWDBWD,
    LARGE_NUMEL,
    NCHW,
    RESNET50,
    shape_named,
)
from fusedbn.bench.results import Result

TARGET_DTYPES = ("float16", "bfloat16")
VS_COMPILE_SHARE_GOAL = 0.5  # of the target cases at least as fast as torch.compile
# Share of the copy bandwidth, per mode, on the large shapes.
BANDWIDTH_GOALS = {FWDBWD: 0.60, EVAL: 0.85}


def geometric_mean(values: Iterable[float]) -> float:
    """The geometric mean of positive ``values`` (NaN when there are none)."""
    values = list(values)
    return statistics.geometric_mean(values) if values else math.nan


def speedups(results: list[Result], baseline: str, provider: str = FUSEDBN) -> dict[tuple, float]:
    """baseline time / provider time for every case key where both were measured."""
    times = {(r.provider, r.key): r.median_ms for r in results if r.ok and r.provider in (baseline, provider)}
    return {key: times[(baseline, key)] / ms for (name, key), ms in times.items()
            if name == provider and (baseline, key) in times}  # fmt: skip


@dataclass(frozen=True)
class Target:
    """One target: the measured value, the goal, whether it is met, on how many cases and where."""

    name: str
    value: float  # NaN when no case was measured
    goal: str
    met: bool | None  # None when no case was measured
    cases: int
    where: str = ""


def _on_target_cases(ratios: dict[tuple, float]) -> dict[tuple, float]:
    return {(shape, dtype, layout, mode): s for (shape, dtype, layout, mode), s in ratios.items()
            if mode == FWDBWD and dtype in TARGET_DTYPES and shape_named(shape).group == RESNET50}


def _geomean_target(name: str, ratios: list[float], goal: float) -> Target:
    mean = geometric_mean(ratios)
    return Target(name, mean, f">= {goal:.2f}x", None if not ratios else mean >= goal, len(ratios))


def _lowest_target(name: str, values: dict[tuple, float], goal: float, share: bool = False) -> Target:
    """Whether the lowest of ``values`` (ratios by case key, or shares) reaches ``goal``; where: its case."""
    goal_text = f">= {goal:.0%}" if share else f">= {goal:.2f}x"
    lowest = min(values, key=values.get, default=None)
    if lowest is None:
        return Target(name, math.nan, goal_text, None, 0)
    return Target(name, values[lowest], goal_text, values[lowest] >= goal, len(values), " ".join(lowest))


def _compile_target(vs_compile: dict[tuple, float]) -> Target:
    cases = _on_target_cases(vs_compile)
    share = sum(s >= 1.0 for s in cases.values()) / len(cases) if cases else math.nan
    worst = min(cases, key=cases.get, default=None)
    return Target("against torch.compile: share of those cases at >= 1.0x (where: the slowest)", share,
                  f">= {VS_COMPILE_SHARE_GOAL:.0%}", None if not cases else share >= VS_COMPILE_SHARE_GOAL,
                  len(cases), f"{' '.join(worst)} {cases[worst]:.2f}x" if worst else "")  # fmt: skip


def _bandwidth_target(results: list[Result], mode: str) -> Target:
    shares = {r.key: r.copy_share for r in results if r.ok and r.provider == FUSEDBN and r.mode == mode
              and shape_named(r.shape).numel >= LARGE_NUMEL}  # fmt: skip
    name = "training" if mode == FWDBWD else mode
    return _lowest_target(f"{name} bandwidth: lowest {mode} share of copy bandwidth, large shapes (>= "
                          f"{LARGE_NUMEL} elements)", shares, BANDWIDTH_GOALS[mode], share=True)  # fmt: skip


def compute_targets(results: list[Result]) -> list[Target]:
    """The project's per-op targets for ``results`` (one run): speed, floor, against torch.compile,
    training bandwidth, eval bandwidth, and auto's two."""
    vs_eager = _on_target_cases(speedups(results, EAGER))
    auto_vs_eager = speedups(results, EAGER, AUTO)
    auto_nchw = [s for key, s in _on_target_cases(auto_vs_eager).items() if key[2] == NCHW]
    return [
        _geomean_target("speed: fwd+bwd over eager, geomean (ResNet-50 shapes, fp16+bf16, both layouts)",
                        list(vs_eager.values()), 1.25),
        _lowest_target("floor: slowest of those cases over eager", vs_eager, 0.90),
        _compile_target(speedups(results, COMPILE)),
        _bandwidth_target(results, FWDBWD),
        _bandwidth_target(results, EVAL),
        _lowest_target("auto never slower: slowest case over eager (every case measured)", auto_vs_eager,
                       0.97),
        _geomean_target("auto NCHW speed: fwd+bwd over eager, geomean (ResNet-50 shapes, fp16+bf16, NCHW)",
                        auto_nchw, 1.3),
    ]  # fmt: skip


def breakdown(results: list[Result]) -> list[tuple[str, str, float, float, int]]:
    """Per (dtype, layout): (dtype, layout, fwd+bwd geomean speedup over eager on the ResNet-50 shapes, the
    network-weighted one (eager's total time over fusedbn's, each shape counted by its layers), shapes)."""
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
