"""The MNIST-1D task: a 1D CNN with fused BatchNorm on Greydanus & Kobak's procedurally generated digits.

MNIST-1D ("Scaling down deep learning with MNIST-1D", ICML 2024) is generated here by the ``mnist1d``
package's ``make_dataset`` (seed 42 gives the paper's data; nothing is downloaded; the global random states it
reseeds are put back). Its 4,000 training examples are split once, seeded and stratified, into 3,200 for
training and 800 for validation; its 1,000 test examples are the held-out test split. Inputs are (N, 1, 40)
tensors. :func:`build_cnn` is the tuned model; :data:`PAPER_MODELS` and :func:`paper_task` reproduce the
paper's table (logistic regression 32%, MLP 68%, CNN 94%).
"""

from collections.abc import Mapping
from dataclasses import replace
from functools import partial

import numpy as np
import torch
from sklearn.model_selection import train_test_split
from torch import nn

from fusedbn import FusedBatchNorm1d
from fusedbn.tuning.space import Param, default_space
from fusedbn.tuning.training import Task, TaskError, add_biases, kept_global_random_state

NAME = "mnist1d"
DATA_SEED = 42  # the generator's default seed: the paper's data
NUM_SAMPLES = 5000  # 4,000 training and 1,000 test examples
VALID_FRACTION = 0.2  # of the training examples
TRAIN_EXAMPLES = round(NUM_SAMPLES * 0.8 * (1 - VALID_FRACTION))  # the search's training split: 3,200
SPLIT_SEED = 0
LENGTH = 40
NUM_CLASSES = 10
FIRST_KERNEL, KERNEL = 5, 3
STRIDE_2_BLOCKS = (1, 2)  # block indices (from 0) that halve the length
INSTALL = "pip install '.[tune]' (from a clone of fusedbn)"
LEARNING_RATE = {"sgd": (1e-4, 1.0, 0.05), "adam": (1e-4, 0.1, 3e-3)}  # low, high, default per optimizer


class MissingPackage(TaskError, ImportError):
    """The ``mnist1d`` package is not installed."""


def generate(data_seed: int = DATA_SEED, num_samples: int = NUM_SAMPLES) -> dict[str, np.ndarray]:
    """MNIST-1D made by ``mnist1d.data.make_dataset`` with ``data_seed``: "x", "y" (training) and
    "x_test", "y_test" (test), 80% / 20% of ``num_samples``. Raises :class:`MissingPackage`."""
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError as error:
        raise MissingPackage(f"--task {NAME} needs the mnist1d package: {INSTALL}") from error
    args = get_dataset_args()
    args.seed, args.num_samples = data_seed, num_samples
    with kept_global_random_state():
        data = make_dataset(args)
    return {key: data[key] for key in ("x", "y", "x_test", "y_test")}


