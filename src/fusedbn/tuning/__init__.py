"""Hyperparameter tuning with Optuna: scales, priority tiers, coarse-to-fine stages, resumable studies.

Tune your own classifier: give a model builder and data, take the built-in space (or extend it with your
own parameters, each on a ``linear``, ``log``, ``log-near-1`` or ``pow2`` scale), and run::

    import torch
    from fusedbn import FusedBatchNorm1d
    from fusedbn.tuning import Param, SearchConfig, Task, default_space, report, tune

    def build(params):  # params: every hyperparameter by name, betas as beta
        width = int(params["hidden_units"])
        return torch.nn.Sequential(
            torch.nn.Linear(20, width, bias=False),
            FusedBatchNorm1d(width, momentum=1 - params["bn_beta"]),
            torch.nn.ReLU(),
            torch.nn.Dropout(params["dropout"]),
            torch.nn.Linear(width, 3),
        )

    task = Task(build_model=build, train=(x_train, y_train), valid=(x_valid, y_valid), epochs=10)
    dropout = Param(name="dropout", low=0.0, high=0.5, scale="linear", tier=2, default=0.0)
    space = default_space("sgd") + [dropout]
    result = tune(task, space, SearchConfig(study_name="mine", storage="sqlite:///mine.db", trials=20))
    print(report(result, "runs/mine"))  # also writes runs/mine/summary.json and the plots

:mod:`fusedbn.tuning.space` lists the built-in parameters, their scales, tiers and defaults;
:mod:`fusedbn.tuning.search` the stages, budget, workers and sampling; :mod:`fusedbn.tuning.storage` the
storage URLs. ``fusedbn tune`` runs the same on its built-in tasks (:mod:`fusedbn.tuning.tasks`):
scikit-learn's digits (:mod:`fusedbn.tuning.digits`) and MNIST-1D (:mod:`fusedbn.tuning.mnist1d`).
"""

from pathlib import Path

from fusedbn.tuning.plots import write_plots
from fusedbn.tuning.report import format_summary, summarize, write_summary
from fusedbn.tuning.search import SearchConfig, TuningError, TuningResult, tune
from fusedbn.tuning.space import Param, SpaceError, default_space
from fusedbn.tuning.storage import StorageError, display_url
from fusedbn.tuning.training import HeldOutScores, Task


def report(result: TuningResult, out_dir: str | Path, held_out: HeldOutScores | None = None) -> str:
    """Write ``summary.json`` and the PNG plots of ``result`` into ``out_dir`` (created), with the chosen
    configuration's ``held_out`` test scores when its task keeps the test split out of the search.

    Returns the summary as text, ending with a line that names the files written.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = summarize(result, held_out=held_out)
    written = [write_summary(summary, out_dir), *write_plots(result, summary, out_dir)]
    files = ", ".join(path.name for path in written)
    storage = display_url(result.config.storage)
    return f"{format_summary(summary)}\nWrote {files} to {out_dir}/ (study in {storage})"


__all__ = [
    "HeldOutScores",
    "Param",
    "SearchConfig",
    "SpaceError",
    "StorageError",
    "Task",
    "TuningError",
    "TuningResult",
    "default_space",
    "report",
    "tune",
]
