"""A classification task to tune, and the training run that turns one set of hyperparameters into a score.

A :class:`Task` is what a user brings: a model builder and training/validation tensors. The training
loop reads these hyperparameters from the dict it is given (the tuned ones and the defaults of the
others; see :mod:`fusedbn.tuning.space`): ``learning_rate``, ``lr_decay``, ``batch_size``, and
``momentum`` for SGD or ``adam_beta1``, ``adam_beta2``, ``adam_epsilon`` for Adam. The model builder
gets the same dict, so it can read ``hidden_units``, ``num_layers``, ``bn_beta`` or any parameter of
the user's own.

Scoring: validation accuracy after every epoch, reported to Optuna so its pruner can stop a poor trial
early. A diverging trial (a NaN or infinite training loss) raises :class:`optuna.TrialPruned` with the
reason in the trial's user attribute ``failure``: the trial counts towards the stage's budget and its
sampled point stays visible in the history, but it has no score.
"""

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import optuna
import torch
from torch import Tensor, nn

from fusedbn.tuning.space import OPTIMIZERS
from fusedbn.tuning.storage import FAILURE_ATTR

ModelBuilder = Callable[[Mapping[str, float]], nn.Module]


@dataclass
class Task:
    """A classification problem: ``build_model(params)`` returns a fresh model giving class logits.

    ``train`` and ``valid`` are ``(inputs, integer class targets)`` tensor pairs. Each trial trains for
    ``epochs`` epochs with ``optimizer`` ("sgd": SGD with momentum, or "adam") on ``device``.
    """

    build_model: ModelBuilder
    train: tuple[Tensor, Tensor]
    valid: tuple[Tensor, Tensor]
    epochs: int = 10
    optimizer: str = "sgd"
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        for split, (inputs, targets) in (("train", self.train), ("valid", self.valid)):
            if len(inputs) != len(targets) or len(inputs) == 0:
                raise ValueError(
                    f"{split}: need as many targets as inputs, and at least one, "
                    f"got {len(inputs)} inputs and {len(targets)} targets"
                )
        if torch.device(self.device).type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {self.device!r} asked for, but torch finds no CUDA GPU")

    def required_params(self) -> set[str]:
        """The hyperparameters the training loop itself reads (the model builder may read more)."""
        common = {"learning_rate", "lr_decay", "batch_size"}
        if self.optimizer == "sgd":
            return common | {"momentum"}
        return common | {"adam_beta1", "adam_beta2", "adam_epsilon"}

    def fit(self, params: Mapping[str, float], trial: optuna.Trial, seed: int) -> float:
        """Train a fresh model with ``params``; report validation accuracy each epoch; return the last.

        Raises :class:`optuna.TrialPruned` when the pruner stops the trial or the loss diverges.
        ``seed`` fixes the model's initial weights and the order of the mini-batches.
        """
        device = torch.device(self.device)
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            model = self.build_model(params).to(device)
        optimizer = self._make_optimizer(model, params)
        shuffle = torch.Generator().manual_seed(seed)
        x_train, y_train = (t.to(device) for t in self.train)
        x_valid, y_valid = (t.to(device) for t in self.valid)
        batch_size = int(params["batch_size"])
        loss_fn = nn.CrossEntropyLoss()
        try:
            for epoch in range(self.epochs):
                for group in optimizer.param_groups:
                    group["lr"] = params["learning_rate"] / (1.0 + params["lr_decay"] * epoch)
                model.train()
                order = torch.randperm(len(x_train), generator=shuffle).to(device)
                # Drop a last batch of one example: BatchNorm cannot normalise a single value.
                n_used = len(order) - 1 if len(order) % batch_size == 1 else len(order)
                for start in range(0, n_used, batch_size):
                    batch = order[start : start + batch_size]
                    loss = loss_fn(model(x_train[batch]), y_train[batch])
                    if not torch.isfinite(loss):
                        reason = f"diverged: training loss {loss.item()} in epoch {epoch + 1}"
                        trial.set_user_attr(FAILURE_ATTR, reason)
                        raise optuna.TrialPruned(reason)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                accuracy = evaluate(model, x_valid, y_valid)
                trial.report(accuracy, epoch)
                if trial.should_prune():
                    raise optuna.TrialPruned(f"pruned after epoch {epoch + 1} at accuracy {accuracy:.4f}")
            return accuracy
        finally:
            del model, optimizer
            if device.type == "cuda":
                torch.cuda.empty_cache()

    def _make_optimizer(self, model: nn.Module, params: Mapping[str, float]) -> torch.optim.Optimizer:
        if self.optimizer == "sgd":
            return torch.optim.SGD(
                model.parameters(), lr=params["learning_rate"], momentum=params["momentum"]
            )
        return torch.optim.Adam(
            model.parameters(),
            lr=params["learning_rate"],
            betas=(params["adam_beta1"], params["adam_beta2"]),
            eps=params["adam_epsilon"],
        )


@torch.no_grad()
def evaluate(model: nn.Module, inputs: Tensor, targets: Tensor) -> float:
    """Fraction of ``inputs`` that ``model`` (in eval mode) assigns to their target class."""
    model.eval()
    predictions = model(inputs).argmax(dim=1)
    return (predictions == targets).float().mean().item()
