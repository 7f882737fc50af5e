"""Tune an MLP with fused BatchNorm on scikit-learn's digits: coarse-to-fine Optuna search, summary and plots.

Runs the stages of the built-in digits task (see fusedbn.tuning), then prints the summary and writes
summary.json and PNG plots into --out. Re-running with the same --study-name and --storage resumes the
study; several processes started with the same ones work on it together. With several --seed values,
one study per seed runs (NAME-seed<S>, plots in OUT/seed<S>/) and a last line gives the spread of their
best validation and test accuracies. Ctrl-C stops the running trial and says what is stored; bad
arguments are one line on stderr and exit code 2, with nothing created.
"""

import argparse
import statistics
import sys
from pathlib import Path

import optuna

from fusedbn.cli import INTERRUPTED_EXIT_CODE
from fusedbn.outputs import output_folder
from fusedbn.tuning import report
from fusedbn.tuning.digits import digits_task
from fusedbn.tuning.search import (
    PRUNERS,
    SAMPLERS,
    SearchConfig,
    TuningError,
    TuningInterrupted,
    TuningResult,
    tune,
)
from fusedbn.tuning.space import OPTIMIZERS, default_space, with_ranges, with_scales
from fusedbn.tuning.storage import MEMORY_URL, StorageError, display_url
from fusedbn.tuning.training import torch_threads

DEFAULT_OUT = "runs/tune"
DEFAULT_THREADS = 1


