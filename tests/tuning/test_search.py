"""Stages, budget, seeding, resume, several workers and failures of fusedbn.tuning.search."""

import gc
import math
import os
import re
import signal
import time
import weakref
from collections.abc import Callable
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
from optuna.trial import TrialState
from torch import nn

import fusedbn.cli
from fusedbn.tuning.search import (
    SearchConfig,
    SeededGridSampler,
    SeededRandomSampler,
    TuningError,
    TuningInterrupted,
    grid_points,
    score_chosen,
    tune,
)
from fusedbn.tuning.space import Param, SpaceError, default_space, with_ranges
from fusedbn.tuning.storage import (
    FAILURE_ATTR,
    HEARTBEAT_ATTR,
    StorageError,
    open_storage,
)
from fusedbn.tuning.training import Task, evaluate

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def config(tmp_path: Path, **changes: object) -> SearchConfig:
    settings = {"study_name": "t", "storage": f"sqlite:///{tmp_path}/study.db", "trials": 4, "stages": 2}
    return SearchConfig(**{**settings, "progress": False, **changes})


def stage_trials(url: str, name: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=open_storage(url)).trials


# Sampling


def sampled(seed: int, stage: int, count: int, param: Param) -> np.ndarray:
    study = optuna.create_study(sampler=SeededRandomSampler(seed, stage))
    return np.array([param.suggest(study.ask(), param.low, param.high) for _ in range(count)])


def test_seeded_random_sampler_repeats_with_the_seed_and_differs_without() -> None:
    lr = default_space()[0]
    assert np.array_equal(sampled(7, 1, 20, lr), sampled(7, 1, 20, lr))
    assert not np.array_equal(sampled(7, 1, 20, lr), sampled(8, 1, 20, lr))
    assert not np.array_equal(sampled(7, 1, 20, lr), sampled(7, 2, 20, lr))
    assert len(set(sampled(7, 1, 20, lr))) == 20


def test_seeded_random_sampler_keeps_the_scales() -> None:
    space = {p.name: p for p in default_space()}
    lr = sampled(0, 1, 4000, space["learning_rate"])
    shares = np.histogram(np.log10(lr), bins=[-4, -3, -2, -1, 0])[0] / 4000
    assert np.allclose(shares, 0.25, atol=0.03), shares
    beta = sampled(0, 1, 4000, space["momentum"])
    assert abs(np.mean(beta < 0.99) - 0.5) < 0.03
    hidden = sampled(0, 1, 2000, space["hidden_units"])
    assert hidden.min() >= 16 and hidden.max() <= 256 and abs(np.mean(hidden < 64) - 0.5) < 0.05
    batch = sampled(0, 1, 2000, space["batch_size"])
    assert set(batch) == {16, 32, 64, 128, 256}


def test_grid_sampler_covers_cell_centres_on_each_scale_in_a_seeded_order(tiny_task: Task) -> None:
    space = with_ranges(default_space(), {"learning_rate": (1e-4, 1.0), "momentum": (0.9, 0.999)})
    tuned = [p for p in space if p.name in ("learning_rate", "momentum")]
    names = [p.optuna_name for p in tuned]

    def points(seed: int) -> list[tuple[float, float]]:
        study = optuna.create_study(sampler=SeededGridSampler(seed, 1, names, points=3))
        trials = [study.ask() for _ in range(9)]
        return [tuple(p.suggest(trial, p.low, p.high) for p in tuned) for trial in trials]

    first = points(0)
    assert len(set(first)) == 9, "nine trials visit the nine points of a 3 x 3 grid once each"
    lrs = sorted({lr for lr, _ in first})
    # Centres of three equal cells of 4 decades: 10^(-4 + 2/3), 10^-2, 10^(-2/3).
    assert np.allclose(np.log10(lrs), [-4 + 2 / 3, -2, -2 / 3])
    betas = np.array(sorted({beta for _, beta in first}))
    # 1 - beta over [1e-3, 1e-1]: cell centres at 10^(-3 + 1/3), 10^-2, 10^(-1 - 1/3).
    assert np.allclose(sorted(np.log10(1 - betas)), [-3 + 1 / 3, -2, -1 - 1 / 3])
    assert set(points(1)) == set(first) and points(1) != first, "another seed: same grid, another order"
    assert points(0) == first


def test_grid_points_is_the_largest_grid_within_the_budget() -> None:
    assert grid_points(16, 2) == 4 and grid_points(17, 2) == 4 and grid_points(16, 4) == 2
    assert grid_points(27, 3) == 3 and grid_points(26, 3) == 2
    with pytest.raises(ValueError, match="at least 8 trials"):
        grid_points(7, 3)


