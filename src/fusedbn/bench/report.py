"""The terminal report of a run: its metadata, a table of every case, the targets, and failures."""

import math

from fusedbn.backend import TORCH, TRITON, TRITON_INTERPRETER
from fusedbn.bench.cases import COMPILE, EAGER, FLAG_GEMS, FUSEDBN
from fusedbn.bench.metrics import DIFF_LIMITS, breakdown, compute_targets, mismatches
from fusedbn.bench.results import Result, RunInfo

# What each backend (fusedbn.backend_for) means for the numbers of fusedbn's rows.
BACKEND_MEANINGS = {
    TRITON: "its compiled Triton kernels",
    TRITON_INTERPRETER: "its Triton kernels under Triton's interpreter on the CPU: slow, no measure of speed",
    TORCH: "PyTorch's own BatchNorm behind fusedbn's checks (CPU without TRITON_INTERPRET=1): "
    "its rows measure torch, not fusedbn's kernels",
}

COLUMNS = (
    ("shape", "<", 14),
    ("dtype", "<", 8),
    ("layout", "<", 13),
    ("mode", "<", 6),
    ("eager us", ">", 9),
    ("fusedbn us", ">", 10),
    ("compile us", ">", 10),
    ("gems us", ">", 8),
    ("vs eager", ">", 8),
    ("vs compile", ">", 10),
    ("vs gems", ">", 7),
    ("GB/s", ">", 7),
    ("copy", ">", 5),
    ("diff", ">", 8),
)


def _row(cells: list[str]) -> str:
    return "  ".join(f"{cell:{align}{width}}" for cell, (_, align, width) in zip(cells, COLUMNS, strict=True))


def _time_cell(result: Result | None) -> str:
    if result is None:
        return "-"
    if result.ok:
        return f"{result.median_ms * 1e3:.1f}"
    return "skip" if result.status.startswith("skipped") else "error"


def _ratio_cell(baseline: Result | None, result: Result | None) -> str:
    if baseline is None or result is None or not (baseline.ok and result.ok):
        return "-"
    return f"{baseline.median_ms / result.median_ms:.2f}x"


def _diff_cell(result: Result | None) -> str:
    if result is None or not result.ok:
        return "-"
    flag = "" if result.rel_diff <= DIFF_LIMITS[result.dtype] else "!"
    return f"{result.rel_diff:.0e}{flag}"


def format_table(results: list[Result]) -> str:
    """One line per case (shape, dtype, layout, mode), providers side by side, in measuring order.

    Times are medians in microseconds; "vs" columns are speedups of fusedbn (other time / fusedbn
    time); GB/s, copy (share of the copy bandwidth) and diff (relative difference from eager's
    output, "!" past rounding) are fusedbn's.
    """
    by_case: dict[tuple, dict[str, Result]] = {}
    for result in results:
        by_case.setdefault(result.key, {})[result.provider] = result
    lines = [_row([name for name, _, _ in COLUMNS])]
    for key, providers in by_case.items():
        fused, eager, compiled, gems = (providers.get(p) for p in (FUSEDBN, EAGER, COMPILE, FLAG_GEMS))
        measured = fused is not None and fused.ok
        lines.append(
            _row(
                [
                    *key,
                    _time_cell(eager),
                    _time_cell(fused),
                    _time_cell(compiled),
                    _time_cell(gems),
                    _ratio_cell(eager, fused),
                    _ratio_cell(compiled, fused),
                    _ratio_cell(gems, fused),
                    f"{fused.gbps:.4g}" if measured else "-",
                    f"{fused.copy_share:.0%}" if measured else "-",
                    _diff_cell(fused),
                ]
            )
        )
    return "\n".join(lines)


def _value(value: float, goal: str) -> str:
    if math.isnan(value):
        return "-"
    if "%" in goal:
        return f"{value:.0%}"
    return f"{value:.2f}x" if "x" in goal else f"{value:.2f}"


def format_targets(results: list[Result]) -> str:
    """The project's per-op targets and the per-dtype/layout fwd+bwd breakdown, as text."""
    lines = [f"{'target':<82}  {'measured':>8}  {'goal':>8}  {'met':>3}  {'cases':>5}  where"]
    for target in compute_targets(results):
        met = "-" if target.met is None else "yes" if target.met else "NO"
        lines.append(
            f"{target.name:<82}  {_value(target.value, target.goal):>8}  {target.goal:>8}  {met:>3}  "
            f"{target.cases:>5}  {target.where}"
        )
    rows = breakdown(results)
    if rows:
        lines.append("")
        lines.append("fwd+bwd speedup over eager on ResNet-50 shapes:")
        lines.append(f"  {'dtype':<9} {'layout':<14} {'geomean':>8} {'network':>8} {'shapes':>6}")
        for dtype, layout, mean, weighted, count in rows:
            lines.append(f"  {dtype:<9} {layout:<14} {mean:>7.2f}x {weighted:>7.2f}x {count:>6}")
        lines.append(
            "  (network: total time of ResNet-50's BatchNorm layers, each shape weighted by its layers)"
        )
    return "\n".join(lines)


def format_problems(results: list[Result]) -> str:
    """Cases that failed, and outputs that differ from eager's by more than rounding; "" if none."""
    lines = [
        f"ERROR {' '.join(r.key)} {r.provider}: {r.status}" for r in results if r.status.startswith("error")
    ]
    lines += [
        f"MISMATCH {' '.join(r.key)} {r.provider}: relative difference {r.rel_diff:.1e} from eager "
        f"(limit {DIFF_LIMITS[r.dtype]:.0e})"
        for r in mismatches(results)
    ]
    return "\n".join(lines)


def format_backend(results: list[Result]) -> str:
    """One line naming what ran fusedbn's cases (its backend) and what that means for its numbers."""
    backends = sorted({r.backend for r in results if r.provider == FUSEDBN and r.backend})
    if not backends:
        return "fusedbn backend: none (no fusedbn case)"
    return "; ".join(f"fusedbn backend: {b}, {BACKEND_MEANINGS.get(b, 'unknown')}" for b in backends)


def format_header(info: RunInfo) -> str:
    """The run's metadata in two lines, and a warning on the CPU, whose timings say nothing of speed."""
    header = (
        f"run {info.run_id} on {info.device}: torch {info.torch}, triton {info.triton}, CUDA {info.cuda}, "
        f"fusedbn {info.fusedbn} at {info.commit}\n"
        f"device-to-device copy bandwidth: {info.copy_gbps:.0f} GB/s"
    )
    if info.device.startswith("cpu"):
        header += "\nCPU run: it checks the harness; its timings and targets say nothing about GPU speed"
    return header
