"""The built-in digits task: the fixed split and the MLP with fused BatchNorm (fusedbn.tuning.digits)."""

import pytest
import torch
from torch import nn

from fusedbn import FusedBatchNorm1d
from fusedbn.tuning.digits import build_mlp
from fusedbn.tuning.tasks import get_task


def test_splits_are_fixed_stratified_disjoint_and_centred() -> None:
    first, second = get_task("digits").build(), get_task("digits").build()
    (x_train, _), (x_valid, y_valid), (x_test, y_test) = first.train, first.valid, first.test
    # 1,797 images: 60% training, 20% validation, 20% held out for testing.
    assert (len(x_train), len(x_valid), len(x_test)) == (1077, 360, 360)
    assert x_train.shape[1] == 64 and x_train.dtype == torch.float32
    assert torch.equal(x_train, second.train[0]) and torch.equal(y_test, second.test[1])
    # Stratified: every digit makes up about a tenth of the validation and test splits.
    for labels in (y_valid, y_test):
        counts = torch.bincount(labels, minlength=10)
        assert counts.min() >= 33 and counts.max() <= 39
    # No image appears in two splits.
    rows = [{tuple(row.tolist()) for row in x} for x in (x_train, x_valid, x_test)]
    assert not (rows[0] & rows[1] or rows[0] & rows[2] or rows[1] & rows[2])
    # Centred per pixel on the training split, one scale for all pixels: unit overall spread.
    assert x_train.mean(dim=0).abs().max() < 1e-4
    assert x_train.std(unbiased=False).item() == pytest.approx(1.0, rel=1e-3)


def test_pixels_constant_in_training_stay_small_everywhere() -> None:
    task = get_task("digits").build()
    constant = task.train[0].std(dim=0) == 0
    assert constant.any(), "the digits have border pixels that are always 0 in the training split"
    for split, (inputs, _) in task.splits().items():
        assert inputs.abs().max() < 4, split
        assert inputs[:, constant].abs().max() < 4, split


def test_mlp_without_batchnorm_keeps_the_linear_biases() -> None:
    model = build_mlp({"num_layers": 2, "hidden_units": 24, "bn_beta": 0.9}, batchnorm=False)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    linears = [m for m in model if isinstance(m, nn.Linear)]
    assert len(linears) == 3 and all(m.bias is not None for m in linears)
    assert model(torch.randn(5, 64)).shape == (5, 10)


def test_mlp_has_bias_free_linear_before_each_fused_batch_norm() -> None:
    model = build_mlp({"num_layers": 3, "hidden_units": 48, "bn_beta": 0.99})
    layers = list(model)
    norms = [m for m in layers if isinstance(m, FusedBatchNorm1d)]
    assert len(norms) == 3
    for norm in norms:
        before = layers[layers.index(norm) - 1]
        assert isinstance(before, nn.Linear) and before.bias is None and before.out_features == 48
        assert norm.momentum == pytest.approx(0.01)
    assert isinstance(layers[-1], nn.Linear) and layers[-1].out_features == 10
    assert model(torch.randn(5, 64)).shape == (5, 10)
