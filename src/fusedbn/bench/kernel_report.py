"""The compile gate's Markdown kernel report over every triton-<version>.json in a folder, and the
classification of a compiled result (ok, a problem that fails the gate, an occupancy spill that does not) that
the gate (compile_check.py) uses."""

import json
import math
import statistics
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fusedbn.bench.cases import DTYPES
from fusedbn.bench.core import WIDEST_ACCESS_BYTES
from fusedbn.records import table


def spills(result: dict[str, Any]) -> bool:
    """Whether a compiled kernel spills registers: spill stores, or a stack or local memory."""
    return result["status"] == "ok" and any(result[k] for k in ("spill_stores", "stack_bytes", "local_bytes"))


def spills_for_lack_of_registers(result: dict[str, Any]) -> bool:
    """Spills that fail the gate: at the register limit (within one allocation unit of 8 of what the block
    size allows a thread), or still there when ptxas compiles at -O1. Below the limit, ptxas -O3 may spill a
    value or two to fit one more block per SM; -O1 does not: those are :func:`occupancy_spills`."""
    return spills(result) and (result["registers"] >= result["register_limit"] - 8
                               or result["spill_bytes_at_o1"] > 0)  # fmt: skip


def occupancy_spills(result: dict[str, Any]) -> bool:
    """Spills under the register limit that ptxas -O1 does not make."""
    return spills(result) and not spills_for_lack_of_registers(result)


def problem(result: dict[str, Any]) -> str | None:
    """A result's problem in words (crash, error, timeout, spill at the register limit), or None."""
    if result["status"] == "crash":
        return f"crash {result.get('signal') or result.get('returncode')}"
    if result["status"] == "error":
        return "error " + (result["error"].strip().splitlines() or [""])[-1]
    if result["status"] == "timeout":
        return f"timeout after {result['seconds']:.0f} s"
    if spills_for_lack_of_registers(result):
        return "spill at the register limit " + spill_text(result)
    return None


def spill_text(result: dict[str, Any]) -> str:
    return (f"({result['registers']} registers, {result['spill_stores']} spill stores, "
            f"{result['stack_bytes']} bytes of stack, {result['local_bytes']} bytes of local memory)")


Describe = Callable[[dict[str, Any]], "str | None"]


def _listed(report: dict[str, Any], describe: Describe) -> list[tuple[str, dict, str]]:
    """(target, specialisation, words) for every result of ``report`` that ``describe`` has words for."""
    return [(target, spec, words) for spec in report["specialisations"]
            for target, result in spec["results"].items() if (words := describe(result))]  # fmt: skip


def failures(report: dict[str, Any]) -> list[str]:
    """One line per crash, compile error, timeout or spill at the register limit in a gate result."""
    return [f"sm_{target} {spec['kernel']} #{spec['id']}: {what}"
            for target, spec, what in _listed(report, problem)]  # fmt: skip


def load_results(folder: Path) -> list[dict[str, Any]]:
    """Every triton-<version>.json in ``folder``, oldest Triton first."""
    found = [json.loads(p.read_text(encoding="utf-8")) for p in folder.glob("triton-*.json")]
    return sorted(found, key=lambda r: [int(n) for n in r["triton"].split("+")[0].split(".") if n.isdigit()])


def _summary(report: dict[str, Any]) -> list[dict[str, object]]:
    rows = []
    for target in report["targets"]:
        results = [s["results"][str(target)] for s in report["specialisations"]
                   if str(target) in s["results"]]  # fmt: skip
        status = Counter(result["status"] for result in results)
        ok = [r for r in results if r["status"] == "ok"]
        times = [r["compile_s"] for r in ok]
        rows.append({
            "Triton": report["triton"], "target": f"sm_{target}", "specialisations": len(results),
            **{name: status[name] for name in ("ok", "crash", "error", "timeout")},
            "spills at the register limit": sum(map(spills_for_lack_of_registers, ok)),
            "occupancy spills": sum(map(occupancy_spills, ok)),
            "SASS != PTX": sum(not r["sass_agrees"] for r in ok),
            "max registers": max((r["registers"] for r in ok), default=0),
            "max shared bytes": max((r["shared_bytes"] for r in ok), default=0),
            "compile s (sum)": f"{sum(times):.0f}", "slowest s": f"{max(times, default=0):.1f}",
        })  # fmt: skip
    return rows


def _case_labels(report: dict[str, Any], spec: dict[str, Any]) -> str:
    labels = sorted({"{shape} {dtype} {layout} {epilogue} {mode}".format(**report["cases"][i])
                     for i in spec["cases"]})  # fmt: skip
    return "; ".join(labels[:4]) + (f"; and {len(labels) - 4} more" if len(labels) > 4 else "")