def test_training_and_sampling_seeds_are_separable(tiny_task: Task) -> None:
    def run(seed: int, train_seed: int | None) -> list[optuna.trial.FrozenTrial]:
        settings = {"study_name": "s", "storage": "memory", "trials": 3, "stages": 1, "tiers": 1}
        result = tune(
            tiny_task,
            default_space(),
            SearchConfig(**settings, seed=seed, train_seed=train_seed, pruner="none", progress=False),
        )
        return result.stages[0].trials()

    base = run(0, 5)
    same_points = run(0, 6)
    assert [t.params for t in base] == [t.params for t in same_points]
    assert [t.value for t in base] != [t.value for t in same_points], "another training seed trains anew"
    other_points = run(1, 5)
    assert [t.params for t in base] != [t.params for t in other_points]
    assert [t.value for t in run(0, 5)] == [t.value for t in base]


def test_a_trial_with_dropout_is_reproduced_bit_for_bit_by_its_seed(tiny_task: Task) -> None:
    def build(params: dict) -> nn.Module:  # Dropout draws random numbers all through training
        width = int(params["hidden_units"])
        return nn.Sequential(nn.Linear(64, width), nn.ReLU(), nn.Dropout(0.5), nn.Linear(width, 10))

    tiny_task.build_model = build

    def run(train_seed: int, callers_seed: int) -> list[tuple]:
        torch.manual_seed(callers_seed)  # whatever the caller's own generator holds
        settings = {"study_name": "d", "storage": "memory", "stages": 2, "trials": 3, "pruner": "none"}
        config = SearchConfig(**settings, train_seed=train_seed, progress=False)
        return [
            (t.number, t.value, t.intermediate_values, t.user_attrs["train_loss"])
            for stage in tune(tiny_task, default_space(), config).stages
            for t in stage.trials()
        ]

    first = run(train_seed=3, callers_seed=1)
    assert run(train_seed=3, callers_seed=2) == first, "same configuration and seed: the same numbers"
    losses = [loss for *_, loss in first]
    assert len(set(losses)) == len(losses) and [loss for *_, loss in run(4, callers_seed=1)] != losses


def test_trials_train_on_the_configs_threads_and_tune_restores_the_count(tiny_task: Task) -> None:
    seen: list[int] = []
    build_mlp = tiny_task.build_model

    def build(params: dict) -> nn.Module:
        seen.append(torch.get_num_threads())
        return build_mlp(params)

    tiny_task.build_model = build
    tiny_task.score_test = False
    torch.set_num_threads(3)  # put back to 1 by the one_torch_thread fixture
    for threads in (1, 2):
        config = SearchConfig(
            study_name="n", storage="memory", stages=1, trials=1, threads=threads, progress=False
        )
        result = tune(tiny_task, default_space(), config)
        assert torch.get_num_threads() == 3
        score_chosen(tiny_task, result)  # trains the chosen configuration twice more
        assert seen[-3:] == [threads] * 3
        assert torch.get_num_threads() == 3
    assert SearchConfig(study_name="n", storage="memory").threads == 1, "as fusedbn tune"


def test_in_memory_storage_runs_a_study_without_heartbeats(tiny_task: Task) -> None:
    result = tune(
        tiny_task,
        default_space(),
        SearchConfig(study_name="m", storage="memory", trials=3, stages=2, progress=False),
    )
    trials = [t for stage in result.stages for t in stage.trials()]
    assert len(trials) == 6 and all(t.state in FINISHED for t in trials)
    assert not any(HEARTBEAT_ATTR in t.user_attrs for t in trials)
    assert all(
        "train_accuracy" in t.user_attrs and "test_accuracy" in t.user_attrs
        for t in trials
        if t.state == TrialState.COMPLETE
    )


class _Untouchable:
    """Stands in for a split that must not be read: any use of it fails the test."""

    def __getattr__(self, name: str) -> object:
        raise AssertionError(f"the test split was read during the search (.{name})")


