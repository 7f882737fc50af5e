"""``fusedbn science``: paired experiments that test the classic tuning advice on the digits task.

Each experiment (:mod:`fusedbn.science.experiments`, one function each) states a claim, runs paired
arms over several seeds through the tuning harness, tests the differences (:mod:`fusedbn.science.stats`)
and gives a verdict: held, not shown or contradicted. :func:`run_science` runs them all and writes
``science.json``, ``REPORT.md`` and one PNG figure per experiment; :func:`replot_science` draws the
figures again from ``science.json`` alone.
"""

import time
from collections.abc import Callable
from pathlib import Path

from fusedbn.outputs import output_folder
from fusedbn.science.experiments import EXPERIMENTS, PRESETS, Context, Finding
from fusedbn.science.figures import draw_figure
from fusedbn.science.report import JSON_FILE, read_findings, write_report
from fusedbn.tuning.training import torch_threads


def run_science(
    preset: str, out: str | Path, command: str, progress: Callable[[str], None] = lambda _: None
) -> list[Finding]:
    """Run every experiment with the named preset ("full", "quick", "smoke"); write the report to ``out``.

    The folder ``out`` is created first, and everything is written into it once every experiment has
    run: a run that stops early (an error, Ctrl-C) leaves a folder as it was, and none it created.
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    # Tiny models: one thread is fastest, and the results do not depend on it.
    with output_folder(out) as folder, torch_threads(1):
        context = Context(preset=PRESETS[preset], progress=progress)
        start = time.perf_counter()
        findings = []
        for experiment in EXPERIMENTS:
            began = time.perf_counter()
            findings.append(experiment(context))
            progress(f"{findings[-1].title}: {findings[-1].verdict} ({time.perf_counter() - began:.0f} s)")
        write_report(findings, context.preset, command, time.perf_counter() - start, folder)
        for finding in findings:
            draw_figure(finding, folder)
    return findings


def replot_science(out: str | Path) -> list[Path]:
    """Draw every figure again from ``out/science.json``, without running anything; returns the paths.

    Raises :class:`~fusedbn.science.report.ReportFileError` when science.json cannot be read or keeps no
    figure data.
    """
    return [draw_figure(finding, Path(out)) for finding in read_findings(Path(out) / JSON_FILE)]


__all__ = ["PRESETS", "replot_science", "run_science"]
