"""Benchmark fusedbn's BatchNorm against torch eager and torch.compile, and against the copy bandwidth.

Every case (shape x dtype x layout x mode x provider) is timed after a warm-up with triton.testing.do_bench
(L2 flushed before each repetition) on random, offset data, and its output compared with eager's. Its minimal
bytes over its median time is its effective bandwidth, reported as a share of the copy bandwidth measured in
the same run. Providers: ``fusedbn`` (its kernels), ``auto`` (backend "auto", as users get it), ``eager`` and
``compile``. Rows are appended to OUT/results.csv as they are measured; the table, the speed targets and any
failures go to stdout and OUT/summary.txt, with plots OUT/speedup.png and OUT/bandwidth.png; --profile-kernels
then profiles each provider's fwd+bwd kernels on the ResNet-50 shapes into OUT/kernels.csv; --calibrate fits
the cost model (fusedbn.costs) to the run's rows into OUT/cost_table.json. --quick is the GPU run's subset;
--smoke checks the harness on the CPU in seconds (tiny shapes, no speed); --report re-renders a result file.
"""

import argparse
import dataclasses
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from fusedbn import costs
from fusedbn.bench.cases import (
    FUSEDBN,
    SHAPE_GROUPS,
    SHAPES,
    parse_dtypes,
    parse_layouts,
    parse_modes,
    parse_providers,
    parse_shapes,
    positive,
)
from fusedbn.bench.core import TRITON
from fusedbn.bench.metrics import mismatches
from fusedbn.bench.plots import write_plots
from fusedbn.bench.profiling import KERNELS_FILE, format_kernel_summary, profile_cases, write_kernel_rows
from fusedbn.bench.report import format_backend, format_header, format_problems, format_table, format_targets
from fusedbn.bench.results import Result, ResultFile, Run, read_results
from fusedbn.bench.runner import Benchmark, Unit, run_benchmark
from fusedbn.bench.timing import TimingSettings, copy_bandwidth
from fusedbn.cli import OneLineErrorParser
from fusedbn.outputs import OutputFolderError, output_folder
from fusedbn.records import run_record

RESULTS_FILE = "results.csv"
SUMMARY_FILE = "summary.txt"
COST_TABLE_FILE = "cost_table.json"
ALL_PROVIDERS = "fusedbn,auto,eager,flag_gems,compile"


@dataclass(frozen=True)
class Preset:
    """Defaults of one kind of run; every one can be overridden by its option."""

    shapes: str
    dtypes: str
    providers: str
    compile_shapes: str | None  # None: the same as shapes
    compile_modes: str | None  # None: the same as modes
    settings: TimingSettings
    copy_mib: int
    time_budget: float
    compile_budget: float
    profile_budget: float  # seconds of per-kernel profiling after the timed cases; 0: none
    layouts: str = "nchw,channels_last"
    modes: str = "fwd,bwd,fwdbwd,eval"


