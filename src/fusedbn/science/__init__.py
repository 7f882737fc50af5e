"""``fusedbn science``: paired experiments that test the classic tuning advice on a built-in task.

Each experiment (:mod:`fusedbn.science.experiments`, one function each) states a claim, runs paired
arms over several seeds through the tuning harness, tests the differences (:mod:`fusedbn.science.stats`)
and gives a verdict: held, not shown or contradicted. :func:`run_science` runs a task's experiments and
writes ``science.json``, ``REPORT.md`` and one PNG figure per experiment.

With several workers, the task's groups of experiments (experiments that share searches stay in one
group) run in parallel processes, one torch thread each; every number is the same as in one process.
"""

import os
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import optuna
import torch

from fusedbn.science.experiments import (
    PRESETS,
    SCIENCE_TASKS,
    Context,
    Experiment,
    Finding,
    Preset,
    ScienceTask,
)
from fusedbn.science.report import RunInfo, read_comparison, write_report
from fusedbn.tuning.tasks import get_task


def quiet(message: str) -> None:
    """A progress callback that shows nothing."""


@dataclass(frozen=True)
class Progress:
    """A progress callback that prints ``[   12 s] message`` on stderr, counting seconds from ``start``
    (a ``time.time()``, so that worker processes count from the same instant)."""

    start: float

    def __call__(self, message: str) -> None:
        print(f"[{time.time() - self.start:6.0f} s] {message}", file=sys.stderr, flush=True)


def run_science(
    preset: str,
    out: str | Path,
    command: str,
    progress: Callable[[str], None] = quiet,
    task: str = "digits",
    data_seed: int | None = None,
    compare: str | Path | None = None,
    workers: int | None = None,
) -> list[Finding]:
    """Run the experiments of ``task`` with the named preset ("full", "quick", "smoke") in ``workers``
    processes (default: the task's); write the report to ``out``, with the verdicts of another task's
    ``science.json`` (``compare``) beside them. ``progress`` must pickle when ``workers`` > 1.

    Everything is checked before ``out`` is created: an unknown task or preset, a data seed the task
    cannot take, a missing package, an unreadable ``compare`` file, fewer than one worker raise ValueError.
    """
    science = SCIENCE_TASKS[get_task(task).name]
    if preset not in science.presets:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(science.presets)}")
    workers = science.workers if workers is None else workers
    if workers < 1:
        raise ValueError(f"--workers must be >= 1, got {workers}")
    other = None if compare is None else read_comparison(compare)
    out = Path(out)
    chosen = science.presets[preset]
    context = Context(preset=chosen, figure_dir=out, progress=progress, science=science, data_seed=data_seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: one thread is fastest, and the results do not depend on it
    try:
        context.task()  # builds the data first: a bad data seed or a missing package stops here
        out.mkdir(parents=True, exist_ok=True)
        load_before, start, cpu_start = os.getloadavg()[0], time.perf_counter(), _cpu_seconds()
        processes = min(workers, len(science.groups))
        if processes > 1:
            findings = _in_parallel(science, chosen, out, data_seed, progress, processes)
        else:
            findings = _run_experiments(context, science.experiments)
        run = RunInfo(
            task=task,
            wall_seconds=time.perf_counter() - start,
            cpu_seconds=_cpu_seconds() - cpu_start,
            torch_threads=torch.get_num_threads(),
            load_before=load_before,
            load_after=os.getloadavg()[0],
            workers=processes,
        )
        write_report(findings, chosen, command, run, out, other)
    finally:
        torch.set_num_threads(threads)
    return findings


def _cpu_seconds() -> float:
    """CPU seconds of this process and of its finished worker processes."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


def _run_experiments(context: Context, experiments: Sequence[Experiment]) -> list[Finding]:
    findings = []
    for experiment in experiments:
        began = time.perf_counter()
        findings.append(experiment(context))
        finding = findings[-1]
        context.progress(f"{finding.title}: {finding.verdict} ({time.perf_counter() - began:.0f} s)")
    return findings


def _run_group(
    science: ScienceTask,
    preset: Preset,
    out: Path,
    data_seed: int | None,
    progress: Callable[[str], None],
    experiments: Sequence[Experiment],
) -> list[Finding]:
    """One worker process: the ``experiments`` of one group, in order, on one torch thread."""
    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    context = Context(preset=preset, figure_dir=out, progress=progress, science=science, data_seed=data_seed)
    return _run_experiments(context, experiments)


def _in_parallel(
    science: ScienceTask,
    preset: Preset,
    out: Path,
    data_seed: int | None,
    progress: Callable[[str], None],
    processes: int,
) -> list[Finding]:
    """The task's groups of experiments in ``processes`` spawned processes; the findings in the task's
    order of experiments."""
    with ProcessPoolExecutor(max_workers=processes, mp_context=get_context("spawn")) as pool:
        arguments = (science, preset, out, data_seed, progress)
        futures = [pool.submit(_run_group, *arguments, group) for group in science.groups]
        found = {
            experiment: finding
            for group, future in zip(science.groups, futures, strict=True)
            for experiment, finding in zip(group, future.result(), strict=True)
        }
    return [found[experiment] for experiment in science.experiments]


__all__ = ["PRESETS", "SCIENCE_TASKS", "Progress", "quiet", "run_science"]
