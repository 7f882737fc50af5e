"""Test the classic tuning advice on a built-in task: paired experiments, statistics and verdicts.

Runs each experiment of fusedbn.science (random vs grid, coarse-to-fine, log vs linear scales, with vs without
BatchNorm, BatchNorm's noise vs batch size, importances for SGD and Adam, test-time statistics; on mnist1d
also the MNIST-1D paper's table and whether a bias before BatchNorm is redundant) and writes science.json,
REPORT.md and the figures into --out once all have run (docs/science.md gives the run times). --compare puts
the verdicts of another task's science.json beside this run's; --replot draws the figures again from
OUT/science.json without running anything.
"""

import argparse
import shlex
import sys
import time

import optuna

from fusedbn.cli import INTERRUPTED_EXIT_CODE
from fusedbn.outputs import OutputFolderError
from fusedbn.science import PRESETS, Progress, ScienceArgumentError, quiet, replot_science, run_science
from fusedbn.science.report import ReportFileError
from fusedbn.tuning.cli import add_task_arguments, data_seed
from fusedbn.tuning.tasks import TaskError

DEFAULT_OUT = "runs/science"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the options of ``fusedbn science`` on ``parser``."""
    parser.add_argument("--preset", choices=PRESETS, default="full", help="how much to run (default: full)")
    parser.add_argument("--quick", dest="preset", action="store_const", const="quick",
                        help="the same as --preset quick")  # fmt: skip
    add_task_arguments(parser)
    parser.add_argument("--compare", metavar="SCIENCE_JSON",
                        help="another task's science.json (e.g. results/science/science.json), whose "
                        "verdicts go beside this run's")  # fmt: skip
    parser.add_argument("--workers", type=int,
                        help="processes running groups of experiments in parallel, one torch thread each; "
                        "the numbers do not depend on it (default: 1 for digits, 2 for mnist1d)")  # fmt: skip
    parser.add_argument("--out", default=DEFAULT_OUT, help=f"folder for the report ({DEFAULT_OUT})")
    replot = "only draw the figures again from OUT/science.json (no experiment runs)"
    parser.add_argument("--replot", action="store_true", help=replot)
    parser.add_argument("--no-progress", action="store_true", help="no progress lines on stderr")


def run(args: argparse.Namespace) -> int:
    """Run ``fusedbn science``; returns the exit code: 2 for a bad argument (nothing is written then),
    130 after Ctrl-C."""
    progress = quiet if args.no_progress else Progress(time.time())
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    options = {"--task": None if args.task == "digits" else args.task, "--data-seed": args.data_seed,
               "--compare": args.compare, "--workers": args.workers}
    given = [word for option, value in options.items() if value is not None for word in (option, str(value))]
    command = shlex.join(["fusedbn", "science", "--preset", args.preset, *given, "--out", args.out])
    try:
        if args.replot:
            paths = replot_science(args.out)
            print(f"Drew {', '.join(path.name for path in paths)} in {args.out}/ from science.json")
            return 0
        findings = run_science(args.preset, args.out, command, progress, task=args.task,
                               data_seed=data_seed(args.data_seed), compare=args.compare,
                               workers=args.workers)  # fmt: skip
    except (ScienceArgumentError, TaskError, OutputFolderError, ReportFileError) as error:
        print(f"fusedbn science: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fusedbn science: interrupted. The experiments run in memory and write their report only at "
              f"the end, so nothing was written to {args.out}/ and the same command starts over.",
              file=sys.stderr)  # fmt: skip
        return INTERRUPTED_EXIT_CODE
    for finding in findings:
        print(f"{finding.verdict:>12}  {finding.title}")
    print(f"Wrote REPORT.md, science.json and figures to {args.out}/")
    return 0