def test_a_held_out_test_split_is_read_only_to_score_the_chosen_configuration(tiny_task: Task) -> None:
    tiny_task.score_test = False
    test = tiny_task.test
    tiny_task.test = (_Untouchable(), _Untouchable())
    settings = SearchConfig(study_name="h", storage="memory", trials=3, stages=2, seed=4, progress=False)
    result = tune(tiny_task, default_space(), settings)
    assert not any("test_accuracy" in t.user_attrs for stage in result.stages for t in stage.trials())
    tiny_task.test = test
    stage, best = result.best()
    scores = score_chosen(tiny_task, result)
    # Trained again with the trial's own seed, the chosen model is the trial's: same validation accuracy.
    assert scores.valid_accuracy == best.value
    model = tiny_task.train_model(result.params_of(best), settings.trial_seed(stage, best.number))
    assert scores.test_accuracy == evaluate(model, *test)
    assert scores.train_examples_all == len(tiny_task.train[0]) + len(tiny_task.valid[0])
    tiny_task.score_test = True
    assert score_chosen(tiny_task, result) is None, "a task whose trials score the test split already has it"


# Stages, seeding and budget


def test_stages_narrow_around_the_best_trials_and_keep_their_budget(tmp_path: Path, tiny_task: Task) -> None:
    result = tune(tiny_task, default_space(), config(tmp_path, trials=5, stages=2, keep_top=0.4))
    first, second = result.stages
    assert first.bounds == {
        "learning_rate": (1e-4, 1.0),
        "momentum": (0.9, 0.999),
        "hidden_units": (16, 256),
        "batch_size": (16, 256),
    }
    for stage in result.stages:
        assert sum(t.state in FINISHED for t in stage.trials()) == 5
    assert second.study.study_name == "t-stage2"
    assert second.study.user_attrs["bounds"] == {k: list(v) for k, v in second.bounds.items()}
    # The second stage spans the best 40% (2 of 5) of the first stage's complete trials, plus margins.
    best = sorted(first.trials(TrialState.COMPLETE), key=lambda t: t.value, reverse=True)[:2]
    for param in result.tuned:
        low, high = second.bounds[param.name]
        first_low, first_high = first.bounds[param.name]
        assert first_low <= low < high <= first_high
        for trial in best:
            assert low <= param.value_from(trial.params) <= high
        for trial in second.trials():
            assert low <= param.value_from(trial.params) <= high
    lr_width = [
        math.log10(s.bounds["learning_rate"][1] / s.bounds["learning_rate"][0]) for s in result.stages
    ]
    assert lr_width[1] < lr_width[0]


def test_the_same_seed_samples_the_same_values(tmp_path: Path, tiny_task: Task) -> None:
    def first_stage_params(name: str, seed: int) -> list[dict]:
        result = tune(
            tiny_task, default_space(), config(tmp_path, study_name=name, seed=seed, stages=1, trials=3)
        )
        return [t.params for t in sorted(result.stages[0].trials(), key=lambda t: t.number)]

    same_seed = first_stage_params("a", seed=5), first_stage_params("b", seed=5)
    assert same_seed[0] == same_seed[1]
    assert first_stage_params("c", seed=6) != same_seed[0]


def test_tpe_sampler_runs_a_stage(tmp_path: Path, tiny_task: Task) -> None:
    result = tune(tiny_task, default_space(), config(tmp_path, sampler="tpe", stages=1, trials=4))
    assert isinstance(result.stages[0].study.sampler, optuna.samplers.TPESampler)
    assert sum(t.state in FINISHED for t in result.stages[0].trials()) == 4


def test_tiers_fix_untuned_parameters_at_their_defaults(tmp_path: Path, tiny_task: Task) -> None:
    seen: list[dict] = []
    build_mlp = tiny_task.build_model

    def build(params: dict) -> nn.Module:
        seen.append(dict(params))
        return build_mlp(params)

    tiny_task.build_model = build
    result = tune(tiny_task, default_space(), config(tmp_path, tiers=1, stages=1, trials=3))
    assert [p.name for p in result.tuned] == ["learning_rate"]
    assert len({p["learning_rate"] for p in seen}) == 3
    assert all(p["hidden_units"] == 64 and p["momentum"] == 0.9 and p["batch_size"] == 64 for p in seen)
    assert all(set(t.params) == {"learning_rate"} for t in result.stages[0].trials())


# Failures


def test_diverging_trials_are_recorded_and_the_study_goes_on(tmp_path: Path, tiny_task: Task) -> None:
    space = with_ranges(default_space(), {"learning_rate": (1e8, 1e12)})
    result = tune(tiny_task, space, config(tmp_path, stages=1, trials=3))
    trials = result.stages[0].trials()
    assert [t.state for t in trials] == [TrialState.PRUNED] * 3
    assert all(t.user_attrs[FAILURE_ATTR].startswith("diverged") for t in trials)


