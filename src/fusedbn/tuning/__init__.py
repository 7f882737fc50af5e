"""Hyperparameter tuning with Optuna: scales, priority tiers, coarse-to-fine stages, resumable studies.

Describe your classifier as a :class:`Task` (a model builder that receives every hyperparameter by name, and
training and validation tensors), take :func:`default_space` (or add your own :class:`Param`), put the study's
storage and budget in a :class:`SearchConfig`, then call :func:`tune` and :func:`report`. docs/tuning.md
("Your own model and data") holds a complete example; ``fusedbn tune`` runs the built-in tasks
(:mod:`fusedbn.tuning.tasks`) the same way.
"""

from pathlib import Path

from fusedbn.tuning.plots import write_plots
from fusedbn.tuning.report import format_summary, summarize, write_summary
from fusedbn.tuning.search import SearchConfig, TuningError, TuningInterrupted, TuningResult, tune
from fusedbn.tuning.space import Param, SpaceError, default_space
from fusedbn.tuning.storage import StorageError
from fusedbn.tuning.training import HeldOutScores, Task


def report(result: TuningResult, out_dir: str | Path, held_out: HeldOutScores | None = None) -> str:
    """Write ``summary.json`` and the PNG plots of ``result`` into ``out_dir`` (created), with the chosen
    configuration's ``held_out`` test scores; returns the summary as text, ending with the files written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = summarize(result, held_out=held_out)
    written = [write_summary(summary, out_dir), *write_plots(result, summary, out_dir)]
    files = ", ".join(path.name for path in written)
    return f"{format_summary(summary)}\nWrote {files} to {out_dir}/ (study in {summary.storage})"


__all__ = [
    "HeldOutScores",
    "Param",
    "SearchConfig",
    "SpaceError",
    "StorageError",
    "Task",
    "TuningError",
    "TuningInterrupted",
    "TuningResult",
    "default_space",
    "report",
    "tune",
]
