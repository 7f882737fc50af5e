"""The built-in tasks of ``fusedbn tune --task`` and ``fusedbn science --task``: ``digits`` (scikit-learn's
8x8 digits, an MLP; every trial scores the test split) and ``mnist1d`` (MNIST-1D, a 1D CNN; the test split is
read only after the search, to score the chosen configuration)."""

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial

from torch import Tensor, nn

from fusedbn.tuning import digits, mnist1d
from fusedbn.tuning.space import Param, SpaceError, default_space
from fusedbn.tuning.training import Task, TaskError


@dataclass(frozen=True)
class TaskDefinition:
    """One built-in task.

    ``splits()`` (``splits(data_seed)`` for generated data, whose default seed is ``data_seed``) gives the
    "train", "valid" and "test" splits, ``model(params, batchnorm=, bias=)`` builds a network,
    ``space(optimizer)`` gives the search space, ``score_test`` says whether trials score the test split;
    ``epochs``, ``optimizer``, ``tiers``, ``trials`` and ``stages`` are its command-line defaults; ``limits``:
    name -> (lowest, highest) a range may reach (infinite: no bound); ``width`` and ``layer`` name the width
    parameter and the layer before each BatchNorm, for the experiments.
    """

    name: str
    splits: Callable[..., dict[str, tuple[Tensor, Tensor]]]
    model: Callable[..., nn.Module]
    space: Callable[[str], list[Param]]
    epochs: int
    optimizer: str
    width: str
    layer: str
    tiers: int = 2
    trials: int = 10
    stages: int = 3
    data_seed: int | None = None
    score_test: bool = True
    limits: Mapping[str, tuple[float, float]] = field(default_factory=dict)

    def study_name(self, data_seed: int | None) -> str:
        """The default study name: ``fusedbn-<task>``, with ``-data<seed>`` for a non-default data seed."""
        suffix = "" if data_seed in (None, self.data_seed) else f"-data{data_seed}"
        return f"fusedbn-{self.name}{suffix}"

    def build(
        self,
        epochs: int | None = None,
        optimizer: str | None = None,
        device: str = "cpu",
        batchnorm: bool = True,
        data_seed: int | None = None,
        bias: bool = False,
    ) -> Task:
        """The task's :class:`Task` (defaults: this definition's), without BatchNorm for ``batchnorm=False``,
        with a bias before each BatchNorm for ``bias``. Raises :class:`TaskError` for a data seed the task
        cannot take or a missing package."""
        if self.data_seed is None and data_seed is not None:
            raise TaskError(f"--data-seed: task {self.name} has fixed data and takes no data seed")
        seed = self.data_seed if data_seed is None else data_seed
        if seed is not None and not 0 <= seed < 2**32:
            raise TaskError(f"--data-seed must be an integer in [0, 2**32), got {seed}")
        return Task(
            build_model=partial(self.model, batchnorm=batchnorm, bias=bias),
            **(self.splits() if seed is None else self.splits(seed)),
            epochs=self.epochs if epochs is None else epochs,
            optimizer=self.optimizer if optimizer is None else optimizer,
            device=device,
            score_test=self.score_test,
        )

    def check_ranges(self, space: Sequence[Param]) -> None:
        """Raise :class:`~fusedbn.tuning.space.SpaceError` for a parameter whose range leaves the task's
        limits."""
        for param in space:
            lowest, highest = self.limits.get(param.name, (-math.inf, math.inf))
            if param.low < lowest or param.high > highest:
                raise SpaceError(
                    f"{param.name}: range [{param.low}, {param.high}] does not fit task {self.name}, "
                    f"which takes [{lowest}, {highest}]"
                )


TASKS: dict[str, TaskDefinition] = {
    "digits": TaskDefinition(
        name="digits",
        splits=digits.digits_splits,
        model=digits.build_mlp,
        space=default_space,
        epochs=8,
        optimizer="sgd",
        width="hidden_units",
        layer="Linear",
    ),
    "mnist1d": TaskDefinition(
        name="mnist1d",
        splits=mnist1d.mnist1d_splits,
        model=mnist1d.build_cnn,
        space=mnist1d.cnn_space,
        epochs=30,
        optimizer="adam",
        width="channels",
        layer="Conv1d",
        data_seed=mnist1d.DATA_SEED,
        score_test=False,  # its test split is read only to score the chosen configuration
        # A CNN needs a convolution; a batch cannot be larger than the training split.
        limits={"num_layers": (1, math.inf), "batch_size": (-math.inf, mnist1d.TRAIN_EXAMPLES)},
    ),
}


def get_task(name: str) -> TaskDefinition:
    """The built-in task called ``name``; raises :class:`TaskError` naming the known ones."""
    if name not in TASKS:
        raise TaskError(f"unknown task {name!r}; choose one of {', '.join(TASKS)}")
    return TASKS[name]