def test_out_of_memory_fails_one_trial_not_the_study(tmp_path: Path, tiny_task: Task) -> None:
    build_mlp = tiny_task.build_model

    def build(params: dict) -> nn.Module:
        if params["hidden_units"] > 64:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return build_mlp(params)

    tiny_task.build_model = build
    result = tune(tiny_task, default_space(), config(tmp_path, stages=1, trials=6))
    trials = result.stages[0].trials()
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert failed, "with hidden units up to 256, some trials should have asked for more than 64"
    assert all(t.user_attrs[FAILURE_ATTR].startswith("out of memory: CUDA out of memory") for t in failed)
    assert sum(t.state in FINISHED for t in trials) == 6


def test_a_stage_whose_every_trial_fails_stops_the_study(tmp_path: Path, tiny_task: Task) -> None:
    def build(params: dict) -> nn.Module:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    tiny_task.build_model = build
    with pytest.raises(TuningError, match="3 trials failed, more than the budget of 2"):
        tune(tiny_task, default_space(), config(tmp_path, stages=1, trials=2))


def test_any_other_error_fails_its_trial_and_stops_the_search(tmp_path: Path, tiny_task: Task) -> None:
    def build(params: dict) -> nn.Module:
        raise RuntimeError("a bug in the model builder\nsecond line")

    tiny_task.build_model = build
    with pytest.raises(RuntimeError, match="a bug in the model builder"):
        tune(tiny_task, default_space(), config(tmp_path, stages=1, trials=3))
    (trial,) = stage_trials(f"sqlite:///{tmp_path}/study.db", "t-stage1")
    assert trial.state == TrialState.FAIL, "no trial may stay RUNNING after an error"
    assert trial.user_attrs[FAILURE_ATTR] == "RuntimeError: a bug in the model builder"


def test_ctrl_c_fails_the_running_trial_and_says_what_is_stored(tmp_path: Path, tiny_task: Task) -> None:
    build_mlp, calls = tiny_task.build_model, []

    def build(params: dict) -> nn.Module:
        calls.append(params)
        if len(calls) == 7:  # the second stage's third trial
            raise KeyboardInterrupt
        return build_mlp(params)

    tiny_task.build_model = build
    with pytest.raises(TuningInterrupted) as stop:
        tune(tiny_task, default_space(), config(tmp_path, stages=3, trials=4))
    assert isinstance(stop.value, KeyboardInterrupt), "code that catches Ctrl-C still catches it"
    assert stop.value.finished == {"t-stage1": 4, "t-stage2": 2}
    assert stop.value.storage == f"sqlite:///{tmp_path}/study.db"
    second = stage_trials(f"sqlite:///{tmp_path}/study.db", "t-stage2")
    assert [t.state for t in second] == [*[TrialState.COMPLETE] * 2, TrialState.FAIL]
    assert second[-1].user_attrs[FAILURE_ATTR].startswith("interrupted (Ctrl-C)")

    notes: list[str] = []
    tiny_task.build_model = build_mlp
    result = tune(tiny_task, default_space(), config(tmp_path, stages=3, trials=4), notify=notes.append)
    assert notes == [
        f"resuming: 6 finished trials of study 't' in sqlite:///{tmp_path}/study.db "
        "(stage 1: 4 finished, stage 2: 2 finished)"
    ]
    assert [sum(t.state in FINISHED for t in stage.trials()) for stage in result.stages] == [4, 4, 4]


def test_running_a_finished_study_again_says_so_and_how_to_start_a_new_one(
    tmp_path: Path, tiny_task: Task
) -> None:
    first = tune(tiny_task, default_space(), config(tmp_path, stages=2, trials=2))
    notes: list[str] = []
    again = tune(tiny_task, default_space(), config(tmp_path, stages=2, trials=2), notify=notes.append)
    assert notes == [
        f"study 't' in sqlite:///{tmp_path}/study.db is already finished (4 finished trials in 2 stages): "
        "nothing runs, its results are shown again. To start a new study, use another study name or "
        "storage (fusedbn tune: --study-name, --storage, or another --out folder for the default storage)"
    ]
    assert [s.trials() for s in again.stages] == [s.trials() for s in first.stages]
    notes.clear()
    tune(tiny_task, default_space(), config(tmp_path, stages=3, trials=2), notify=notes.append)
    assert notes[0].startswith("resuming: 4 finished trials"), "a study given another stage is not finished"