def _range(text: str) -> tuple[str, tuple[float, float]]:
    """Parse NAME=LOW:HIGH."""
    name, sep, bounds = text.partition("=")
    low, sep2, high = bounds.partition(":")
    try:
        if not (sep and sep2):
            raise ValueError
        return name, (float(low), float(high))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected NAME=LOW:HIGH, got {text!r}") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the options of ``fusedbn tune`` on ``parser``."""
    parser.add_argument(
        "--storage",
        help="Optuna storage URL: sqlite:///file.db, journal:///file.log, "
        f"postgresql+psycopg2://user:pw@host/db, or {MEMORY_URL} for a throwaway study "
        "(default: sqlite:///OUT/study.db)",
    )
    parser.add_argument("--study-name", default="fusedbn-digits", help="study name; stages are NAME-stage<k>")
    parser.add_argument("--trials", type=int, default=10, help="finished trials per stage (default: 10)")
    parser.add_argument("--stages", type=int, default=3, help="coarse-to-fine stages (default: 3)")
    parser.add_argument(
        "--tiers",
        type=int,
        default=2,
        choices=range(1, 5),
        help="tune priority tiers 1..TIERS; the rest keep their defaults (default: 2)",
    )
    parser.add_argument("--sampler", choices=SAMPLERS, default="random", help="default: random")
    parser.add_argument("--pruner", choices=PRUNERS, default="median", help="default: median")
    parser.add_argument(
        "--seed", type=int, nargs="+", default=[0], help="sampling seed(s); one study per seed (default: 0)"
    )
    parser.add_argument(
        "--train-seed",
        type=int,
        help="seed of the models' initial weights and batch order, the same for every sampling seed "
        "(default: each study's sampling seed)",
    )
    parser.add_argument("--device", default="cpu", help="torch device to train on: cpu, cuda, cuda:1...")
    parser.add_argument(
        "--threads",
        type=int,
        default=DEFAULT_THREADS,
        help="torch CPU threads of this process (default: 1: these small networks gain little from "
        "more, and on busy cores more are far slower); several workers on one machine: keep workers x "
        "threads <= cores",
    )
    parser.add_argument("--optimizer", choices=OPTIMIZERS, default="sgd", help="default: sgd (with momentum)")
    parser.add_argument("--epochs", type=int, default=8, help="training epochs per trial (default: 8)")
    parser.add_argument(
        "--no-batchnorm", action="store_true", help="build the network without BatchNorm layers"
    )
    parser.add_argument(
        "--keep-top",
        type=float,
        default=0.25,
        help="fraction of a stage's best trials the next stage narrows around (default: 0.25)",
    )
    parser.add_argument(
        "--margin",
        type=float,
        default=0.1,
        help="widening of the narrowed bounds, per side, as a fraction of the previous width (default: 0.1)",
    )
    parser.add_argument(
        "--range",
        type=_range,
        action="append",
        default=[],
        metavar="NAME=LOW:HIGH",
        help="replace a parameter's range, e.g. learning_rate=1e-3:0.1 (repeatable)",
    )
    parser.add_argument(
        "--linear",
        action="append",
        default=[],
        metavar="NAME",
        help="sample this parameter on a linear scale instead of its own, e.g. learning_rate (repeatable)",
    )
    parser.add_argument(
        "--grace-period",
        type=float,
        default=30.0,
        help="seconds without heartbeat after which a running trial counts as lost (default: 30)",
    )
    parser.add_argument(
        "--out", default=DEFAULT_OUT, help=f"folder for summary.json and plots ({DEFAULT_OUT})"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """Run ``fusedbn tune``; returns the exit code: 2 for bad arguments or storage, 1 if the study fails,
    130 when Ctrl-C stopped it."""
    out = Path(args.out)
    several = len(args.seed) > 1
    storage = args.storage or f"sqlite:///{out / 'study.db'}"
    try:
        space = with_ranges(default_space(args.optimizer), dict(args.range))
        space = with_scales(space, dict.fromkeys(args.linear, "linear"))
        task = digits_task(
            epochs=args.epochs,
            optimizer=args.optimizer,
            device=args.device,
            batchnorm=not args.no_batchnorm,
        )
        configs = [
            SearchConfig(
                study_name=f"{args.study_name}-seed{seed}" if several else args.study_name,
                storage=storage,
                trials=args.trials,
                stages=args.stages,
                tiers=args.tiers,
                sampler=args.sampler,
                seed=seed,
                train_seed=args.train_seed,
                pruner=args.pruner,
                keep_top=args.keep_top,
                margin=args.margin,
                grace_period_s=args.grace_period,
                progress=not args.no_progress,
            )
            for seed in args.seed
        ]
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        results = []
        with torch_threads(args.threads), output_folder(out):
            for config in configs:
                results.append(tune(task, space, config))
                print(report(results[-1], out / f"seed{config.seed}" if several else out))
    except (ValueError, StorageError) as error:
        print(f"fusedbn tune: error: {error}", file=sys.stderr)
        return 2
    except TuningError as error:
        print(f"fusedbn tune: study stopped: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as interrupt:
        print(_interrupted(interrupt, storage), file=sys.stderr)
        return INTERRUPTED_EXIT_CODE
    if several:
        print(_spread(results))
    return 0


def _interrupted(interrupt: KeyboardInterrupt, storage: str) -> str:
    """What Ctrl-C left behind, and how to go on."""
    if storage == MEMORY_URL:
        return "fusedbn tune: interrupted. Nothing is stored (--storage memory): a new run starts over."
    lines = ["fusedbn tune: interrupted. A trial that was running is marked failed and runs again on resume."]
    if isinstance(interrupt, TuningInterrupted):
        per_stage = ", ".join(f"{name}: {count}" for name, count in interrupt.finished.items())
        lines.append(
            f"{sum(interrupt.finished.values())} finished trials are stored in {interrupt.storage} "
            f"({per_stage})."
        )
    else:
        lines.append(f"Finished trials are stored in {display_url(storage)}.")
    lines.append("Run the same command again to resume.")
    return "\n".join(lines)


def _spread(results: list[TuningResult]) -> str:
    """One line: mean and standard deviation over seeds of the best validation and test accuracies."""
    best = [result.best() for result in results]
    parts = []
    for label, values in (
        ("best validation", [trial.value for _, trial in filter(None, best)]),
        ("its test", [trial.user_attrs["test_accuracy"] for _, trial in filter(None, best)]),
    ):
        if len(values) >= 2:
            parts.append(f"{label} {statistics.mean(values):.4f} +- {statistics.stdev(values):.4f}")
    return f"Over {len(results)} seeds: " + ("; ".join(parts) or "too few complete studies")
