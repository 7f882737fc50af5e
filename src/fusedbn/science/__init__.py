"""``fusedbn science``: paired experiments that test the classic tuning advice on a built-in task. Each
experiment (:mod:`fusedbn.science.experiments`) states a claim, runs paired arms over several seeds through
the tuning harness, tests the differences (:mod:`fusedbn.science.stats`) and gives a verdict: held, not shown
or contradicted."""

import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from multiprocessing import get_context
from pathlib import Path

import optuna
import torch

from fusedbn.outputs import output_folder
from fusedbn.records import run_record
from fusedbn.science.experiments import PRESETS, SCIENCE_TASKS, Context, Experiment, Finding
from fusedbn.science.figures import draw_figure
from fusedbn.science.report import JSON_FILE, RunInfo, read_comparison, read_science, write_report
from fusedbn.tuning.tasks import get_task
from fusedbn.tuning.training import torch_threads


class ScienceArgumentError(ValueError):
    """An argument of :func:`run_science` that it cannot run with; the message names it."""


def quiet(message: str) -> None:
    """A progress callback that shows nothing."""


@dataclass(frozen=True)
class Progress:
    """A progress callback printing ``[   12 s] message`` on stderr, counting seconds from ``start`` (a
    ``time.time()``, so that worker processes count from the same instant)."""

    start: float

    def __call__(self, message: str) -> None:
        print(f"[{time.time() - self.start:6.0f} s] {message}", file=sys.stderr, flush=True)


def run_science(
    preset: str, out: str | Path, command: str, progress: Callable[[str], None] = quiet, task: str = "digits",
    data_seed: int | None = None, compare: str | Path | None = None, workers: int | None = None,
) -> list[Finding]:  # fmt: skip
    """Run the experiments of ``task`` with the named preset in ``workers`` processes (default: the task's)
    and write the report into ``out``, with the verdicts of another task's ``science.json`` (``compare``)
    beside them; ``progress`` must pickle when ``workers`` > 1.

    Checked before ``out`` is created: the task and preset, the data seed or a missing package
    (:class:`~fusedbn.tuning.tasks.TaskError`), the ``compare`` file
    (:class:`~fusedbn.science.report.ReportFileError`), the workers (:class:`ScienceArgumentError`). Nothing
    is written until every experiment has run.
    """
    science = SCIENCE_TASKS[get_task(task).name]
    if preset not in science.presets:
        raise ScienceArgumentError(f"unknown preset {preset!r}; choose one of {', '.join(science.presets)}")
    workers = science.workers if workers is None else workers
    if workers < 1:
        raise ScienceArgumentError(f"--workers must be >= 1, got {workers}")
    other = None if compare is None else read_comparison(compare)
    chosen = science.presets[preset]
    context = Context(preset=chosen, progress=progress, science=science, data_seed=data_seed)
    # Tiny models: one thread is fastest, and the results do not depend on it.
    with torch_threads(1):
        context.task()  # builds the data first: a bad data seed or a missing package stops here
        with output_folder(out) as folder:
            record, start, cpu_start = run_record(), time.perf_counter(), _cpu_seconds()
            processes = min(workers, len(science.groups))
            timed = (_in_parallel(context, processes) if processes > 1
                     else _run_experiments(context, science.experiments))  # fmt: skip
            findings = [timed[experiment][0] for experiment in science.experiments]
            group_cpu = [sum(timed[experiment][1] for experiment in group) for group in science.groups]
            run = RunInfo(task=task, record=record.finished(), wall_seconds=time.perf_counter() - start,
                          cpu_seconds=_cpu_seconds() - cpu_start, workers=processes,
                          group_cpu_seconds=group_cpu)  # fmt: skip
            write_report(findings, chosen, command, run, folder, other)
            for finding in findings:
                draw_figure(finding, folder)
    return findings


def replot_science(out: str | Path) -> list[Path]:
    """Draw every figure again from ``out/science.json``; returns the paths. Raises
    :class:`~fusedbn.science.report.ReportFileError` when it cannot be read or keeps no figure data."""
    return [draw_figure(finding, Path(out)) for finding in read_science(Path(out) / JSON_FILE)[1]]


def _cpu_seconds() -> float:
    """CPU seconds of this process and of its finished worker processes."""
    return sum(os.times()[:4])  # user and system, of this process and of its children


def _run_experiments(ctx: Context, group: Sequence[Experiment]) -> dict[Experiment, tuple[Finding, float]]:
    """Run ``group``'s experiments in order: each one's finding and CPU seconds in this process."""
    timed = {}
    for experiment in group:
        began, cpu_began = time.perf_counter(), time.process_time()
        finding = experiment(ctx)
        timed[experiment] = finding, time.process_time() - cpu_began
        ctx.progress(f"{finding.title}: {finding.verdict} ({time.perf_counter() - began:.0f} s, "
                     f"{timed[experiment][1]:.0f} s of CPU)")  # fmt: skip
    return timed


def _start_worker() -> None:
    """Set up a worker process: Ctrl-C is the main process's to handle, one torch thread, no Optuna logs."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)


def _in_parallel(context: Context, processes: int) -> dict[Experiment, tuple[Finding, float]]:
    """The task's groups of experiments in ``processes`` spawned processes: each one's finding and CPU
    seconds. Leaving early (an error, Ctrl-C) stops the workers."""
    fresh = replace(context, tasks={}, searches={})  # the workers build their own
    with get_context("spawn").Pool(processes, initializer=_start_worker) as pool:
        pending = [pool.apply_async(_run_experiments, (fresh, group)) for group in context.science.groups]
        timed = {experiment: found for result in pending for experiment, found in result.get().items()}
        pool.close()
        pool.join()  # the workers' CPU time counts once they have ended
    return timed


__all__ = ["PRESETS", "SCIENCE_TASKS", "Progress", "ScienceArgumentError", "quiet", "replot_science",
           "run_science"]  # fmt: skip
