"""The compile gate's Markdown kernel report, rendered from its triton-<version>.json results.

One report covers every Triton version whose results sit in the folder: per version and target the
count of specialisations that compiled, crashed, failed or spilled; the problems one by one; per
kernel the warps, registers, shared memory and compile times; and per case (shape, dtype, layout)
the widths of the tile loads and stores in the SASS, with a sentence on each case whose data
accesses stay one element wide and why.
"""

import json
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from fusedbn.bench.compile_check import (
    occupancy_spills,
    problem,
    spill_text,
    spills_for_lack_of_registers,
)

REPORT_FILE = "REPORT.md"
ITEM_BYTES = {"float16": 2, "bfloat16": 2, "float32": 4, "float64": 8}
# The widest access a thread makes to global memory (the caps of the alignment the report quotes).
WIDEST_ACCESS_BYTES = 16


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("+")[0].split(".") if part.isdigit())


def load_results(folder: Path) -> list[dict[str, Any]]:
    """Every triton-<version>.json in ``folder``, oldest Triton first."""
    found = [json.loads(p.read_text(encoding="utf-8")) for p in folder.glob("triton-*.json")]
    return sorted(found, key=lambda r: _version_key(r["triton"]))


def _summary(report: dict[str, Any]) -> list[str]:
    lines = []
    for target in report["targets"]:
        results = [s["results"][str(target)] for s in report["specialisations"]
                   if str(target) in s["results"]]
        status = defaultdict(int)
        for result in results:
            status[result["status"]] += 1
        ok = [r for r in results if r["status"] == "ok"]
        times = [r["compile_s"] for r in ok]
        lines.append(
            f"| {report['triton']} | sm_{target} | {len(results)} | {status['ok']} | "
            f"{status['crash']} | {status['error']} | {status['timeout']} | "
            f"{sum(spills_for_lack_of_registers(r) for r in ok)} | "
            f"{sum(occupancy_spills(r) for r in ok)} | {sum(not r['sass_agrees'] for r in ok)} | "
            f"{max((r['registers'] for r in ok), default=0)} | "
            f"{max((r['shared_bytes'] for r in ok), default=0)} | {sum(times):.0f} | "
            f"{max(times, default=0):.1f} |"
        )
    return lines


def _case_labels(report: dict[str, Any], spec: dict[str, Any]) -> str:
    cases = [report["cases"][i] for i in spec["cases"]]
    labels = sorted({f"{c['shape']} {c['dtype']} {c['layout']} {c['epilogue']} {c['mode']}"
                     for c in cases})
    return "; ".join(labels[:4]) + (f"; and {len(labels) - 4} more" if len(labels) > 4 else "")


def _kernel_label(spec: dict[str, Any]) -> str:
    kwargs = spec["kwargs"]
    if "BLOCK_SPLITS" in kwargs:
        block = f"{kwargs['BLOCK_SPLITS']} splits x {kwargs['BLOCK_C']} channels"
    else:
        block = f"{kwargs['BLOCK_N']}x{kwargs['BLOCK_S']}x{kwargs['BLOCK_C']}"
    return f"`{spec['kernel']}` (#{spec['id']}, block {block}, {kwargs.get('num_warps', 4)} warps)"


def _problems(report: dict[str, Any]) -> list[str]:
    lines = []
    for spec in report["specialisations"]:
        for target, result in spec["results"].items():
            what = problem(result)
            if what is not None:
                lines.append(f"- Triton {report['triton']} sm_{target} **{what}**: "
                             f"{_kernel_label(spec)} in {_case_labels(report, spec)}")
    return lines


def _occupancy_spills(report: dict[str, Any]) -> list[str]:
    lines = []
    for spec in report["specialisations"]:
        for target, result in spec["results"].items():
            if occupancy_spills(result):
                lines.append(f"- Triton {report['triton']} sm_{target} {spill_text(result)}: "
                             f"{_kernel_label(spec)} in {_case_labels(report, spec)}")
    return lines


