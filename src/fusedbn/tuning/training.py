"""A classification task to tune, and the training run that turns one set of hyperparameters into a score.

The training loop reads ``learning_rate``, ``lr_decay``, ``batch_size``, ``momentum`` (SGD) or
``adam_beta1``, ``adam_beta2``, ``adam_epsilon`` (Adam), and ``weight_decay`` where the space has it
(else 0); the model builder gets the same dict. Each epoch's validation accuracy is reported to Optuna's
pruner; at the end the trial records :data:`SCORE_ATTRS` (the test accuracy only with ``score_test``,
and the search never reads it). A diverging trial (NaN or infinite training loss) is pruned with its
reason in the user attribute ``failure``.
"""

import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace

import numpy as np
import optuna
import torch
from torch import Tensor, nn

from fusedbn.tuning.space import OPTIMIZERS
from fusedbn.tuning.storage import FAILURE_ATTR

ModelBuilder = Callable[[Mapping[str, float]], nn.Module]
EpochCallback = Callable[[int, nn.Module], None]
SCORE_ATTRS = ("train_accuracy", "train_loss", "valid_loss", "test_accuracy")


def add_biases(layers: Sequence[nn.Module]) -> None:
    """Give each layer (Linear or convolution) a bias drawn as torch draws one, from torch's global generator:
    called after every weight is drawn, it leaves the weights as they would be without biases."""
    for layer in layers:
        bound = 1.0 / layer.weight[0].numel() ** 0.5
        layer.bias = nn.Parameter(torch.empty(layer.weight.shape[0]).uniform_(-bound, bound))


class Diverged(ArithmeticError):
    """The training loss became NaN or infinite."""


class TaskError(ValueError):
    """An unknown task, or a task that cannot be built here."""


@dataclass
class HeldOutScores:
    """A configuration scored on the test split: ``valid_accuracy`` and ``test_accuracy`` of the model trained
    on the ``train_examples`` of the training split, ``test_accuracy_all`` of the one retrained on the
    ``train_examples_all`` of the training and validation splits."""

    valid_accuracy: float
    test_accuracy: float
    test_accuracy_all: float
    train_examples: int
    train_examples_all: int


