"""Test the classic tuning advice on the digits task: paired experiments, statistics and verdicts.

Runs each experiment of fusedbn.science (random vs grid, coarse-to-fine, log vs linear scales, with vs
without BatchNorm, BatchNorm's noise vs batch size, importances for SGD and Adam, test-time statistics)
and writes science.json, REPORT.md and the figures into --out once all have run. The full preset took
8.7 minutes on 2 idle CPU cores (17 on busy ones); --quick takes about a minute. --replot draws the
figures again from OUT/science.json without running anything.
"""

import argparse
import shlex
import sys
import time

import optuna

from fusedbn.cli import INTERRUPTED_EXIT_CODE
from fusedbn.outputs import OutputFolderError
from fusedbn.science import PRESETS, replot_science, run_science
from fusedbn.science.report import ReportFileError

DEFAULT_OUT = "runs/science"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the options of ``fusedbn science`` on ``parser``."""
    parser.add_argument("--preset", choices=PRESETS, default="full", help="how much to run (default: full)")
    parser.add_argument(
        "--quick", dest="preset", action="store_const", const="quick", help="the same as --preset quick"
    )
    parser.add_argument("--out", default=DEFAULT_OUT, help=f"folder for the report ({DEFAULT_OUT})")
    parser.add_argument(
        "--replot",
        action="store_true",
        help="only draw the figures again from OUT/science.json (no experiment runs)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress lines on stderr")


def run(args: argparse.Namespace) -> int:
    """Run ``fusedbn science``; returns the exit code: 2 for a bad argument, 130 after Ctrl-C."""
    start = time.perf_counter()

    def progress(message: str) -> None:
        if not args.no_progress:
            print(f"[{time.perf_counter() - start:6.0f} s] {message}", file=sys.stderr, flush=True)

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    command = shlex.join(["fusedbn", "science", "--preset", args.preset, "--out", args.out])
    try:
        if args.replot:
            paths = replot_science(args.out)
            print(f"Drew {', '.join(path.name for path in paths)} in {args.out}/ from science.json")
            return 0
        findings = run_science(args.preset, args.out, command, progress)
    except (OutputFolderError, ReportFileError) as error:
        print(f"fusedbn science: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "fusedbn science: interrupted. The experiments run in memory and write their report only "
            f"at the end, so nothing was written to {args.out}/ and the same command starts over.",
            file=sys.stderr,
        )
        return INTERRUPTED_EXIT_CODE
    for finding in findings:
        print(f"{finding.verdict:>12}  {finding.title}")
    print(f"Wrote REPORT.md, science.json and figures to {args.out}/")
    return 0
