"""Tune a network with fused BatchNorm on a built-in task: coarse-to-fine Optuna search, summary and plots.

Tasks (--task): digits (scikit-learn's 8x8 digits, an MLP; the default) and mnist1d (MNIST-1D generated
locally, a 1D CNN; its test split is read only after the search, to score the chosen configuration
trained again as in its trial and retrained on all training examples). Runs the stages of the task (see
fusedbn.tuning), then prints the summary and writes summary.json and PNG plots into --out. Re-running
with the same --study-name and --storage resumes the study; several processes started with the same
ones work on it together. With several --seed values, one study per seed runs (NAME-seed<S>, plots in
OUT/seed<S>/) and a last line gives the spread of their best validation and test accuracies. Ctrl-C
stops the running trial and says what is stored; bad arguments are one line on stderr and exit code 2,
with nothing created.
"""

import argparse
import statistics
import sys
from pathlib import Path

import optuna

from fusedbn.cli import INTERRUPTED_EXIT_CODE
from fusedbn.outputs import output_folder
from fusedbn.tuning import report
from fusedbn.tuning.search import (
    PRUNERS,
    SAMPLERS,
    SearchConfig,
    TuningError,
    TuningInterrupted,
    TuningResult,
    score_chosen,
    tune,
)
from fusedbn.tuning.space import OPTIMIZERS, with_ranges, with_scales
from fusedbn.tuning.storage import MEMORY_URL, StorageError, display_url
from fusedbn.tuning.tasks import TASKS, TaskError, get_task
from fusedbn.tuning.training import HeldOutScores

DEFAULT_OUT = "runs/tune"
BY_TASK = ("trials", "stages", "tiers")  # SearchConfig settings whose default depends on the task
PASSED_ON = (*BY_TASK, "sampler", "train_seed", "pruner", "keep_top", "margin", "grace_period_s", "threads")


def _by_task(option: str) -> str:
    """The help text's note on a default that depends on the task."""
    defaults = ", ".join(f"{getattr(task, option)} for {name}" for name, task in TASKS.items())
    return f"(default: {defaults})"


def data_seed(text: str | None) -> int | None:
    """The --data-seed value as an integer (None when not given); raises TaskError naming a bad one."""
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        raise TaskError(f"--data-seed must be an integer, got {text!r}") from None


def _range(text: str) -> tuple[str, tuple[float, float]]:
    """Parse NAME=LOW:HIGH."""
    name, _, bounds = text.partition("=")
    try:
        low, high = bounds.split(":")
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
    add_task_arguments(parser)
    parser.add_argument(
        "--study-name",
        help="study name; stages are NAME-stage<k> (default: fusedbn-TASK, fusedbn-TASK-data<S> for a "
        "data seed S other than the task's own)",
    )
    parser.add_argument("--trials", type=int, help=f"finished trials per stage {_by_task('trials')}")
    parser.add_argument("--stages", type=int, help=f"coarse-to-fine stages {_by_task('stages')}")
    parser.add_argument(
        "--tiers",
        type=int,
        choices=range(1, 5),
        help=f"tune priority tiers 1..TIERS; the rest keep their defaults {_by_task('tiers')}",
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
        default=SearchConfig.threads,
        help="torch CPU threads of this process (default: %(default)s: these small networks gain little "
        "from more, and on busy cores more are far slower); several workers on one machine: keep workers "
        "x threads <= cores",
    )
    parser.add_argument(
        "--optimizer", choices=OPTIMIZERS, help=f"sgd (with momentum) or adam {_by_task('optimizer')}"
    )
    parser.add_argument("--epochs", type=int, help=f"training epochs per trial {_by_task('epochs')}")
    parser.add_argument(
        "--no-batchnorm", action="store_true", help="build the network without BatchNorm layers"
    )
    parser.add_argument(
        "--keep-top",
        type=float,
        default=SearchConfig.keep_top,
        help="fraction of a stage's best trials the next stage narrows around (default: %(default)s)",
    )
    parser.add_argument(
        "--margin",
        type=float,
        default=SearchConfig.margin,
        help="widening of the narrowed bounds, per side, as a fraction of the previous width "
        "(default: %(default)s)",
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
        dest="grace_period_s",
        metavar="SECONDS",
        type=int,
        default=SearchConfig.grace_period_s,
        help="whole seconds without heartbeat after which a running trial counts as lost "
        "(default: %(default)s)",
    )
    parser.add_argument("--out", default=DEFAULT_OUT, help="folder for summary.json and plots (%(default)s)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def add_task_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare --task and --data-seed (shared with ``fusedbn science``)."""
    parser.add_argument(
        "--task", default="digits", help=f"the task to tune: {', '.join(TASKS)} (default: digits)"
    )
    parser.add_argument(
        "--data-seed",
        metavar="S",
        help="seed of a generated dataset (mnist1d: the generator's seed, default 42, the paper's data)",
    )


def run(args: argparse.Namespace) -> int:
    """Run ``fusedbn tune``; returns the exit code: 2 for bad arguments or storage, 1 if the study fails,
    130 when Ctrl-C stopped it."""
    out = Path(args.out)
    several = len(args.seed) > 1
    storage = args.storage or f"sqlite:///{out / 'study.db'}"
    try:
        definition = get_task(args.task)
        seed_of_data = data_seed(args.data_seed)
        optimizer = args.optimizer or definition.optimizer
        space = with_ranges(definition.space(optimizer), dict(args.range))
        space = with_scales(space, dict.fromkeys(args.linear, "linear"))
        definition.check_ranges(space)
        task = definition.build(
            epochs=args.epochs,
            optimizer=optimizer,
            device=args.device,
            batchnorm=not args.no_batchnorm,
            data_seed=seed_of_data,
        )
        name = definition.study_name(seed_of_data) if args.study_name is None else args.study_name
        settings = {key: getattr(args, key) for key in PASSED_ON}
        settings |= {key: getattr(definition, key) for key in BY_TASK if settings[key] is None}
        settings |= {"storage": storage, "progress": not args.no_progress}
        configs = [
            SearchConfig(study_name=f"{name}-seed{seed}" if several else name, seed=seed, **settings)
            for seed in args.seed
        ]
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        results, held_outs = [], []
        with output_folder(out):
            for config in configs:
                results.append(tune(task, space, config))
                held_outs.append(score_chosen(task, results[-1]))
                print(report(results[-1], out / f"seed{config.seed}" if several else out, held_outs[-1]))
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
        print(_spread(results, held_outs))
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


def _spread(results: list[TuningResult], held_outs: list[HeldOutScores | None]) -> str:
    """One line: mean and standard deviation over seeds of the best validation and test accuracies."""
    best = [trial for _, trial in filter(None, (result.best() for result in results))]
    held = [scores for scores in held_outs if scores is not None]
    parts = []
    for label, values in (
        ("best validation", [trial.value for trial in best]),
        ("its test", [t.user_attrs["test_accuracy"] for t in best if "test_accuracy" in t.user_attrs]),
        ("its test as trained in its trial", [scores.test_accuracy for scores in held]),
        ("its test retrained on all training examples", [scores.test_accuracy_all for scores in held]),
    ):
        if len(values) >= 2:
            parts.append(f"{label} {statistics.mean(values):.4f} +- {statistics.stdev(values):.4f}")
    return f"Over {len(results)} seeds: " + ("; ".join(parts) or "too few complete studies")