def _kernel_label(spec: dict[str, Any]) -> str:
    kwargs = spec["kwargs"]
    block = (f"{kwargs['BLOCK_SPLITS']} splits x {kwargs['BLOCK_C']} channels" if "BLOCK_SPLITS" in kwargs
             else f"{kwargs['BLOCK_N']}x{kwargs['BLOCK_S']}x{kwargs['BLOCK_C']}")  # fmt: skip
    return f"`{spec['kernel']}` (#{spec['id']}, block {block}, {kwargs.get('num_warps', 4)} warps)"


def _lines(results: list[dict[str, Any]], describe: Describe, bold: bool) -> list[str]:
    """A list item per result that ``describe`` has words for, naming its kernel and cases."""
    return [
        f"- Triton {report['triton']} sm_{target} {f'**{what}**' if bold else what}: "
        f"{_kernel_label(spec)} in {_case_labels(report, spec)}"
        for report in results for target, spec, what in _listed(report, describe)
    ]  # fmt: skip


def _kernels(report: dict[str, Any]) -> list[dict[str, object]]:
    rows = []
    by_kernel: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for spec in report["specialisations"]:
        by_kernel[spec["kernel"]].append(spec)
    for kernel, specs in sorted(by_kernel.items()):
        for target in report["targets"]:
            ok = [r for s in specs if (r := s["results"].get(str(target))) and r["status"] == "ok"]
            if ok:
                registers, times = [r["registers"] for r in ok], [r["compile_s"] for r in ok]
                rows.append({
                    "kernel": kernel, "target": f"sm_{target}", "specialisations": len(specs),
                    "warps": ", ".join(map(str, sorted({r["num_warps"] for r in ok}))),
                    "registers": f"{min(registers)}-{max(registers)}",
                    "max shared bytes": max(r["shared_bytes"] for r in ok),
                    "median compile s": f"{statistics.median(times):.2f}", "slowest s": f"{max(times):.2f}",
                })  # fmt: skip
    return rows


def contiguous_run(shape: str, layout: str) -> int:
    """Elements in a row of the dim the kernels vectorise: H*W... in NCHW, C in channels_last or (N, C)."""
    dims = [int(d) for d in shape.split("x")]
    return dims[1] if layout == "channels_last" or len(dims) == 2 else math.prod(dims[2:])


def row_alignment(shape: str, layout: str, dtype: str) -> int:
    """Bytes to which every row start is aligned, up to the widest access (16 bytes)."""
    row_bytes = contiguous_run(shape, layout) * DTYPES[dtype].itemsize
    return min(row_bytes & -row_bytes, WIDEST_ACCESS_BYTES)


def case_widths(
    report: dict[str, Any], target: str
) -> dict[tuple[str, str, str], tuple[dict[tuple[str, str], set[int]], int]]:
    """(shape, dtype, layout) -> ((tensor, load/store) -> widths seen, specialisations not compiled) on
    ``target``, over every epilogue, mode and SM count."""
    found: dict[tuple[str, str, str], tuple[dict, set]] = defaultdict(lambda: (defaultdict(set), set()))
    specs = {s["id"]: s for s in report["specialisations"]}
    for case in report["cases"]:
        accesses, failed = found[(case["shape"], case["dtype"], case["layout"])]
        for spec_id in case["launches"]:
            result = specs.get(spec_id, {}).get("results", {}).get(target)
            if result is not None and result["status"] != "ok":
                failed.add(spec_id)
            elif result is not None:
                for access in result["tile_accesses"]:
                    accesses[(access["tensor"], access["kind"])].update(map(int, access["widths"]))
    return {key: (accesses, len(failed)) for key, (accesses, failed) in found.items()}


def _widths_cell(accesses: dict[tuple[str, str], set[int]], kind: str) -> str:
    parts = [f"{tensor} {'/'.join(map(str, sorted(widths)))}"
             for (tensor, which), widths in sorted(accesses.items()) if which == kind]  # fmt: skip
    return ", ".join(parts) or "-"


def scalar_reason(
    shape: str, dtype: str, layout: str, accesses: dict[tuple[str, str], set[int]]
) -> str | None:
    """Why the case's data accesses (all but the ReLU mask) stay one element wide, or None."""
    item = DTYPES[dtype].itemsize
    narrow = sorted({tensor for (tensor, _), widths in accesses.items()
                     if tensor != "mask" and min(widths) <= 8 * item})  # fmt: skip
    if not narrow:
        return None
    run = contiguous_run(shape, layout)
    alignment = row_alignment(shape, layout, dtype)
    what = "rows" if layout == "nchw" and len(shape.split("x")) > 2 else "channel runs"
    if alignment <= item:
        return (f"{', '.join(narrow)} scalar: {what} of {run} elements are {run * item} bytes, "
                f"{alignment}-byte aligned, so no access wider than one element is legal.")
    return (f"{', '.join(narrow)} scalar although {what} of {run} elements ({run * item} bytes) are "
            f"{alignment}-byte aligned: wider accesses would be legal.")


