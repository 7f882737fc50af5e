"""``fusedbn science``: paired experiments that test the classic tuning advice on a built-in task.

Each experiment (:mod:`fusedbn.science.experiments`, one function each) states a claim, runs paired
arms over several seeds through the tuning harness, tests the differences (:mod:`fusedbn.science.stats`)
and gives a verdict: held, not shown or contradicted. :func:`run_science` runs a task's experiments and
writes ``science.json``, ``REPORT.md`` and one PNG figure per experiment.
"""

import os
import time
from collections.abc import Callable
from pathlib import Path

import torch

from fusedbn.science.experiments import PRESETS, SCIENCE_TASKS, Context, Finding
from fusedbn.science.report import RunInfo, read_comparison, write_report
from fusedbn.tuning.tasks import get_task


def run_science(
    preset: str,
    out: str | Path,
    command: str,
    progress: Callable[[str], None] = lambda _: None,
    task: str = "digits",
    data_seed: int | None = None,
    compare: str | Path | None = None,
) -> list[Finding]:
    """Run the experiments of ``task`` with the named preset ("full", "quick", "smoke"); write the report
    to ``out``, with the verdicts of another task's ``science.json`` (``compare``) beside them.

    Everything is checked before ``out`` is created: an unknown task or preset, a data seed the task
    cannot take, a missing package, an unreadable ``compare`` file raise ValueError.
    """
    science = SCIENCE_TASKS[get_task(task).name]
    if preset not in science.presets:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(science.presets)}")
    other = None if compare is None else read_comparison(compare)
    out = Path(out)
    context = Context(
        preset=science.presets[preset],
        figure_dir=out,
        progress=progress,
        science=science,
        data_seed=data_seed,
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: one thread is fastest, and the results do not depend on it
    try:
        context.task()  # builds the data first: a bad data seed or a missing package stops here
        out.mkdir(parents=True, exist_ok=True)
        load_before, start, cpu_start = os.getloadavg()[0], time.perf_counter(), time.process_time()
        findings = []
        for experiment in science.experiments:
            began = time.perf_counter()
            findings.append(experiment(context))
            progress(f"{findings[-1].title}: {findings[-1].verdict} ({time.perf_counter() - began:.0f} s)")
        run = RunInfo(
            task=task,
            wall_seconds=time.perf_counter() - start,
            cpu_seconds=time.process_time() - cpu_start,
            torch_threads=torch.get_num_threads(),
            load_before=load_before,
            load_after=os.getloadavg()[0],
        )
        write_report(findings, context.preset, command, run, out, other)
    finally:
        torch.set_num_threads(threads)
    return findings


__all__ = ["PRESETS", "SCIENCE_TASKS", "run_science"]
