"""The MNIST-1D task (fusedbn.tuning.mnist1d): generated data, splits, the CNN and its variants, the
paper's baselines. Data are generated small (300 examples) unless a test needs the default size."""

import random
import sys
from dataclasses import replace
from functools import partial

import numpy as np
import pytest
import torch
from torch import nn

from fusedbn import FusedBatchNorm1d
from fusedbn.tuning import mnist1d
from fusedbn.tuning.tasks import get_task

TINY = 300  # examples: 240 for training (192 training, 48 validation) and 60 for testing


@pytest.mark.usefixtures("mnist1d_offline")
def test_data_are_generated_locally_seeded_and_leave_the_global_generators_alone() -> None:
    numpy_state, python_state = np.random.get_state(), random.getstate()
    first = mnist1d.generate(data_seed=7, num_samples=TINY)
    assert np.array_equal(np.random.get_state()[1], numpy_state[1]) and random.getstate() == python_state
    again, other = mnist1d.generate(7, TINY), mnist1d.generate(8, TINY)
    assert first["x"].shape == (240, 40) and first["x_test"].shape == (60, 40)
    assert np.array_equal(first["x"], again["x"]) and np.array_equal(first["y_test"], again["y_test"])
    assert not np.allclose(first["x"], other["x"])


@pytest.mark.usefixtures("mnist1d_offline")
def test_splits_are_disjoint_stratified_and_keep_the_generators_test_split() -> None:
    splits = mnist1d.mnist1d_splits(data_seed=3, num_samples=TINY)
    data = mnist1d.generate(3, TINY)
    (x_train, y_train), (x_valid, y_valid), (x_test, y_test) = (splits[k] for k in ("train", "valid", "test"))
    assert x_train.shape == (192, 1, 40) and x_valid.shape == (48, 1, 40) and x_train.dtype == torch.float32
    assert y_train.dtype == torch.int64
    # The test split is the generator's, untouched; training and validation are its training examples.
    assert torch.equal(x_test[:, 0], torch.tensor(data["x_test"], dtype=torch.float32))
    assert torch.equal(y_test, torch.tensor(data["y_test"]))
    rows = [{tuple(x.flatten().tolist()) for x in inputs} for inputs in (x_train, x_valid, x_test)]
    assert len(rows[0]) == 192 and not (rows[0] & rows[1] or rows[0] & rows[2] or rows[1] & rows[2])
    assert rows[0] | rows[1] == {tuple(x.tolist()) for x in torch.tensor(data["x"], dtype=torch.float32)}
    # Stratified: each class is a fifth of its training examples in validation, give or take one.
    counts = np.bincount(data["y"], minlength=10)
    assert np.all(np.abs(np.bincount(y_valid.numpy(), minlength=10) - 0.2 * counts) <= 1)


def test_a_missing_mnist1d_package_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "mnist1d", None)
    monkeypatch.setitem(sys.modules, "mnist1d.data", None)
    with pytest.raises(mnist1d.MissingPackage, match=r"pip install '\.\[tune\]'"):
        mnist1d.generate()


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_the_cnn_builds_and_runs_for_every_corner_of_its_space(optimizer: str) -> None:
    space = {p.name: p for p in mnist1d.cnn_space(optimizer)}
    assert "hidden_units" not in space and space["channels"].is_int and "weight_decay" in space
    for channels in (space["channels"].low, space["channels"].high):
        for depth in range(int(space["num_layers"].low), int(space["num_layers"].high) + 1):
            params = {"channels": channels, "num_layers": depth, "bn_beta": 0.99}
            for variant in ({}, {"batchnorm": False}, {"bias": True}):
                model = mnist1d.build_cnn(params, **variant)
                logits = model(torch.randn(3, 1, 40))
                assert logits.shape == (3, 10), (params, variant)
                convolutions = [m for m in model if isinstance(m, nn.Conv1d)]
                assert len(convolutions) == depth and convolutions[-1].out_channels == channels


