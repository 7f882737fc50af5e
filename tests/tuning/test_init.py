"""The documented Python API (fusedbn.tuning): a user's own model, data and parameter.

The documentation's example of it (docs/tuning.md, "Your own model and data") is run as written by
tests/test_docs.py."""

from pathlib import Path

import torch
from torch import nn

from fusedbn import FusedBatchNorm1d
from fusedbn.tuning import Param, SearchConfig, Task, default_space, report, tune


def test_a_users_own_model_data_and_parameter_are_tuned_and_reported(tmp_path: Path) -> None:
    # Three well-separated Gaussian blobs in 20 dimensions.
    generator = torch.Generator().manual_seed(0)
    centres = 3 * torch.randn(3, 20, generator=generator)
    labels = torch.arange(300) % 3
    inputs = centres[labels] + torch.randn(300, 20, generator=generator)
    dropouts: list[float] = []

    def build(params: dict) -> nn.Module:
        dropouts.append(params["dropout"])
        width = int(params["hidden_units"])
        return nn.Sequential(
            nn.Linear(20, width, bias=False),
            FusedBatchNorm1d(width, momentum=1 - params["bn_beta"]),
            nn.ReLU(),
            nn.Dropout(params["dropout"]),
            nn.Linear(width, 3),
        )

    task = Task(
        build_model=build, train=(inputs[:240], labels[:240]), valid=(inputs[240:], labels[240:]), epochs=2
    )
    space = default_space("sgd") + [
        Param(name="dropout", low=0.0, high=0.5, scale="linear", tier=2, default=0.0)
    ]
    config = SearchConfig(
        study_name="mine", storage=f"sqlite:///{tmp_path}/mine.db", trials=4, stages=2, progress=False
    )
    result = tune(task, space, config)

    assert "dropout" in {p.name for p in result.tuned}
    assert len(set(dropouts)) == len(dropouts) and all(0.0 <= d <= 0.5 for d in dropouts)
    low, high = result.stages[1].bounds["dropout"]
    assert 0.0 <= low < high <= 0.5
    text = report(result, tmp_path / "report")
    assert "dropout" in text and (tmp_path / "report" / "summary.json").exists()
    assert "Wrote summary.json, history.png" in text
    best = result.best()
    assert best is not None and best[1].value > 0.8, "the blobs are easy to separate"