PRESETS = {
    "full": Preset("all", "float32,float16,bfloat16", ALL_PROVIDERS, None, None,
                   TimingSettings(warmup_ms=25, rep_ms=100), 1024, math.inf, math.inf, 120.0),
    "quick": Preset("all", "float16,bfloat16", ALL_PROVIDERS, "resnet50", "fwd,bwd,fwdbwd",
                    TimingSettings(warmup_ms=10, rep_ms=40), 1024, 240.0, 150.0, 30.0),
    "smoke": Preset("smoke", "float32,float16,bfloat16", "fusedbn,auto,eager,flag_gems", None, None,
                    TimingSettings(warmup_calls=1, cpu_repeats=3), 4, math.inf, math.inf, 0.0),
}  # fmt: skip


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``fusedbn bench`` to ``parser``."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    kind = parser.add_mutually_exclusive_group()
    kind.add_argument("--smoke", action="store_true",
                      help="CPU harness check in seconds: tiny shapes, no timing claims")
    kind.add_argument("--quick", action="store_true", help="the GPU run's subset (about 4 minutes, H100)")
    kind.add_argument("--report", type=Path, metavar="CSV",
                      help="render the table, targets and plots of a result file")
    kind.add_argument("--list", action="store_true", help="list the shape groups and shapes, then exit")
    add = parser.add_argument
    add("--run-id", help="with --report: the run to render (default: the file's last run)")
    add("--out", type=Path, default=Path("runs/bench"),
        help="folder for results.csv, summary.txt and plots (default: runs/bench)")
    add("--shapes", type=parse_shapes,
        help="comma-separated groups (resnet50, extra, smoke, all) or NxCx... shapes "
        "(default: all; smoke: smoke)")
    add("--dtypes", type=parse_dtypes,
        help="float32, float16, bfloat16 (or fp32, fp16, bf16) (default: all three; quick: float16,bfloat16)")
    add("--layouts", type=parse_layouts, help="nchw, channels_last (default: both)")
    add("--modes", type=parse_modes,
        help="fwd (training forward), bwd (its backward), fwdbwd, eval (default: all four)")
    add("--providers", type=parse_providers,
        help="fusedbn (its kernels, backend='triton'), auto (fusedbn as users get it, backend='auto'), eager "
        "(torch's nn.BatchNorm), flag_gems (FlagGems' Triton batch_norm, skipped where it does not import), "
        "compile (torch.compile of torch's) (default: all five; smoke: fusedbn,auto,eager,flag_gems)")
    add("--compile-shapes", type=parse_shapes,
        help="shapes torch.compile is timed on, like --shapes (default: as --shapes; quick: resnet50)")
    add("--compile-modes", type=parse_modes,
        help="modes torch.compile is timed in (default: as --modes; quick: fwd,bwd,fwdbwd)")
    add("--compile-mode", choices=("default", "max-autotune-no-cudagraphs"), default="default",
        help="torch.compile's mode (default: default)")
    add("--warmup-ms", type=positive(int), help="do_bench warm-up per case in ms (default: 25; quick: 10)")
    add("--rep-ms", type=positive(int),
        help="do_bench measuring time per case in ms (default: 100; quick: 40)")
    add("--copy-mib", type=positive(int), help="size of the copy-bandwidth buffer in MiB (default: 1024)")
    add("--time-budget", type=positive(float), metavar="SECONDS",
        help="stop measuring after this long and record the rest as skipped (default: none; quick: 240)")
    add("--profile-kernels", type=float, metavar="SECONDS",
        help="after the timed cases, profile each provider's fwd+bwd kernels on the ResNet-50 shapes for "
        "at most this long, into kernels.csv and the summary; 0: not at all (default: 120; quick: 30; "
        "smoke: 0)")
    add("--calibrate", action="store_true",
        help=f"also fit fusedbn's cost model to the run's rows (with --report: the file's) and write "
        f"OUT/{COST_TABLE_FILE}, for FUSEDBN_COST_TABLE; it needs fusedbn's, eager's and compile's rows "
        "in fwd, fwdbwd and eval, measured on a GPU")
    add("--compile-budget", type=positive(float), metavar="SECONDS",
        help="skip torch.compile once its first calls (compiling) took this long (default: none; "
        "quick: 150)")


def _preset_name(args: argparse.Namespace) -> str:
    return "smoke" if args.smoke else "quick" if args.quick else "full"


def build_benchmark(args: argparse.Namespace) -> Benchmark:
    """The Benchmark that parsed options ask for: each option given, else its preset's default."""
    preset = PRESETS[_preset_name(args)]
    compile_shapes = args.compile_shapes or (preset.compile_shapes and parse_shapes(preset.compile_shapes))
    return Benchmark(
        device=torch.device("cpu" if args.smoke else "cuda"),
        shapes=args.shapes or parse_shapes(preset.shapes),
        dtypes=args.dtypes or parse_dtypes(preset.dtypes),
        layouts=args.layouts or parse_layouts(preset.layouts),
        modes=args.modes or parse_modes(preset.modes),
        providers=args.providers or parse_providers(preset.providers),
        compile_shapes=None if compile_shapes is None else {s.name for s in compile_shapes},
        compile_modes=args.compile_modes or (preset.compile_modes and parse_modes(preset.compile_modes)),
        compile_mode=args.compile_mode,
        settings=dataclasses.replace(preset.settings, warmup_ms=args.warmup_ms or preset.settings.warmup_ms,
                                     rep_ms=args.rep_ms or preset.settings.rep_ms),
        copy_bytes=(args.copy_mib or preset.copy_mib) << 20,
        time_budget_s=args.time_budget or preset.time_budget,
        compile_budget_s=args.compile_budget or preset.compile_budget,
    )


def _list_shapes() -> str:
    lines = [f"{group}: {', '.join(s.name for s in parse_shapes(group))}" for group in SHAPE_GROUPS]
    lines.append("ResNet-50 BatchNorm layers per shape (batch 64, 224x224):")
    lines += [f"  {s.name:<16} {s.layers}" for s in SHAPES if s.layers]
    return "\n".join(lines)


def _finish(run: Run, results: list[Result], out: Path, calibrate_from: Path | None) -> None:
    """Print the report of one run and save it, with its plots, in ``out``; with ``calibrate_from`` (the
    result file), its cost table too."""
    parts = (format_header(run) + "\n" + format_backend(results), format_table(results),
             format_targets(results), format_problems(results))  # fmt: skip
    text = "\n\n".join(part for part in parts if part)
    (out / SUMMARY_FILE).write_text(text + "\n")
    paths = write_plots(results, out, run.record.device)
    print(text)
    print(f"\nwrote {out / SUMMARY_FILE}, {', '.join(str(p) for p in paths)}", flush=True)
    if calibrate_from is not None:
        _write_cost_table(run, results, out, calibrate_from)