def _cases(report: dict[str, Any], target: str) -> tuple[list[dict[str, object]], list[str]]:
    rows, sentences = [], []
    for (shape, dtype, layout), (accesses, failed) in sorted(case_widths(report, target).items()):
        reason = scalar_reason(shape, dtype, layout, accesses)
        verdict = ("scalar" if reason else "vector") + (f" ({failed} not compiled)" if failed else "")
        rows.append({"shape": shape, "dtype": dtype, "layout": layout,
                     "alignment": row_alignment(shape, layout, dtype),
                     "loads": _widths_cell(accesses, "load"), "stores": _widths_cell(accesses, "store"),
                     "data accesses": verdict})  # fmt: skip
        if reason:
            sentences.append(f"- {shape} {dtype} {layout}: {reason}")
    return rows, sentences


def render(results: list[dict[str, Any]]) -> str:
    """The Markdown report of the runs in ``results`` (one per Triton version)."""
    if not results:
        return "# Kernel report\n\nNo compile-check results.\n"
    newest = results[-1]
    runs = [{"Triton": r["triton"], "fusedbn commit": r["commit"],
             "kernels digest": r.get("kernels_digest", "-")[:12], "date": r["date"], "cases": len(r["cases"]),
             "specialisations": len(r["specialisations"]), "subset": "yes" if r["subset"] else "no"}
            for r in results]  # fmt: skip
    grid = defaultdict(set)
    for case in newest["cases"]:
        for field in ("shape", "dtype", "layout", "epilogue", "mode", "multiprocessors"):
            grid[field].add(str(case[field]))
    problems = _lines(results, problem, bold=True)
    occupancy = _lines(results, lambda result: occupancy_spills(result) and spill_text(result), bold=False)
    lines = [
        "# Kernel report: every fusedbn kernel specialisation, compiled for real GPUs on the CPU", "",
        "Written by `python -m fusedbn.bench.compile_check` (see its docstring): fusedbn's public "
        "functional API, forward and backward, is called on fake tensors for each case of the grid "
        "below, each kernel launch is recorded, bound by Triton's own binder and compiled with "
        "`triton.compile` for each target; widths, registers and spills are read from the SASS "
        "(cuobjdump from the Triton wheel), each tile access named after its tensor through the PTX.", "",
        table(runs), "",
        "Grid: " + "; ".join(f"{field}: {', '.join(sorted(values))}" for field, values in grid.items()) + ".",
        "",
        "## Summary", "", table([row for report in results for row in _summary(report)]), "",
        "## Problems", "",
        *(problems or ["None: every specialisation compiled, none spills at its register limit."]),
        "", "## Occupancy spills", "",
        "ptxas (at its default -O3) spills a value or two of a kernel well under its register limit "
        "to keep it at a register count that fits one more block per SM (64 registers for 256 "
        "threads, say). Each kernel listed here was compiled again with ptxas -O1, which used more "
        "registers and did not spill. These few bytes stay in L1; they are listed, not gate "
        "failures (a spill at the register limit, or one that -O1 makes too, is).", "",
        *(occupancy or ["None."]),
        "", f"## Kernels (Triton {newest['triton']})", "", table(_kernels(newest)),
    ]  # fmt: skip
    for target in newest["targets"]:
        rows, sentences = _cases(newest, str(target))
        lines += [
            "", f"## Tile access widths per case (Triton {newest['triton']}, sm_{target})", "",
            "Bits per thread of each global load and store of a tile, over every epilogue, mode, "
            "SM count and kernel of the case, named after the tensor it reaches (mask: the fused "
            "ReLU's packed mask, one bit per element). The widths are the PTX's, each traced to its "
            "pointer argument; the SASS has the same widths wherever the summary's SASS != PTX "
            "count is 0. Alignment: bytes to which the rows of the vectorised dim start (H*W "
            "elements in NCHW, C in channels_last), up to 16.", "", table(rows),
        ]  # fmt: skip
        if sentences:
            lines += ["", "Cases that stay scalar:", "", *sentences]
    return "\n".join(lines) + "\n"


def write_report(folder: Path) -> Path:
    """Render REPORT.md in ``folder`` from its triton-*.json files."""
    path = folder / "REPORT.md"
    path.write_text(render(load_results(folder)), encoding="utf-8")
    return path