@dataclass
class Task:
    """A classification problem: ``build_model(params)`` returns a fresh model giving class logits.

    ``train``, ``valid`` and the optional ``test`` are ``(inputs, integer class targets)`` pairs. Each trial
    trains ``epochs`` epochs with ``optimizer`` ("sgd" with momentum, or "adam") on ``device``, in a new
    random batch order every epoch (``shuffle=False``: in order). ``score_test``: whether each trial records
    its test accuracy (else the test split is left for :meth:`held_out_scores`).
    """

    build_model: ModelBuilder
    train: tuple[Tensor, Tensor]
    valid: tuple[Tensor, Tensor]
    epochs: int = 10
    optimizer: str = "sgd"
    device: str = "cpu"
    test: tuple[Tensor, Tensor] | None = None
    score_test: bool = True
    shuffle: bool = True

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        for split, (inputs, targets) in self.splits().items():
            if len(inputs) != len(targets) or len(inputs) == 0:
                raise ValueError(
                    f"{split}: need as many targets as inputs, and at least one, "
                    f"got {len(inputs)} inputs and {len(targets)} targets"
                )
        try:
            device_type = torch.device(self.device).type
        except RuntimeError as error:
            raise ValueError(f"unknown device {self.device!r}: {str(error).splitlines()[0]}") from None
        if device_type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {self.device!r} asked for, but torch finds no CUDA GPU")

    def splits(self) -> dict[str, tuple[Tensor, Tensor]]:
        """The task's splits by name: "train", "valid" and, when given, "test"."""
        named = {"train": self.train, "valid": self.valid}
        return named if self.test is None else {**named, "test": self.test}

    def trial_splits(self) -> dict[str, tuple[Tensor, Tensor]]:
        """The splits each trial scores: all of them, or all but "test" when ``score_test`` is off."""
        return {name: pair for name, pair in self.splits().items() if self.score_test or name != "test"}

    def required_params(self) -> set[str]:
        """The hyperparameters the training loop itself reads (the model builder may read more)."""
        common = {"learning_rate", "lr_decay", "batch_size"}
        if self.optimizer == "sgd":
            return common | {"momentum"}
        return common | {"adam_beta1", "adam_beta2", "adam_epsilon"}

    def train_model(
        self, params: Mapping[str, float], seed: int, after_epoch: EpochCallback | None = None
    ) -> nn.Module:
        """Train a fresh model with ``params`` and return it; raises :class:`Diverged`.

        ``seed`` fixes all randomness: the batch order (a generator of its own) and, through the global
        generators of torch, NumPy and Python, the initial weights, Dropout and anything else the model draws;
        the same seed, parameters and threads give the same model, bit for bit, on the CPU.
        ``after_epoch(epoch, model)`` runs after each epoch (from 0) and may raise to stop the run.
        """
        device = torch.device(self.device)
        with seeded(seed, device):
            model = self.build_model(params).to(device)
            optimizer = self._make_optimizer(model, params)
            batch_order = torch.Generator().manual_seed(seed)
            x_train, y_train = (t.to(device) for t in self.train)
            batch_size = int(params["batch_size"])
            for epoch in range(self.epochs):
                for group in optimizer.param_groups:
                    group["lr"] = params["learning_rate"] / (1.0 + params["lr_decay"] * epoch)
                model.train()
                order = (
                    torch.randperm(len(x_train), generator=batch_order)
                    if self.shuffle
                    else torch.arange(len(x_train))
                ).to(device)
                # Drop a last batch of one example: BatchNorm cannot normalise a single value.
                n_used = len(order) - 1 if len(order) % batch_size == 1 else len(order)
                for start in range(0, n_used, batch_size):
                    batch = order[start : start + batch_size]
                    loss = nn.functional.cross_entropy(model(x_train[batch]), y_train[batch])
                    if not torch.isfinite(loss):
                        raise Diverged(f"diverged: training loss {loss.item()} in epoch {epoch + 1}")
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                if after_epoch is not None:
                    after_epoch(epoch, model)
        return model

    def scores(self, model: nn.Module) -> dict[str, float]:
        """Accuracy and mean loss of ``model`` (eval mode) on each of :meth:`trial_splits`:
        "<split>_accuracy", "<split>_loss"."""
        measured: dict[str, float] = {}
        for split, (inputs, targets) in self.trial_splits().items():
            accuracy, loss = evaluate_with_loss(model, inputs.to(self.device), targets.to(self.device))
            measured[f"{split}_accuracy"], measured[f"{split}_loss"] = accuracy, loss
        return measured

    def fit(self, params: Mapping[str, float], trial: optuna.Trial, seed: int) -> float:
        """Train with ``params``, reporting validation accuracy each epoch; return the last and record the
        final model's :data:`SCORE_ATTRS`. Raises :class:`optuna.TrialPruned` when pruned or diverged."""
        x_valid, y_valid = (t.to(self.device) for t in self.valid)

        def report(epoch: int, model: nn.Module) -> None:
            accuracy = evaluate(model, x_valid, y_valid)
            trial.report(accuracy, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned after epoch {epoch + 1} at accuracy {accuracy:.4f}")

        model = None
        try:
            model = self.train_model(params, seed, after_epoch=report)
            measured = self.scores(model)
            for name in SCORE_ATTRS:
                if name in measured:
                    trial.set_user_attr(name, measured[name])
            return measured["valid_accuracy"]
        except Diverged as error:
            trial.set_user_attr(FAILURE_ATTR, str(error))
            raise optuna.TrialPruned(str(error)) from error
        finally:
            del model
            if torch.device(self.device).type == "cuda":
                torch.cuda.empty_cache()

    def held_out_scores(self, params: Mapping[str, float], seed: int) -> "HeldOutScores":
        """Score ``params`` on the test split: trained on the training split with ``seed`` (as its trial
        was) and retrained on training and validation together. Raises ValueError when the task has no test
        split."""
        if self.test is None:
            raise ValueError("the task has no test split to score on")
        x_test, y_test = (t.to(self.device) for t in self.test)
        model = self.train_model(params, seed)
        everything = tuple(torch.cat(pair) for pair in zip(self.train, self.valid, strict=True))
        retrained = replace(self, train=everything).train_model(params, seed)
        return HeldOutScores(
            valid_accuracy=evaluate(model, *(t.to(self.device) for t in self.valid)),
            test_accuracy=evaluate(model, x_test, y_test),
            test_accuracy_all=evaluate(retrained, x_test, y_test),
            train_examples=len(self.train[0]),
            train_examples_all=len(everything[0]),
        )

    def _make_optimizer(self, model: nn.Module, params: Mapping[str, float]) -> torch.optim.Optimizer:
        common = {"lr": params["learning_rate"], "weight_decay": params.get("weight_decay", 0.0)}
        if self.optimizer == "sgd":
            return torch.optim.SGD(model.parameters(), momentum=params["momentum"], **common)
        betas = (params["adam_beta1"], params["adam_beta2"])
        return torch.optim.Adam(model.parameters(), betas=betas, eps=params["adam_epsilon"], **common)


@contextmanager
def kept_global_random_state() -> Iterator[None]:
    """Put NumPy's and Python's global random generators back as they were when the block ends."""
    numpy_state, python_state = np.random.get_state(), random.getstate()
    try:
        yield
    finally:
        np.random.set_state(numpy_state)
        random.setstate(python_state)


@contextmanager
def seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Run the block with the global generators of torch (CPU and ``device``), NumPy and Python seeded from
    ``seed``, and put their states back after."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), kept_global_random_state():
        torch.manual_seed(seed)
        np.random.seed(seed % 2**32)
        random.seed(seed)
        yield


@contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Run the block with ``threads`` CPU threads in torch's intra-op pool, then restore the count."""
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@torch.no_grad()
def evaluate_with_loss(model: nn.Module, inputs: Tensor, targets: Tensor) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) of ``model`` in eval mode on ``inputs``."""
    model.eval()
    logits = model(inputs)
    accuracy = (logits.argmax(dim=1) == targets).float().mean().item()
    return accuracy, nn.functional.cross_entropy(logits, targets).item()


def evaluate(model: nn.Module, inputs: Tensor, targets: Tensor) -> float:
    """Fraction of ``inputs`` that ``model`` (in eval mode) assigns to their target class."""
    return evaluate_with_loss(model, inputs, targets)[0]