def _write_cost_table(run: Run, results: list[Result], out: Path, where: Path) -> None:
    """Fit the cost model to a run's results and write it to OUT/cost_table.json.

    Raises ValueError (costs.CostTableError) when the rows cannot make a table: fusedbn's rows did not run
    its compiled kernels, or a provider or mode the table needs is missing.
    """
    kernels = {r.backend for r in results if r.provider == FUSEDBN and r.ok}
    if kernels != {TRITON}:
        ran = ", ".join(sorted(kernels)) or "nothing"
        raise costs.CostTableError(f"--calibrate: fusedbn's rows ran {ran}, not its compiled kernels: "
                                   "calibrate on a GPU")
    record = dataclasses.asdict(run.record)
    rows = [{**record, "copy_gbps": run.copy_gbps, **dataclasses.asdict(r)} for r in results]
    table = costs.table_from_results(rows, f"measured: {costs.describe_run(rows[0], str(where))}")
    path = out / COST_TABLE_FILE
    path.write_text(table.to_json())
    print(f"wrote {path}: use it with FUSEDBN_COST_TABLE={path} (or fusedbn.use_cost_table)", flush=True)


def _profile_kernels(bench: Benchmark, budget_s: float, out: Path) -> None:
    """Profile the kernels of the run's ResNet-50 cases into ``out``; add their table to the summary."""
    rows, left_out = profile_cases(bench.shapes, bench.dtypes, bench.layouts, bench.device, budget_s)
    write_kernel_rows(rows, out / KERNELS_FILE)
    text = format_kernel_summary(rows, left_out)
    if text:
        with (out / SUMMARY_FILE).open("a") as summary:
            summary.write("\n" + text + "\n")
        print("\n" + text)
    print(f"wrote {out / KERNELS_FILE} ({len(rows)} kernel rows)", flush=True)


def _measure(bench: Benchmark, copy_gbps: float, result_file: ResultFile) -> list[Result]:
    """Run ``bench``, appending each result to ``result_file`` and printing progress unit by unit."""
    units = bench.units()
    print(f"{bench.case_count()} cases in {len(units)} units; results go to {result_file.path}", flush=True)
    start = time.perf_counter()

    def progress(index: int, unit: Unit, unit_results: list[Result]) -> None:
        failed = sum(r.status.startswith("error") for r in unit_results)
        print(f"[{index + 1}/{len(units)}] {unit.shape.name} {unit.dtype} {unit.layout} "
              f"{'+'.join(unit.providers)}: {sum(r.ok for r in unit_results)}/{len(unit_results)} measured"
              f"{f', {failed} FAILED' if failed else ''} ({time.perf_counter() - start:.0f} s)", flush=True)

    results = []
    for result in run_benchmark(bench, copy_gbps, progress):
        result_file.append(result)
        results.append(result)
    return results


def run(args: argparse.Namespace) -> int:
    """Run ``fusedbn bench``; returns 0 when every case was measured (or skipped by a budget) and matched
    eager's output, 1 when a case failed or differed, 2 when the run could not start."""
    if args.list:
        print(_list_shapes())
        return 0
    try:
        return _render(args) if args.report is not None else _benchmark(args)
    except (OutputFolderError, OSError, ValueError) as error:
        print(f"fusedbn bench: error: {error}", file=sys.stderr)
        return 2


def _render(args: argparse.Namespace) -> int:
    """``--report``: the table, targets and plots of a result file, into ``--out``."""
    run, results = read_results(args.report, args.run_id)
    with output_folder(args.out):
        _finish(run, results, args.out, args.report if args.calibrate else None)
    return 0


def _benchmark(args: argparse.Namespace) -> int:
    """Measure what the options ask for, into ``--out``; see :func:`run` for the exit code."""
    bench = build_benchmark(args)
    if bench.device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("no CUDA device; the timed benchmark needs a GPU (--smoke checks the harness on the "
                         "CPU, --report renders a result file)")
    with output_folder(args.out):
        copy_gbps = copy_bandwidth(bench.device, bench.copy_bytes, bench.settings)
        run = Run(run_record(bench.device), copy_gbps)
        result_file = ResultFile(args.out / RESULTS_FILE, run)
        print(format_header(run), flush=True)
        results = _measure(bench, copy_gbps, result_file)
        print()
        _finish(run, results, args.out, args.out / RESULTS_FILE if args.calibrate else None)
        profile_budget = PRESETS[_preset_name(args)].profile_budget
        if args.profile_kernels is not None:
            profile_budget = args.profile_kernels
        if profile_budget > 0:
            _profile_kernels(bench, profile_budget, args.out)
    failed = any(r.status.startswith("error") for r in results) or mismatches(results)
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    """``python -m fusedbn.bench.cli``: the same as ``fusedbn bench``, without the other subcommands."""
    parser = OneLineErrorParser(prog="fusedbn bench", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
