"""Hyperparameter tuning with Optuna: scales, priority tiers, coarse-to-fine stages, resumable studies.

Tune your own classifier: describe it as a :class:`Task` (a model builder that receives every
hyperparameter by name, and training and validation tensors), take the built-in space (or extend it
with your own :class:`Param`, each on a ``linear``, ``log``, ``log-near-1`` or ``pow2`` scale), say
where the study lives and its budget in a :class:`SearchConfig`, then call :func:`tune` and
:func:`report`. README.md ("Your own model and data") holds a complete example that runs as it is on
scikit-learn's wine data; the test suite runs it.

:mod:`fusedbn.tuning.space` lists the built-in parameters, their scales, tiers and defaults;
:mod:`fusedbn.tuning.search` the stages, budget, workers and sampling; :mod:`fusedbn.tuning.storage` the
storage URLs. ``fusedbn tune`` runs the same on scikit-learn's digits (:mod:`fusedbn.tuning.digits`).
"""

from pathlib import Path

from fusedbn.tuning.plots import write_plots
from fusedbn.tuning.report import format_summary, summarize, write_summary
from fusedbn.tuning.search import SearchConfig, TuningError, TuningInterrupted, TuningResult, tune
from fusedbn.tuning.space import Param, SpaceError, default_space
from fusedbn.tuning.storage import StorageError, display_url
from fusedbn.tuning.training import Task


def report(result: TuningResult, out_dir: str | Path) -> str:
    """Write ``summary.json`` and the PNG plots of ``result`` into ``out_dir`` (created).

    Returns the summary as text, ending with a line that names the files written.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = summarize(result)
    written = [write_summary(summary, out_dir), *write_plots(result, summary, out_dir)]
    files = ", ".join(path.name for path in written)
    storage = display_url(result.config.storage)
    return f"{format_summary(summary)}\nWrote {files} to {out_dir}/ (study in {storage})"


__all__ = [
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
