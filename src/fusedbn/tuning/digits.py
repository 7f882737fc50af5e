"""The built-in task: scikit-learn's 8x8 handwritten digits (1,797 images, no download) and an MLP with fused
BatchNorm layers.

A fixed, seeded, stratified split keeps 60% for training, 20% for validation and 20% as a held-out test split.
Each pixel is centred on its training mean and all are divided by one number, the standard deviation of all
centred training pixels (a scale per pixel would blow up the border pixels that are nearly always 0 in
training).
"""

from collections.abc import Mapping

import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

from fusedbn import FusedBatchNorm1d
from fusedbn.tuning.training import add_biases

VALID_FRACTION = 0.2
TEST_FRACTION = 0.2
SPLIT_SEED = 0
NUM_CLASSES = 10


def build_mlp(params: Mapping[str, float], batchnorm: bool = True, bias: bool = False) -> nn.Module:
    """An MLP of ``num_layers`` hidden layers ``Linear(bias=False) -> FusedBatchNorm1d -> ReLU`` of
    ``hidden_units``, BatchNorm momentum 1 - ``bn_beta``; ``batchnorm=False``: ``Linear -> ReLU``;
    ``bias=True``: a bias in each Linear before a BatchNorm, drawn after every weight (:func:`add_biases`)."""
    layers: list[nn.Module] = []
    width = 64  # the 8x8 pixels in
    hidden = int(params["hidden_units"])
    for _ in range(int(params["num_layers"])):
        layers.append(nn.Linear(width, hidden, bias=not batchnorm))
        if batchnorm:
            layers.append(FusedBatchNorm1d(hidden, momentum=1.0 - params["bn_beta"]))
        layers.append(nn.ReLU())
        width = hidden
    layers.append(nn.Linear(width, NUM_CLASSES))
    if batchnorm and bias:
        add_biases([layer for layer in layers[:-1] if isinstance(layer, nn.Linear)])
    return nn.Sequential(*layers)


def digits_splits() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The fixed "train", "valid" and "test" splits as (float32 inputs, int64 labels), preprocessed."""
    images, labels = load_digits(return_X_y=True)
    x_rest, x_test, y_rest, y_test = train_test_split(
        images, labels, test_size=TEST_FRACTION, random_state=SPLIT_SEED, stratify=labels
    )
    x_train, x_valid, y_train, y_valid = train_test_split(
        x_rest,
        y_rest,
        test_size=VALID_FRACTION / (1.0 - TEST_FRACTION),
        random_state=SPLIT_SEED,
        stratify=y_rest,
    )
    mean = x_train.mean(axis=0)
    scale = (x_train - mean).std()
    splits = {"train": (x_train, y_train), "valid": (x_valid, y_valid), "test": (x_test, y_test)}
    return {
        name: (torch.tensor((pixels - mean) / scale, dtype=torch.float32), torch.tensor(labels))
        for name, (pixels, labels) in splits.items()
    }
