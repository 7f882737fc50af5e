"""The built-in task: scikit-learn's 8x8 handwritten digits and an MLP with fused BatchNorm layers.

The 1,797 images ship inside scikit-learn (no download). A fixed, seeded, stratified split keeps 20% for
validation; pixels are standardised with the training split's statistics. Each hidden layer is
``Linear(bias=False) -> FusedBatchNorm1d -> ReLU`` (the BatchNorm's shift replaces the Linear's bias).
"""

from collections.abc import Mapping

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

from fusedbn import FusedBatchNorm1d
from fusedbn.tuning.training import Task

VALID_FRACTION = 0.2
SPLIT_SEED = 0
NUM_CLASSES = 10


def build_mlp(
    params: Mapping[str, float], in_features: int = 64, num_classes: int = NUM_CLASSES
) -> nn.Module:
    """An MLP of ``num_layers`` hidden layers of ``hidden_units``, BatchNorm momentum 1 - ``bn_beta``."""
    layers: list[nn.Module] = []
    width = in_features
    for _ in range(int(params["num_layers"])):
        hidden = int(params["hidden_units"])
        layers += [
            nn.Linear(width, hidden, bias=False),
            FusedBatchNorm1d(hidden, momentum=1.0 - params["bn_beta"]),
            nn.ReLU(),
        ]
        width = hidden
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


def digits_task(epochs: int = 10, optimizer: str = "sgd", device: str = "cpu") -> Task:
    """The digits classification :class:`Task` with the fixed train/validation split and :func:`build_mlp`."""
    images, labels = load_digits(return_X_y=True)
    x_train, x_valid, y_train, y_valid = train_test_split(
        images, labels, test_size=VALID_FRACTION, random_state=SPLIT_SEED, stratify=labels
    )
    mean, std = x_train.mean(axis=0), x_train.std(axis=0) + 1e-6

    def as_inputs(pixels: np.ndarray) -> torch.Tensor:
        return torch.tensor((pixels - mean) / std, dtype=torch.float32)

    return Task(
        build_model=build_mlp,
        train=(as_inputs(x_train), torch.tensor(y_train)),
        valid=(as_inputs(x_valid), torch.tensor(y_valid)),
        epochs=epochs,
        optimizer=optimizer,
        device=device,
    )