def _kernels(report: dict[str, Any]) -> list[str]:
    lines = []
    by_kernel: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for spec in report["specialisations"]:
        by_kernel[spec["kernel"]].append(spec)
    for kernel, specs in sorted(by_kernel.items()):
        for target in report["targets"]:
            ok = [s["results"][str(target)] for s in specs
                  if s["results"].get(str(target), {}).get("status") == "ok"]
            if not ok:
                continue
            registers = [r["registers"] for r in ok]
            times = [r["compile_s"] for r in ok]
            warps = sorted({r["num_warps"] for r in ok})
            lines.append(
                f"| {kernel} | sm_{target} | {len(specs)} | {', '.join(map(str, warps))} | "
                f"{min(registers)}-{max(registers)} | {max(r['shared_bytes'] for r in ok)} | "
                f"{statistics.median(times):.2f} | {max(times):.2f} |"
            )
    return lines


def contiguous_run(shape: str, layout: str) -> int:
    """Elements in a row of the dim the kernels vectorise: H*W... in NCHW, C in channels_last
    (and for (N, C) input, where channels are the contiguous dim)."""
    dims = [int(d) for d in shape.split("x")]
    if layout == "channels_last" or len(dims) == 2:
        return dims[1]
    run = 1
    for d in dims[2:]:
        run *= d
    return run


def row_alignment(shape: str, layout: str, dtype: str) -> int:
    """Bytes to which every row start is aligned, up to the widest access (16 bytes)."""
    row_bytes = contiguous_run(shape, layout) * ITEM_BYTES[dtype]
    return min(row_bytes & -row_bytes, WIDEST_ACCESS_BYTES)


def case_widths(
    report: dict[str, Any], target: str
) -> dict[tuple[str, str, str], tuple[dict[tuple[str, str], set[int]], int]]:
    """(shape, dtype, layout) -> ((tensor, load/store) -> widths seen, specialisations that did
    not compile) on ``target``, over every epilogue, mode and SM count of the case."""
    found: dict[tuple[str, str, str], tuple[dict, set]] = {}
    specs = {s["id"]: s for s in report["specialisations"]}
    for case in report["cases"]:
        accesses, failed = found.setdefault((case["shape"], case["dtype"], case["layout"]), ({}, set()))
        for spec_id in case["launches"]:
            result = specs.get(spec_id, {}).get("results", {}).get(target)
            if result is None:
                continue
            if result["status"] != "ok":
                failed.add(spec_id)
                continue
            for access in result["tile_accesses"]:
                widths = accesses.setdefault((access["tensor"], access["kind"]), set())
                widths.update(int(w) for w in access["widths"])
    return {key: (accesses, len(failed)) for key, (accesses, failed) in found.items()}


def _widths_cell(accesses: dict[tuple[str, str], set[int]], kind: str) -> str:
    parts = []
    for (tensor, access_kind), widths in sorted(accesses.items()):
        if access_kind == kind:
            parts.append(f"{tensor} {'/'.join(str(w) for w in sorted(widths))}")
    return ", ".join(parts) or "-"


def scalar_reason(
    shape: str, dtype: str, layout: str, accesses: dict[tuple[str, str], set[int]]
) -> str | None:
    """Why the case's data accesses (all but the ReLU mask) stay one element wide, or None."""
    element_bits = 8 * ITEM_BYTES[dtype]
    narrow = sorted({
        tensor for (tensor, _), widths in accesses.items()
        if tensor != "mask" and min(widths) <= element_bits
    })
    if not narrow:
        return None
    run = contiguous_run(shape, layout)
    item = ITEM_BYTES[dtype]
    alignment = row_alignment(shape, layout, dtype)
    what = "rows" if layout == "nchw" and len(shape.split("x")) > 2 else "channel runs"
    if alignment <= item:
        return (f"{', '.join(narrow)} scalar: {what} of {run} elements are {run * item} bytes, "
                f"{alignment}-byte aligned, so no access wider than one element is legal.")
    return (f"{', '.join(narrow)} scalar although {what} of {run} elements ({run * item} bytes) are "
            f"{alignment}-byte aligned: wider accesses would be legal.")


def _cases(report: dict[str, Any], target: str) -> tuple[list[str], list[str]]:
    rows, sentences = [], []
    for (shape, dtype, layout), (accesses, failed) in sorted(case_widths(report, target).items()):
        reason = scalar_reason(shape, dtype, layout, accesses)
        verdict = "scalar" if reason else "vector"
        if failed:
            verdict += f" ({failed} not compiled)"
        rows.append(
            f"| {shape} | {dtype} | {layout} | {row_alignment(shape, layout, dtype)} | "
            f"{_widths_cell(accesses, 'load')} | {_widths_cell(accesses, 'store')} | {verdict} |"
        )
        if reason:
            sentences.append(f"- {shape} {dtype} {layout}: {reason}")
    return rows, sentences


