"""The built-in digits task: the fixed split and the MLP with fused BatchNorm (fusedbn.tuning.digits)."""

import pytest
import torch
from torch import nn

from fusedbn import FusedBatchNorm1d
from fusedbn.tuning.digits import build_mlp, digits_task


def test_split_is_fixed_stratified_and_standardised() -> None:
    first, second = digits_task(), digits_task()
    x_train, y_train = first.train
    x_valid, y_valid = first.valid
    # 1,797 images, 20% kept for validation.
    assert (len(x_train), len(x_valid)) == (1437, 360)
    assert x_train.shape[1] == 64 and x_train.dtype == torch.float32
    assert torch.equal(x_train, second.train[0]) and torch.equal(y_valid, second.valid[1])
    # Stratified: every digit makes up about a tenth of the validation split.
    counts = torch.bincount(y_valid, minlength=10)
    assert counts.min() >= 33 and counts.max() <= 39
    # Standardised on the training split (constant pixels stay at 0).
    assert x_train.mean(dim=0).abs().max() < 1e-4
    stds = x_train.std(dim=0, unbiased=False)
    assert torch.all((stds < 1e-3) | ((stds - 1).abs() < 1e-3))


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
