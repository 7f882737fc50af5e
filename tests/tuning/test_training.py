"""The training run behind each trial (fusedbn.tuning.training.Task)."""

import math
import random

import numpy as np
import optuna
import pytest
import torch
from torch import nn

from fusedbn.tuning.storage import FAILURE_ATTR
from fusedbn.tuning.training import Task, evaluate, torch_threads

SGD_PARAMS = {
    "learning_rate": 0.05,
    "momentum": 0.9,
    "batch_size": 32,
    "lr_decay": 0.0,
    "hidden_units": 32,
    "num_layers": 1,
    "bn_beta": 0.9,
}
ADAM_PARAMS = {
    **SGD_PARAMS,
    "learning_rate": 0.01,
    "adam_beta1": 0.9,
    "adam_beta2": 0.999,
    "adam_epsilon": 1e-8,
}


class Recorder(optuna.trial.FixedTrial):
    """A FixedTrial that keeps what the run reports and attributes, and prunes when told to."""

    def __init__(self, prune_after: int | None = None) -> None:
        super().__init__({})
        self.reports: list[tuple[int, float]] = []
        self.attrs: dict[str, object] = {}
        self._prune_after = prune_after

    def report(self, value: float, step: int) -> None:
        self.reports.append((step, value))

    def should_prune(self) -> bool:
        return self._prune_after is not None and len(self.reports) > self._prune_after

    def set_user_attr(self, key: str, value: object) -> None:
        self.attrs[key] = value


def test_fit_reports_accuracy_every_epoch_and_learns(tiny_task: Task) -> None:
    trial = Recorder()
    accuracy = tiny_task.fit(SGD_PARAMS, trial, seed=0)
    assert [step for step, _ in trial.reports] == [0, 1]
    assert trial.reports[-1][1] == accuracy
    assert accuracy > 0.6, "ten classes: chance is 0.1"


def test_fit_with_adam_learns(tiny_task: Task) -> None:
    tiny_task.optimizer = "adam"
    assert tiny_task.fit(ADAM_PARAMS, Recorder(), seed=0) > 0.6


def test_same_seed_gives_the_same_run_and_another_seed_another(tiny_task: Task) -> None:
    runs = [Recorder(), Recorder(), Recorder()]
    for trial, seed in zip(runs, (3, 3, 4), strict=True):
        tiny_task.fit(SGD_PARAMS, trial, seed=seed)
    assert runs[0].reports == runs[1].reports
    assert runs[0].reports != runs[2].reports