def test_the_progress_rate_counts_only_the_trials_run_by_this_process(
    tmp_path: Path, tiny_task: Task, capsys: pytest.CaptureFixture
) -> None:
    tune(tiny_task, default_space(), config(tmp_path, stages=1, trials=3))
    capsys.readouterr()
    tune(tiny_task, default_space(), config(tmp_path, stages=2, trials=3, progress=True))
    bars = capsys.readouterr().err.replace("\r", "\n").splitlines()
    resumed = [line for line in bars if line.startswith("stage 1/2:")]
    fresh = [line for line in bars if line.startswith("stage 2/2:")]
    assert resumed and all("3/3" in line and "?trial/s" in line for line in resumed), resumed
    assert any(re.search(r"\d/3 .*(\d+\.\d+)(trial/s|s/trial)", line) for line in fresh), fresh


def test_models_are_freed_between_trials(tmp_path: Path, tiny_task: Task) -> None:
    """No garbage collection runs between trials, so a trial's model must be freed as soon as the
    trial ends: by the time the next model is built, every earlier one is gone (with gc disabled)."""
    models: list[weakref.ref] = []
    alive_at_build: list[int] = []
    build_mlp = tiny_task.build_model

    def build(params: dict) -> nn.Module:
        alive_at_build.append(sum(ref() is not None for ref in models))
        model = build_mlp(params)
        models.append(weakref.ref(model))
        return model

    tiny_task.build_model = build
    # torch's first optimizer in a process keeps the frames of its construction alive (a one-time
    # cost of torch, not of the search): build one before counting.
    torch.optim.SGD(nn.Linear(1, 1, bias=False).parameters(), lr=0.1, momentum=0.9)
    gc.disable()
    try:
        tune(tiny_task, default_space(), config(tmp_path, stages=1, trials=4))
    finally:
        gc.enable()
    assert len(models) >= 4
    assert alive_at_build == [0] * len(models), "a trial's model outlived its trial"
    assert all(ref() is None for ref in models), "the last trial's model outlived the study"


