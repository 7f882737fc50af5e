"""The report of a per-op run: its record, a table of every case, the targets, and failures."""

import math

from fusedbn.bench.cases import AUTO, COMPILE, EAGER, FLAG_GEMS, FUSEDBN
from fusedbn.bench.core import AUTO as AUTO_BACKEND
from fusedbn.bench.core import TORCH, TRITON, TRITON_INTERPRETER
from fusedbn.bench.metrics import DIFF_LIMITS, breakdown, compute_targets, mismatches
from fusedbn.bench.results import Result, Run
from fusedbn.records import table

# What each backend (fusedbn.backend_for) means for the numbers of fusedbn's rows.
BACKEND_MEANINGS = {
    AUTO_BACKEND: "per call, fusedbn's kernels or torch's BatchNorm, whichever its cost model predicts "
    "faster",
    TRITON: "its compiled Triton kernels",
    TRITON_INTERPRETER: "its Triton kernels under Triton's interpreter on the CPU: slow, no measure of speed",
    TORCH: "PyTorch's own BatchNorm behind fusedbn's checks (CPU without TRITON_INTERPRET=1): "
    "its rows measure torch, not fusedbn's kernels",
}


def _time(result: Result | None) -> str:
    if result is None:
        return "-"
    if result.ok:
        return f"{result.median_ms * 1e3:.1f}"
    return "skip" if result.status.startswith("skipped") else "error"


def _ratio(baseline: Result | None, result: Result | None) -> str:
    if baseline is None or result is None or not (baseline.ok and result.ok):
        return "-"
    return f"{baseline.median_ms / result.median_ms:.2f}x"


def format_table(results: list[Result]) -> str:
    """A row per case, providers side by side, in measuring order: median times in microseconds, the speedups
    of fusedbn's kernels ("vs": other time / theirs) and of backend "auto" ("auto vs eager"), and the kernels'
    GB/s, copy share and diff ("!" past rounding)."""
    by_case: dict[tuple, dict[str, Result]] = {}
    for result in results:
        by_case.setdefault(result.key, {})[result.provider] = result
    rows = []
    for (shape, dtype, layout, mode), providers in by_case.items():
        fused, auto, eager, compiled, gems = (
            providers.get(p) for p in (FUSEDBN, AUTO, EAGER, COMPILE, FLAG_GEMS)
        )
        measured = fused is not None and fused.ok
        flag = "" if not measured or fused.rel_diff <= DIFF_LIMITS[fused.dtype] else "!"
        rows.append({
            "shape": shape, "dtype": dtype, "layout": layout, "mode": mode, "eager us": _time(eager),
            "fusedbn us": _time(fused), "auto us": _time(auto), "compile us": _time(compiled),
            "gems us": _time(gems), "vs eager": _ratio(eager, fused), "auto vs eager": _ratio(eager, auto),
            "vs compile": _ratio(compiled, fused),
            "vs gems": _ratio(gems, fused), "GB/s": f"{fused.gbps:.4g}" if measured else "-",
            "copy": f"{fused.copy_share:.0%}" if measured else "-",
            "diff": f"{fused.rel_diff:.0e}{flag}" if measured else "-",
        })  # fmt: skip
    return table(rows)


def _value(value: float, goal: str) -> str:
    if math.isnan(value):
        return "-"
    if "%" in goal:
        return f"{value:.0%}"
    return f"{value:.2f}x" if "x" in goal else f"{value:.2f}"


def format_targets(results: list[Result]) -> str:
    """The project's per-op targets and the per-dtype/layout fwd+bwd breakdown, as tables."""
    targets = [
        {"target": t.name, "measured": _value(t.value, t.goal), "goal": t.goal,
         "met": "-" if t.met is None else "yes" if t.met else "NO", "cases": t.cases, "where": t.where}
        for t in compute_targets(results)
    ]  # fmt: skip
    text = table(targets)
    rows = [{"dtype": dtype, "layout": layout, "geomean": f"{mean:.2f}x", "network": f"{weighted:.2f}x",
             "shapes": n} for dtype, layout, mean, weighted, n in breakdown(results)]  # fmt: skip
    if rows:
        text += ("\n\nfwd+bwd speedup over eager on ResNet-50 shapes (network: total time of ResNet-50's "
                 "BatchNorm layers, each shape weighted by its layers):\n\n" + table(rows))
    return text


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
    """One line naming what ran fusedbn's cases (the kernels' rows and auto's: their backends) and
    what that means for their numbers."""
    lines = []
    for provider in (FUSEDBN, AUTO):
        backends = sorted({r.backend for r in results if r.provider == provider and r.backend})
        lines += [f"{provider} backend: {b}, {BACKEND_MEANINGS.get(b, 'unknown')}" for b in backends]
    return "; ".join(lines) or "fusedbn backend: none (no fusedbn case)"


def format_header(run: Run) -> str:
    """The run's record in two lines, and a warning on the CPU, whose timings say nothing of speed."""
    header = f"{run.record.header()}\ndevice-to-device copy bandwidth: {run.copy_gbps:.0f} GB/s"
    if run.record.device.startswith("cpu"):
        header += "\nCPU run: it checks the harness; its timings and targets say nothing about GPU speed"
    return header