class _Noisy(nn.Module):
    """A model whose training draws from torch's, NumPy's and Python's global generators."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(64, 10)
        self.dropout = nn.Dropout(0.3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            x = x + torch.from_numpy(np.random.normal(0.0, 0.1, x.shape)).float() + random.gauss(0.0, 0.1)
        return self.linear(self.dropout(x))


def test_train_model_draws_all_its_randomness_from_its_seed_and_leaves_the_callers_alone(
    tiny_task: Task,
) -> None:
    tiny_task.build_model = lambda params: _Noisy()
    torch.manual_seed(1), np.random.seed(1), random.seed(1)
    before = (torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate())
    first = tiny_task.train_model(SGD_PARAMS, seed=5).state_dict()
    assert torch.equal(torch.get_rng_state(), before[0]), "torch's generator is put back"
    assert (np.random.get_state()[1] == before[1]).all() and random.getstate() == before[2]
    torch.manual_seed(2), np.random.seed(2), random.seed(2)  # another caller's state: no matter
    again = tiny_task.train_model(SGD_PARAMS, seed=5).state_dict()
    assert all(torch.equal(first[name], again[name]) for name in first), "bit for bit"
    other = tiny_task.train_model(SGD_PARAMS, seed=6).state_dict()
    assert not torch.equal(first["linear.weight"], other["linear.weight"])


def test_a_diverging_run_is_pruned_with_its_reason(tiny_task: Task) -> None:
    trial = Recorder()
    with pytest.raises(optuna.TrialPruned, match="diverged"):
        tiny_task.fit({**SGD_PARAMS, "learning_rate": 1e12, "momentum": 0.999}, trial, seed=0)
    assert trial.attrs[FAILURE_ATTR].startswith("diverged: training loss")


def test_the_pruner_stops_the_run(tiny_task: Task) -> None:
    tiny_task.epochs = 5
    trial = Recorder(prune_after=1)
    with pytest.raises(optuna.TrialPruned, match="after epoch 2"):
        tiny_task.fit(SGD_PARAMS, trial, seed=0)
    assert len(trial.reports) == 2


def test_learning_rate_decays_each_epoch(tiny_task: Task) -> None:
    seen: list[float] = []

    class Spy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Linear(64, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)

    def build(params: dict) -> nn.Module:
        return Spy()

    task = Task(build_model=build, train=tiny_task.train, valid=tiny_task.valid, epochs=3)
    original_step = torch.optim.SGD.step

    def step(self: torch.optim.SGD, *args: object, **kwargs: object) -> object:
        if not seen or seen[-1] != self.param_groups[0]["lr"]:
            seen.append(self.param_groups[0]["lr"])
        return original_step(self, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.optim.SGD, "step", step)
        task.fit({**SGD_PARAMS, "learning_rate": 0.1, "lr_decay": 0.5}, Recorder(), seed=0)
    # lr = 0.1 / (1 + 0.5 * epoch)
    assert seen == pytest.approx([0.1, 0.1 / 1.5, 0.1 / 2.0])


def test_a_last_batch_of_one_example_is_skipped(tiny_task: Task) -> None:
    # 400 training images in batches of 133: the last batch would hold one image, which BatchNorm refuses.
    accuracy = tiny_task.fit({**SGD_PARAMS, "batch_size": 133}, Recorder(), seed=0)
    assert math.isfinite(accuracy)


def test_evaluate_counts_correct_predictions() -> None:
    model = nn.Identity()
    logits = torch.tensor([[2.0, 1.0], [0.0, 3.0], [5.0, 1.0], [1.0, 0.0]])
    assert evaluate(model, logits, torch.tensor([0, 1, 1, 1])) == 0.5


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"optimizer": "rmsprop"}, "unknown optimizer 'rmsprop'"),
        ({"epochs": 0}, "epochs must be >= 1"),
        ({"valid": (torch.zeros(3, 64), torch.zeros(2, dtype=torch.long))}, "valid: need as many targets"),
        ({"train": (torch.zeros(0, 64), torch.zeros(0, dtype=torch.long))}, "at least one"),
        ({"device": "gpu0"}, "unknown device 'gpu0': "),
    ],
)
def test_unusable_tasks_are_refused(tiny_task: Task, change: dict, message: str) -> None:
    fields = {"build_model": tiny_task.build_model, "train": tiny_task.train, "valid": tiny_task.valid}
    with pytest.raises(ValueError, match=message):
        Task(**{**fields, **change})


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_cuda_without_a_gpu_is_refused(tiny_task: Task) -> None:
    with pytest.raises(ValueError, match="no CUDA GPU"):
        Task(build_model=tiny_task.build_model, train=tiny_task.train, valid=tiny_task.valid, device="cuda")


def test_training_loop_names_the_parameters_it_reads(tiny_task: Task) -> None:
    assert tiny_task.required_params() == {"learning_rate", "lr_decay", "batch_size", "momentum"}
    tiny_task.optimizer = "adam"
    assert tiny_task.required_params() == {
        "learning_rate",
        "lr_decay",
        "batch_size",
        "adam_beta1",
        "adam_beta2",
        "adam_epsilon",
    }


def test_fit_records_the_final_models_scores_and_train_model_rebuilds_it(tiny_task: Task) -> None:
    trial = Recorder()
    accuracy = tiny_task.fit(SGD_PARAMS, trial, seed=5)
    model = tiny_task.train_model(SGD_PARAMS, seed=5)
    assert evaluate(model, *tiny_task.valid) == accuracy
    assert trial.attrs["test_accuracy"] == evaluate(model, *tiny_task.test)
    assert trial.attrs["train_accuracy"] == evaluate(model, *tiny_task.train)
    with torch.no_grad():
        model.eval()
        loss = nn.functional.cross_entropy(model(tiny_task.train[0]), tiny_task.train[1]).item()
    assert trial.attrs["train_loss"] == pytest.approx(loss, rel=1e-6)
    assert 0 < trial.attrs["valid_loss"] and math.isfinite(trial.attrs["valid_loss"])


def test_a_task_without_a_test_split_records_no_test_accuracy(tiny_task: Task) -> None:
    tiny_task.test = None
    trial = Recorder()
    tiny_task.fit(SGD_PARAMS, trial, seed=0)
    assert "test_accuracy" not in trial.attrs and "train_accuracy" in trial.attrs


def test_score_test_off_keeps_trials_away_from_the_test_split(tiny_task: Task) -> None:
    tiny_task.score_test = False
    trial = Recorder()
    tiny_task.fit(SGD_PARAMS, trial, seed=0)
    assert "test_accuracy" not in trial.attrs and "test_loss" not in trial.attrs
    assert set(tiny_task.splits()) == {"train", "valid", "test"}


def test_held_out_scores_rebuild_the_trials_model_and_retrain_on_train_and_valid(tiny_task: Task) -> None:
    tiny_task.score_test = False
    accuracy = tiny_task.fit(SGD_PARAMS, Recorder(), seed=9)
    scores = tiny_task.held_out_scores(SGD_PARAMS, seed=9)
    assert scores.valid_accuracy == accuracy
    assert scores.test_accuracy == evaluate(tiny_task.train_model(SGD_PARAMS, seed=9), *tiny_task.test)
    assert (scores.train_examples, scores.train_examples_all) == (400, 520)
    everything = tuple(torch.cat(pair) for pair in zip(tiny_task.train, tiny_task.valid, strict=True))
    retrained = Task(
        build_model=tiny_task.build_model, train=everything, valid=tiny_task.valid, epochs=tiny_task.epochs
    ).train_model(SGD_PARAMS, seed=9)
    assert scores.test_accuracy_all == evaluate(retrained, *tiny_task.test)


def test_held_out_scores_need_a_test_split(tiny_task: Task) -> None:
    tiny_task.test = None
    with pytest.raises(ValueError, match="no test split"):
        tiny_task.held_out_scores(SGD_PARAMS, seed=0)


class _BatchRecorder(nn.Module):
    """Records the first input value of every training batch it sees."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(1, 2)
        self.batches: list[list[float]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.batches.append(x[:, 0].tolist())
        return self.linear(x)


@pytest.mark.parametrize("shuffle", [True, False])
def test_batches_come_in_order_without_shuffling(shuffle: bool) -> None:
    inputs = torch.arange(8.0).unsqueeze(1)
    model = _BatchRecorder()
    task = Task(
        build_model=lambda _: model,
        train=(inputs, torch.zeros(8, dtype=torch.long)),
        valid=(inputs, torch.zeros(8, dtype=torch.long)),
        epochs=2,
        shuffle=shuffle,
    )
    task.train_model({**SGD_PARAMS, "batch_size": 4}, seed=0)
    in_order = [[0.0, 1.0, 2.0, 3.0], [4.0, 5.0, 6.0, 7.0]] * 2
    assert (model.batches == in_order) is not shuffle
    assert sorted(v for batch in model.batches for v in batch) == sorted(2 * inputs.flatten().tolist())


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_weight_decay_is_read_when_the_space_has_it(tiny_task: Task, optimizer: str) -> None:
    tiny_task.optimizer = optimizer
    model = nn.Linear(2, 2)
    params = ADAM_PARAMS if optimizer == "adam" else SGD_PARAMS
    assert tiny_task._make_optimizer(model, params).param_groups[0]["weight_decay"] == 0.0
    decayed = tiny_task._make_optimizer(model, {**params, "weight_decay": 0.01})
    assert decayed.param_groups[0]["weight_decay"] == 0.01


def test_torch_threads_holds_for_the_block_and_is_restored_even_on_an_error() -> None:
    before = torch.get_num_threads()
    target = 2 if before != 2 else 3
    with pytest.raises(RuntimeError, match="inside"), torch_threads(target):
        assert torch.get_num_threads() == target
        raise RuntimeError("inside")
    assert torch.get_num_threads() == before
    with pytest.raises(ValueError, match="threads must be >= 1, got 0"), torch_threads(0):
        pytest.fail("the block must not run")
    assert torch.get_num_threads() == before