def mnist1d_splits(
    data_seed: int = DATA_SEED, num_samples: int = NUM_SAMPLES
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The "train", "valid" and "test" splits as ((N, 1, 40) float32 inputs, int64 labels)."""
    data = generate(data_seed, num_samples)
    x_train, x_valid, y_train, y_valid = train_test_split(
        data["x"], data["y"], test_size=VALID_FRACTION, random_state=SPLIT_SEED, stratify=data["y"]
    )
    return {
        "train": _tensors(x_train, y_train),
        "valid": _tensors(x_valid, y_valid),
        "test": _tensors(data["x_test"], data["y_test"]),
    }


def _tensors(signals: np.ndarray, labels: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.tensor(signals, dtype=torch.float32).unsqueeze(1), torch.tensor(labels, dtype=torch.int64)


def build_cnn(params: Mapping[str, float], batchnorm: bool = True, bias: bool = False) -> nn.Module:
    """``num_layers`` blocks ``Conv1d(bias=False) -> FusedBatchNorm1d -> ReLU`` of ``channels`` channels
    (kernel 5 then 3, padded to keep the length; blocks 2 and 3 of stride 2), the maximum over positions and a
    Linear to the classes; BatchNorm momentum 1 - ``bn_beta``. ``batchnorm=False`` leaves out the BatchNorms,
    ``bias=True`` keeps them; both give the convolutions a bias drawn after all weights (:func:`add_biases`),
    so the weights are the plain network's."""
    channels, depth = int(params["channels"]), int(params["num_layers"])
    layers: list[nn.Module] = []
    in_channels = 1
    for block in range(depth):
        kernel = FIRST_KERNEL if block == 0 else KERNEL
        stride = 2 if block in STRIDE_2_BLOCKS else 1
        layers.append(nn.Conv1d(in_channels, channels, kernel, stride, padding=kernel // 2, bias=False))
        if batchnorm:
            layers.append(FusedBatchNorm1d(channels, momentum=1.0 - params["bn_beta"]))
        layers.append(nn.ReLU())
        in_channels = channels
    layers += [nn.AdaptiveMaxPool1d(1), nn.Flatten(), nn.Linear(in_channels, NUM_CLASSES)]
    if bias or not batchnorm:
        add_biases([layer for layer in layers if isinstance(layer, nn.Conv1d)])
    return nn.Sequential(*layers)


def cnn_space(optimizer: str = "sgd") -> list[Param]:
    """:func:`default_space` with ``channels`` ([8, 128], log, tier 2, default 32) for the width,
    ``num_layers`` in [1, 6] (default 4), a learning-rate range and default per optimizer, and
    ``weight_decay`` ([1e-6, 1e-2], log, tier 3, default 0)."""
    low, high, default = LEARNING_RATE[optimizer]
    changes = {
        "learning_rate": {"low": low, "high": high, "default": default},
        "hidden_units": {"name": "channels", "low": 8, "high": 128, "default": 32},
        "num_layers": {"high": 6, "default": 4},
    }
    weight_decay = Param(name="weight_decay", low=1e-6, high=1e-2, scale="log", tier=3, default=0.0)
    return [replace(p, **changes.get(p.name, {})) for p in default_space(optimizer)] + [weight_decay]


class _ResidualMLP(nn.Module):
    """The paper's MLP: h = relu(W1 x); h = h + relu(W2 h); logits = W3 h."""

    def __init__(self, hidden: int = 100) -> None:
        super().__init__()
        self.linear1 = nn.Linear(LENGTH, hidden)
        self.linear2 = nn.Linear(hidden, hidden)
        self.linear3 = nn.Linear(hidden, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.linear1(x.flatten(1)).relu()
        h = h + self.linear2(h).relu()
        return self.linear3(h)


def _paper_cnn(channels: int = 25) -> nn.Module:
    """Three Conv1d (kernels 5, 3, 3; stride 2; padding 1; biases; ReLU), then Linear(125, 10)."""
    layers: list[nn.Module] = []
    for in_channels, kernel in ((1, 5), (channels, 3), (channels, 3)):
        layers += [nn.Conv1d(in_channels, channels, kernel, stride=2, padding=1), nn.ReLU()]
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(channels * 5, NUM_CLASSES))


# The paper's models and published test accuracies (its Table 1), and the MLP with the 256 hidden units
# that the authors' training script (``get_model_args``) defaults to, against the paper's 100.
PAPER_MODELS = {
    "logistic regression": (lambda: nn.Sequential(nn.Flatten(), nn.Linear(LENGTH, NUM_CLASSES)), 0.32),
    "MLP": (_ResidualMLP, 0.68),
    "CNN": (_paper_cnn, 0.94),
    "MLP, 256 hidden units": (partial(_ResidualMLP, 256), 0.68),
}
# The paper's training: Adam, learning rate 1e-2, no weight decay, batches of 100 taken in order through
# the 4,000 training examples, 6,000 steps (150 epochs).
PAPER_PARAMS = {
    "learning_rate": 1e-2,
    "lr_decay": 0.0,
    "batch_size": 100,
    "adam_beta1": 0.9,
    "adam_beta2": 0.999,
    "adam_epsilon": 1e-8,
}
PAPER_STEPS = 6000


def paper_task(model: str, data: Mapping[str, np.ndarray], steps: int = PAPER_STEPS) -> Task:
    """A :class:`Task` that trains the paper's ``model`` its way for about ``steps`` steps (whole epochs) on
    ``data``'s training examples in order and scores its test examples, which stand in as the validation split
    too (nothing is chosen)."""
    build, _ = PAPER_MODELS[model]
    train = _tensors(data["x"], data["y"])
    test = _tensors(data["x_test"], data["y_test"])
    return Task(
        build_model=lambda _params: build(),
        train=train,
        valid=test,
        test=test,
        epochs=max(1, round(steps * PAPER_PARAMS["batch_size"] / len(train[0]))),
        optimizer="adam",
        shuffle=False,
    )
