"""``fusedbn science``: paired experiments that test the classic tuning advice on the digits task.

Each experiment (:mod:`fusedbn.science.experiments`, one function each) states a claim, runs paired
arms over several seeds through the tuning harness, tests the differences (:mod:`fusedbn.science.stats`)
and gives a verdict: held, not shown or contradicted. :func:`run_science` runs them all and writes
``science.json``, ``REPORT.md`` and one PNG figure per experiment.
"""

import time
from collections.abc import Callable
from pathlib import Path

import torch

from fusedbn.science.experiments import EXPERIMENTS, PRESETS, Context, Finding
from fusedbn.science.report import write_report


def run_science(
    preset: str, out: str | Path, command: str, progress: Callable[[str], None] = lambda _: None
) -> list[Finding]:
    """Run every experiment with the named preset ("full", "quick", "smoke"); write the report to ``out``."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: one thread is fastest, and the results do not depend on it
    try:
        context = Context(preset=PRESETS[preset], figure_dir=out, progress=progress)
        start = time.perf_counter()
        findings = []
        for experiment in EXPERIMENTS:
            began = time.perf_counter()
            findings.append(experiment(context))
            progress(f"{findings[-1].title}: {findings[-1].verdict} ({time.perf_counter() - began:.0f} s)")
        write_report(findings, context.preset, command, time.perf_counter() - start, out)
    finally:
        torch.set_num_threads(threads)
    return findings


__all__ = ["PRESETS", "run_science"]