# Bad arguments: refused before anything is written


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"trials": 0}, "trials must be >= 1"),
        ({"stages": 0}, "stages must be >= 1"),
        ({"tiers": 0}, "tiers must be an integer >= 1"),
        ({"sampler": "anneal"}, "unknown sampler 'anneal'"),
        ({"sampler": "grid", "trials": 15}, "a grid over 4 parameters needs at least 16 trials"),
        ({"pruner": "hyperband"}, "unknown pruner 'hyperband'"),
        ({"train_seed": -2}, "train_seed must be >= 0"),
        ({"keep_top": 0.0}, "keep_top"),
        ({"margin": 1.5}, "margin"),
        ({"seed": -1}, "seed"),
        ({"study_name": ""}, "study name"),
        ({"threads": 0}, "threads must be >= 1, got 0"),
        ({"grace_period_s": 1}, "grace_period_s must be a whole number of seconds >= 2, got 1"),
        ({"grace_period_s": 2.5}, "grace_period_s must be a whole number of seconds >= 2, got 2.5"),
    ],
)
def test_bad_settings_are_refused_before_the_storage_is_touched(
    tmp_path: Path, tiny_task: Task, changes: dict, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        tune(tiny_task, default_space(), config(tmp_path, **changes))
    assert not (tmp_path / "study.db").exists()


def test_a_space_missing_a_training_parameter_is_refused(tmp_path: Path, tiny_task: Task) -> None:
    space = [p for p in default_space() if p.name != "momentum"]
    with pytest.raises(SpaceError, match="lacks momentum"):
        tune(tiny_task, space, config(tmp_path))
    assert not (tmp_path / "study.db").exists()


def test_an_unreachable_storage_is_refused_before_any_trial(tiny_task: Task) -> None:
    def build(params: dict) -> nn.Module:
        raise AssertionError("a trial ran")

    tiny_task.build_model = build
    with pytest.raises(StorageError, match="cannot open storage"):
        tune(
            tiny_task,
            default_space(),
            SearchConfig(study_name="t", storage="postgresql://u:p@127.0.0.1:9/db"),
        )


def test_resuming_with_another_space_is_refused_and_writes_nothing(tmp_path: Path, tiny_task: Task) -> None:
    tune(tiny_task, default_space(), config(tmp_path, stages=1, trials=2))
    narrowed = with_ranges(default_space(), {"learning_rate": (1e-3, 1e-1)})
    with pytest.raises(SpaceError, match="another space"):
        tune(tiny_task, narrowed, config(tmp_path, stages=1, trials=4))
    assert len(stage_trials(f"sqlite:///{tmp_path}/study.db", "t-stage1")) == 2


# Resume and several workers (subprocesses running `fusedbn tune`)


def wait_for(condition: Callable[[], bool], worker: object, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert worker.poll() is None, worker.communicate()
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


# SQLite: the operating system releases a killed worker's locks, where a journal file's lock file stays
# behind for 30 s when the worker was writing (each storage's heartbeat is tested in test_storage.py).
@pytest.mark.parametrize("study_at", ["sqlite"], indirect=True)
def test_a_killed_worker_loses_no_finished_trial_and_its_trial_is_rerun(
    tmp_path: Path, start_tune: Callable, capsys: pytest.CaptureFixture, study_at: tuple[str, str]
) -> None:
    url, name = study_at
    # Trials long enough (40 epochs) that the poll below sees the third one running on an idle machine.
    args = ["--storage", url, "--study-name", name, "--trials", "3", "--stages", "1", "--epochs", "40"]
    # The re-run runs in this process, which starts it in well under the grace period even on a busy
    # machine: it finds the killed trial still looking alive.
    args += ["--grace-period", "6", "--out", str(tmp_path / "out")]

    def trials() -> list[optuna.trial.FrozenTrial]:
        try:
            return stage_trials(url, f"{name}-stage1")
        except KeyError:
            return []

    worker = start_tune(*args)

    def two_finished_one_running() -> bool:
        states = [t.state for t in trials()]
        return sum(state in FINISHED for state in states) == 2 and TrialState.RUNNING in states

    wait_for(two_finished_one_running, worker)
    os.kill(worker.pid, signal.SIGKILL)
    worker.communicate()
    before = trials()
    killed = [t.number for t in before if t.state == TrialState.RUNNING]
    assert killed

    capsys.readouterr()
    assert fusedbn.cli.main(["tune", "--no-progress", *args]) == 0
    errors = capsys.readouterr().err
    finished_before = sum(t.state in FINISHED for t in before)
    notes = errors.splitlines()
    assert notes[0] == (
        f"resuming: {finished_before} finished trials of study {name!r} in {url} "
        f"(stage 1: {finished_before} finished, {len(killed)} running)"
    )
    # The killed worker's trial, the last of the budget, still looks alive at first: the re-run says
    # what it waits for, whose trial it is, and why, once.
    owner = before[killed[0]].user_attrs["worker"]
    assert notes[1].startswith(f"stage 1/1: waiting for trial {killed[0]} (worker {owner}, started "), errors
    assert "or it was left by a worker that was killed" in notes[1]
    assert "A trial without a heartbeat for 6 s (the grace period) counts as lost and runs again" in notes[1]
    assert notes[2] == (
        f"{name}-stage1: trial {killed[0]} had no heartbeat for over 6 s (its worker stopped): "
        "marked failed; it runs again"
    )
    assert len(notes) == 3
    after = {t.number: t for t in trials()}
    for trial in before:
        if trial.state in FINISHED:
            assert (after[trial.number].state, after[trial.number].value) == (trial.state, trial.value)
            assert after[trial.number].params == trial.params
    for number in killed:
        assert after[number].state == TrialState.FAIL and FAILURE_ATTR not in after[number].user_attrs
    assert sum(t.state in FINISHED for t in after.values()) == 3


def test_two_workers_share_a_study_without_losing_or_repeating_trials(
    tmp_path: Path, start_tune: Callable, study_at: tuple[str, str]
) -> None:
    url, name = study_at
    # Trials of 10 epochs: a study that outlasts the few seconds by which one worker may start after the
    # other, so that both take part.
    args = ["--storage", url, "--study-name", name, "--trials", "6", "--stages", "2", "--epochs", "10"]
    workers = [start_tune(*args, "--out", str(tmp_path / f"out{i}")) for i in range(2)]
    for worker in workers:
        output, errors = worker.communicate(timeout=150)
        assert worker.returncode == 0, errors

    names = set()
    for stage in (1, 2):
        trials = stage_trials(url, f"{name}-stage{stage}")
        assert all(t.state in FINISHED for t in trials), [(t.number, t.state) for t in trials]
        # Two workers may both start the last trial of a stage: at most one over the budget.
        assert 6 <= len(trials) <= 7
        assert len({t.number for t in trials}) == len(trials)
        assert len({tuple(sorted(t.params.items())) for t in trials}) == len(trials)
        names |= {t.user_attrs["worker"] for t in trials}
    assert len(names) == 2, "both workers should have run trials"