def test_bias_free_convolution_before_each_fused_batch_norm() -> None:
    model = mnist1d.build_cnn({"channels": 12, "num_layers": 4, "bn_beta": 0.9})
    layers = list(model)
    norms = [m for m in layers if isinstance(m, FusedBatchNorm1d)]
    assert len(norms) == 4 and all(norm.momentum == pytest.approx(0.1) for norm in norms)
    for norm in norms:
        before = layers[layers.index(norm) - 1]
        assert isinstance(before, nn.Conv1d) and before.bias is None
    # Kernel 5 then 3, lengths kept by padding except in the second and third blocks (stride 2).
    assert [m.stride[0] for m in layers if isinstance(m, nn.Conv1d)] == [1, 2, 2, 1]
    assert [m.kernel_size[0] for m in layers if isinstance(m, nn.Conv1d)] == [5, 3, 3, 3]
    hidden = model[:-3](torch.randn(2, 1, 40))
    assert hidden.shape == (2, 12, 10)


def test_variants_differ_only_where_they_should() -> None:
    params = {"channels": 6, "num_layers": 3, "bn_beta": 0.9}

    def built(**variant: bool) -> nn.Module:
        torch.manual_seed(11)
        return mnist1d.build_cnn(params, **variant)

    plain, with_bias, without_bn = built(), built(bias=True), built(batchnorm=False)
    plain_state, bias_state = plain.state_dict(), with_bias.state_dict()
    extra = set(bias_state) - set(plain_state)
    assert extra == {"0.bias", "3.bias", "6.bias"} and set(plain_state) <= set(bias_state)
    for key, value in plain_state.items():
        assert torch.equal(value, bias_state[key]), key  # the same weights, buffers and head
    assert all(bias_state[key].abs().max() > 0 for key in extra)
    # In training the batch mean removes each bias: the outputs agree to rounding.
    x = torch.randn(16, 1, 40)
    plain.train(), with_bias.train()
    torch.testing.assert_close(with_bias(x), plain(x), rtol=1e-5, atol=1e-5)
    # Without BatchNorm: the same convolution weights and head, a bias in every convolution.
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in without_bn.modules())
    convolutions = [[m for m in net if isinstance(m, nn.Conv1d)] for net in (plain, without_bn)]
    for conv, bare in zip(*convolutions, strict=True):
        assert torch.equal(conv.weight, bare.weight) and bare.bias is not None
    assert torch.equal(plain[-1].weight, without_bn[-1].weight)


@pytest.mark.usefixtures("mnist1d_offline")
def test_task_trains_and_leaves_the_test_split_to_held_out_scores() -> None:
    tiny = replace(get_task("mnist1d"), splits=partial(mnist1d.mnist1d_splits, num_samples=TINY))
    task = tiny.build(epochs=1, optimizer="sgd", data_seed=1)
    assert not task.score_test and set(task.trial_splits()) == {"train", "valid"}
    params = {p.name: p.default for p in mnist1d.cnn_space("sgd")}
    model = task.train_model(params, seed=0)
    assert set(task.scores(model)) == {"train_accuracy", "train_loss", "valid_accuracy", "valid_loss"}


def test_paper_models_have_the_published_sizes_and_train_in_order() -> None:
    sizes = {
        name: sum(p.numel() for p in build().parameters())
        for name, (build, _) in mnist1d.PAPER_MODELS.items()
    }
    # Linear(40, 10); 40-100-100-10 with biases; three Conv1d of 25 channels (5, 3, 3) and Linear(125, 10).
    assert sizes["logistic regression"] == 40 * 10 + 10
    assert sizes["MLP"] == (40 * 100 + 100) + (100 * 100 + 100) + (100 * 10 + 10)
    assert sizes["MLP, 256 hidden units"] == (40 * 256 + 256) + (256 * 256 + 256) + (256 * 10 + 10)
    assert sizes["CNN"] == (5 * 25 + 25) + 2 * (25 * 25 * 3 + 25) + (125 * 10 + 10)
    data = {
        "x": np.zeros((4000, 40)),
        "y": np.zeros(4000, dtype=np.int64),
        "x_test": np.zeros((10, 40)),
        "y_test": np.zeros(10, dtype=np.int64),
    }
    task = mnist1d.paper_task("CNN", data)
    assert task.epochs == 150 and not task.shuffle and task.optimizer == "adam"  # 6,000 steps of 100
    assert task.build_model({})(torch.zeros(2, 1, 40)).shape == (2, 10)