def render(results: list[dict[str, Any]]) -> str:
    """The Markdown report of the runs in ``results`` (one per Triton version)."""
    if not results:
        return "# Kernel report\n\nNo compile-check results.\n"
    newest = results[-1]
    lines = [
        "# Kernel report: every fusedbn kernel specialisation, compiled for real GPUs on the CPU",
        "",
        "Written by `python -m fusedbn.bench.compile_check` (see its docstring): fusedbn's public "
        "functional API, forward and backward, is called on fake tensors for each case of the grid "
        "below, each kernel launch is recorded, bound by Triton's own binder and compiled with "
        "`triton.compile` for each target; widths, registers and spills are read from the SASS "
        "(cuobjdump from the Triton wheel), each tile access named after its tensor through the PTX.",
        "",
        "| Triton | fusedbn commit | date | cases | specialisations | subset |",
        "|---|---|---|---:|---:|---|",
    ]
    for report in results:
        lines.append(f"| {report['triton']} | {report['commit']} | {report['date']} | "
                     f"{len(report['cases'])} | {len(report['specialisations'])} | "
                     f"{'yes' if report['subset'] else 'no'} |")
    grid = defaultdict(set)
    for case in newest["cases"]:
        for field in ("shape", "dtype", "layout", "epilogue", "mode", "multiprocessors"):
            grid[field].add(str(case[field]))
    lines += ["", "Grid: " + "; ".join(f"{field}: {', '.join(sorted(values))}"
                                         for field, values in grid.items()) + ".", ""]
    lines += [
        "## Summary", "",
        "| Triton | target | specialisations | ok | crash | error | timeout | spills at the register "
        "limit | occupancy spills | SASS != PTX | max registers | max shared bytes | compile s (sum) "
        "| slowest s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for report in results:
        lines += _summary(report)
    problems = [line for report in results for line in _problems(report)]
    lines += ["", "## Problems", ""] + (
        problems or ["None: every specialisation compiled, none spills at its register limit."]
    )
    occupancy = [line for report in results for line in _occupancy_spills(report)]
    lines += [
        "", "## Occupancy spills", "",
        "ptxas (at its default -O3) spills a value or two of a kernel well under its register limit "
        "to keep it at a register count that fits one more block per SM (64 registers for 256 "
        "threads, say). Each kernel listed here was compiled again with ptxas -O1, which used more "
        "registers and did not spill. These few bytes stay in L1; they are listed, not gate "
        "failures (a spill at the register limit, or one that -O1 makes too, is).", "",
    ] + (occupancy or ["None."])
    lines += [
        "", f"## Kernels (Triton {newest['triton']})", "",
        "| kernel | target | specialisations | warps | registers | max shared bytes | median compile s "
        "| slowest s |",
        "|---|---|---:|---|---|---:|---:|---:|",
    ]
    lines += _kernels(newest)
    for target in newest["targets"]:
        rows, sentences = _cases(newest, str(target))
        lines += [
            "", f"## Tile access widths per case (Triton {newest['triton']}, sm_{target})", "",
            "Bits per thread of each global load and store of a tile, over every epilogue, mode, "
            "SM count and kernel of the case, named after the tensor it reaches (mask: the fused "
            "ReLU's packed mask, one bit per element). The widths are the PTX's, each traced to its "
            "pointer argument; the SASS has the same widths wherever the summary's SASS != PTX "
            "count is 0. Alignment: bytes to which the rows of the vectorised dim start (H*W "
            "elements in NCHW, C in channels_last), up to 16.", "",
            "| shape | dtype | layout | alignment | loads | stores | data accesses |",
            "|---|---|---|---:|---|---|---|",
        ]
        lines += rows
        if sentences:
            lines += ["", "Cases that stay scalar:", ""] + sentences
    return "\n".join(lines) + "\n"


def write_report(folder: Path) -> Path:
    """Render REPORT.md in ``folder`` from its triton-*.json files."""
    path = folder / REPORT_FILE
    path.write_text(render(load_results(folder)), encoding="utf-8")
    return path
