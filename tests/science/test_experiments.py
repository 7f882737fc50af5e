"""The experiments of fusedbn.science: update_bn on the fused modules, the noise measure, determinism."""

import json
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import torch
from torch import nn
from torch.optim.swa_utils import update_bn

from fusedbn import FusedBatchNorm1d
from fusedbn.records import run_record
from fusedbn.science import replot_science
from fusedbn.science.experiments import (
    PRESETS,
    SCIENCE_TASKS,
    Context,
    _normalised_spread,
    batchnorm_noise,
    bias_equivalence,
    paper_table,
    random_vs_grid,
)
from fusedbn.science.figures import draw_figure
from fusedbn.science.report import RunInfo, write_report
from fusedbn.science.stats import CONTRADICTED, HELD, NOT_SHOWN
from fusedbn.tuning.mnist1d import PAPER_MODELS


@pytest.mark.kernels
def test_update_bn_recomputes_exact_statistics_on_fused_modules() -> None:
    # Through the Triton kernels (the interpreter on a machine without a GPU), not torch's BatchNorm.
    generator = torch.Generator().manual_seed(0)
    batches = [3.0 + 2.0 * torch.randn(16, 6, generator=generator) for _ in range(3)]
    fused = nn.Sequential(nn.Linear(6, 5), FusedBatchNorm1d(5, momentum=0.3, backend="triton"))
    reference = nn.Sequential(nn.Linear(6, 5), nn.BatchNorm1d(5, momentum=0.3))
    reference.load_state_dict(fused.state_dict())
    fused.train()
    fused(batches[0])  # moves the running statistics away from their initial values
    update_bn(batches, fused)
    update_bn(batches, reference)
    with torch.no_grad():
        hidden = [fused[0](b).double() for b in batches]
    # update_bn averages the per-batch statistics with equal weights (momentum None), the mean of
    # each batch and its unbiased variance.
    mean = torch.stack([h.mean(dim=0) for h in hidden]).mean(dim=0)
    var = torch.stack([h.var(dim=0, unbiased=True) for h in hidden]).mean(dim=0)
    norm = fused[1]
    torch.testing.assert_close(norm.running_mean.double(), mean, rtol=2e-5, atol=2e-5)
    torch.testing.assert_close(norm.running_var.double(), var, rtol=2e-5, atol=2e-5)
    torch.testing.assert_close(norm.running_mean, reference[1].running_mean, rtol=2e-5, atol=2e-5)
    torch.testing.assert_close(norm.running_var, reference[1].running_var, rtol=2e-5, atol=2e-5)
    assert norm.momentum == 0.3 and int(norm.num_batches_tracked) == 3


def test_normalised_spread_shrinks_like_one_over_the_root_of_the_batch() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 8))
    inputs = 1.0 + torch.randn(4000, 10)
    spreads = [
        _normalised_spread(model, inputs, b, 300, np.random.default_rng(b), example=0) for b in (16, 64, 256)
    ]
    ratios = np.array(spreads[:-1]) / np.array(spreads[1:])
    assert np.allclose(ratios, 2.0, rtol=0.2), spreads  # 4x the batch: half the spread


def test_experiments_are_seeded_and_keep_their_figure_data(tmp_path: Path) -> None:
    def run() -> list:
        context = Context(preset=PRESETS["smoke"], progress=lambda _: None)
        return [experiment(context) for experiment in (random_vs_grid, batchnorm_noise)]

    first, second = run(), run()
    assert first == second
    for finding in first:
        assert finding.verdict in (HELD, NOT_SHOWN, CONTRADICTED)
        assert len(finding.tests) == len(finding.test_verdicts) and finding.rows
        assert json.loads(json.dumps(finding.figure_data)) == finding.figure_data, "plain JSON values"
        assert draw_figure(finding, tmp_path).stat().st_size > 10_000
    panels = first[0].figure_data["panels"]
    assert [p["test"] for p in panels] == [vars(first[0].tests[0]), vars(first[0].tests[2])]
    assert all(len(p["first"]) == len(p["second"]) == PRESETS["smoke"].seeds for p in panels)


@pytest.mark.usefixtures("mnist1d_offline")
def test_paper_table_and_bias_equivalence_on_mnist1d(tmp_path: Path) -> None:
    science = SCIENCE_TASKS["mnist1d"]
    context = Context(preset=science.presets["smoke"], progress=lambda _: None, science=science)
    table = paper_table(context)
    models = [row["model"] for row in table.rows]
    assert models[:-1] == list(PAPER_MODELS) and "tuned" in models[-1]
    # 40 steps of the paper's training reproduce none of its table, and the verdict says so.
    assert len(table.test_verdicts) == 3 and table.verdict == CONTRADICTED
    assert [row["within 3 points"] for row in table.rows[:3]] == ["no", "no", "no"]
    tuned = table.extra["tuned"]
    assert tuned.train_examples == 300 and tuned.train_examples_all == 300 + 800
    bias = bias_equivalence(context)
    assert [test.n for test in bias.tests] == [2 * 3, 2 * 3]  # seeds x configurations, paired
    assert bias.verdict in (HELD, NOT_SHOWN, CONTRADICTED) and len(bias.test_verdicts) == 2
    # The bias arm trained the very configurations of the plain arm (cached searches share their keys).
    plain = [key for key in context.searches if key[0] == context.bn_params and not key[-1]]
    assert len(plain) == 2 and len(context.searches) > len(plain)
    # Each figure's data are plain JSON values, drawn by a kind of fusedbn.science.figures.
    models = table.figure_data["models"]
    assert [model["published"] for model in models.values()] == [p for _, p in PAPER_MODELS.values()]
    assert models["CNN"]["seeds"] == table.extra["accuracy"]["CNN"]
    assert table.figure_data["extra"] == {"fusedbn CNN, tuned": tuned.test_accuracy_all}
    panels = bias.figure_data["panels"]
    assert [p["test"] for p in panels] == [vars(test) for test in bias.tests]
    assert all(len(p["first"]) == len(p["second"]) == 2 * 3 for p in panels)
    assert bias.figure_data["margin"] == 0.005 and bias.figure_data["arms"] == ["bias", "no bias"]
    drawn = {}
    for finding in (table, bias):
        assert json.loads(json.dumps(finding.figure_data)) == finding.figure_data
        path = draw_figure(finding, tmp_path)
        assert path.stat().st_size > 10_000
        drawn[path.name] = matplotlib.image.imread(path)
        path.unlink()
    # --replot draws the same figures from science.json alone.
    run = RunInfo("mnist1d", run_record(), 1.0, 1.0)
    write_report([table, bias], science.presets["smoke"], "cmd", run, tmp_path)
    assert [path.name for path in replot_science(tmp_path)] == list(drawn)
    for name, pixels in drawn.items():
        assert np.array_equal(matplotlib.image.imread(tmp_path / name), pixels), name
