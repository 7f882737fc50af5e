"""The search: priority tiers, seeded sampling and coarse-to-fine stages over Optuna studies.

:func:`tune` runs ``stages`` stages, each its own study ``<study_name>-stage<k>`` (its bounds in the user
attribute ``bounds``) of ``trials`` finished (COMPLETE or PRUNED) trials; each stage after the first narrows
around the previous stage's best trials. Several workers may share a study, and running again with the same
study name and storage resumes it. "random" and "grid" give the same values for a seed on any worker or
restart; "tpe" (Optuna's) is seeded by (seed, stage, trials in the stage). A diverging trial is PRUNED, an
out-of-memory error fails its trial and the study goes on; any other exception, or Ctrl-C
(:class:`TuningInterrupted`), fails the running trial and stops the search. docs/tuning.md describes it all.
"""

import math
import os
import socket
import sys
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import optuna
import torch
from optuna.distributions import BaseDistribution, FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState
from tqdm import tqdm

from fusedbn.tuning.space import Bounds, Param, SpaceError, check_space, narrow, split_by_tier
from fusedbn.tuning.storage import (
    FAILURE_ATTR,
    LOST,
    Heartbeat,
    beating,
    display_url,
    fail_lost_trials,
    open_storage,
)
from fusedbn.tuning.training import HeldOutScores, Task, torch_threads

SAMPLERS = ("random", "grid", "tpe")
PRUNERS = ("median", "none")
BOUNDS_ATTR = "bounds"
SPACE_ATTR = "space"
WORKER_ATTR = "worker"
POLL_S = 0.5
PRUNER_STARTUP_TRIALS = 5
PRUNER_WARMUP_EPOCHS = 1
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


class TuningError(RuntimeError):
    """A study that cannot go on."""


class TuningInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped :func:`tune` (the running trial is FAIL and runs again on resume); ``finished``: each
    stage study's finished trials stored in ``storage`` (a URL with any password hidden)."""

    def __init__(self, storage: str, finished: dict[str, int]) -> None:
        super().__init__(f"interrupted; finished trials stored: {finished}")
        self.storage = storage
        self.finished = finished


Notify = Callable[[str], None]


def print_note(message: str) -> None:
    """Write ``message`` as a line on stderr, above any progress bar."""
    tqdm.write(message, file=sys.stderr)


@contextmanager
def optuna_logs(level: int) -> Iterator[None]:
    """Run the block with Optuna logging at ``level`` (``optuna.logging.WARNING``...), then restore it."""
    before = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(level)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(before)


def derive_seed(*parts: int) -> int:
    """A 32-bit seed that depends on every one of ``parts`` (non-negative integers)."""
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0])


class _IndependentSampler(optuna.samplers.RandomSampler):
    """A sampler that draws each parameter on its own from a number in [0, 1) (:meth:`unit`) along its
    range, on its scale; integers on [low - 0.5, high + 0.5], rounded."""

    def unit(self, trial_number: int, param_name: str) -> float:
        """Where in [0, 1) this trial's value of ``param_name`` lies."""
        raise NotImplementedError

    def sample_independent(
        self, study: optuna.Study, trial: FrozenTrial, param_name: str, distribution: BaseDistribution
    ) -> float:
        low, high = distribution.low, distribution.high
        integer = isinstance(distribution, IntDistribution) and distribution.step == 1
        continuous = isinstance(distribution, FloatDistribution) and distribution.step is None
        if not (integer or continuous):
            raise TypeError(f"{param_name}: fusedbn's samplers cannot sample {distribution!r}")
        lo, hi = (low - 0.5, high + 0.5) if integer else (low, high)
        u = self.unit(trial.number, param_name)
        draw = math.exp(math.log(lo) + u * math.log(hi / lo)) if distribution.log else lo + u * (hi - lo)
        return int(min(max(round(draw), low), high)) if integer else min(max(draw, low), high)


class SeededRandomSampler(_IndependentSampler):
    """Independent random sampling: each draw depends only on (seed, stage, trial number, parameter name)."""

    def __init__(self, seed: int, stage: int) -> None:
        super().__init__(seed)
        self._seed, self._stage = seed, stage

    def unit(self, trial_number: int, param_name: str) -> float:
        seed = derive_seed(self._seed, self._stage, trial_number, zlib.crc32(param_name.encode()))
        return float(np.random.default_rng(seed).uniform())


class SeededGridSampler(_IndependentSampler):
    """``points`` values per parameter (``names``: Optuna's names, in order) at the centres of equal cells on
    each scale; trial n takes grid point ``order[n mod points ** len(names)]``, ``order`` a permutation
    seeded by (seed, stage)."""

    def __init__(self, seed: int, stage: int, names: Sequence[str], points: int) -> None:
        super().__init__(seed)
        self._names = list(names)
        self._points = points
        self._order = np.random.default_rng(derive_seed(seed, stage)).permutation(points ** len(self._names))

    def unit(self, trial_number: int, param_name: str) -> float:
        point = int(self._order[trial_number % len(self._order)])
        cell = (point // self._points ** self._names.index(param_name)) % self._points
        return (cell + 0.5) / self._points


def grid_points(trials: int, dimensions: int) -> int:
    """Points per parameter of the largest grid with at most ``trials`` points over ``dimensions``."""
    points = math.floor(trials ** (1.0 / dimensions) + 1e-9)
    if points < 2:
        raise ValueError(
            f"a grid over {dimensions} parameters needs at least {2**dimensions} trials per stage, "
            f"got {trials}"
        )
    return points


@dataclass
class SearchConfig:
    """How to search: where the study lives, its budget, which tiers, which sampler, how to narrow.

    ``trials``: finished trials per stage; ``tiers``: tune tiers 1..tiers; ``keep_top``: the fraction of a
    stage's best complete trials the next stage narrows around, ``margin``: the widening on each side as a
    fraction of the previous width; ``grace_period_s``: whole seconds (>= 2) without heartbeat after which a
    RUNNING trial is failed as lost. ``seed`` seeds the sampling, ``train_seed`` the trials' training
    (default: ``seed``); trials train on ``threads`` torch CPU threads. ``pruner``: "median" or "none".
    Raises ValueError naming an unusable setting.
    """

    study_name: str
    storage: str
    trials: int = 20
    stages: int = 3
    tiers: int = 2
    sampler: str = "random"
    seed: int = 0
    train_seed: int | None = None
    pruner: str = "median"
    keep_top: float = 0.25
    margin: float = 0.1
    grace_period_s: int = 30
    threads: int = 1
    progress: bool = True

    def __post_init__(self) -> None:
        if not self.study_name:
            raise ValueError("study name must not be empty")
        for name, least in (("trials", 1), ("stages", 1), ("threads", 1), ("seed", 0), ("train_seed", 0)):
            value = getattr(self, name)
            if value is not None and value < least:
                raise ValueError(f"{name} must be >= {least}, got {value}")
        if not (isinstance(self.tiers, int) and self.tiers >= 1):
            raise ValueError(f"tiers must be an integer >= 1, got {self.tiers!r}")
        for name, choices in (("sampler", SAMPLERS), ("pruner", PRUNERS)):
            if (value := getattr(self, name)) not in choices:
                raise ValueError(f"unknown {name} {value!r}; choose one of {', '.join(choices)}")
        for name in ("keep_top", "margin"):
            if not 0 < getattr(self, name) <= 1:
                raise ValueError(f"{name} must lie in (0, 1], got {getattr(self, name)}")
        if not (isinstance(self.grace_period_s, int) and self.grace_period_s >= 2):
            raise ValueError(
                f"grace_period_s must be a whole number of seconds >= 2, got {self.grace_period_s!r}"
            )

    @property
    def training_seed(self) -> int:
        """The seed the trials' training seeds derive from."""
        return self.seed if self.train_seed is None else self.train_seed

    def trial_seed(self, stage: int, trial_number: int) -> int:
        """The training seed of trial ``trial_number`` of stage ``stage``."""
        return derive_seed(derive_seed(self.training_seed, stage), trial_number)


@dataclass
class StageResult:
    """One stage: its Optuna study and the bounds it sampled within (natural units)."""

    study: optuna.Study
    bounds: Bounds

    def trials(self, *states: TrialState) -> list[FrozenTrial]:
        """The stage's trials in the given states (all states when none given)."""
        return self.study.get_trials(deepcopy=False, states=states or None)

    def ranked(self) -> list[FrozenTrial]:
        """The complete trials with a finite accuracy, the highest first."""
        complete = [t for t in self.trials(TrialState.COMPLETE) if math.isfinite(t.value)]
        return sorted(complete, key=lambda t: t.value, reverse=True)

    def best_trial(self) -> FrozenTrial | None:
        """The complete trial with the highest accuracy, or None when no trial completed."""
        return next(iter(self.ranked()), None)


@dataclass
class TuningResult:
    """What :func:`tune` returns: the configuration, the parameters tuned and fixed, and every stage."""

    config: SearchConfig
    tuned: list[Param]
    fixed: dict[str, float]
    stages: list[StageResult]

    def best(self) -> tuple[int, FrozenTrial] | None:
        """(stage number from 1, trial) of the best complete trial over all stages; None if none completed."""
        candidates = [(i, t) for i, s in enumerate(self.stages, 1) if (t := s.best_trial()) is not None]
        return max(candidates, key=lambda c: c[1].value, default=None)

    def coord_range(self, param: Param) -> tuple[float, float]:
        """``param``'s declared range (the first stage's bounds) on its scale's coordinate, low first."""
        low, high = sorted(param.scale.to_coord(v) for v in self.stages[0].bounds[param.name])
        return low, high

    def params_of(self, trial: FrozenTrial) -> dict[str, float]:
        """All hyperparameters of ``trial`` in natural units (betas as beta), the fixed ones included."""
        return {**{p.name: p.value_from(trial.params) for p in self.tuned}, **self.fixed}


def tune(
    task: Task, space: Sequence[Param], config: SearchConfig, notify: Notify = print_note
) -> TuningResult:
    """Tune ``task`` over the tiers of ``space`` chosen by ``config``; returns every stage's study.

    Raises ValueError (:class:`SpaceError` for the space) before the storage is opened,
    :class:`StorageError` before any trial runs, :class:`TuningInterrupted` on Ctrl-C. ``notify`` receives
    notes: a resumed or already finished study, a failed lost trial, a stage waiting for running trials.
    """
    check_space(space)
    tuned, fixed = split_by_tier(space, config.tiers)
    if config.sampler == "grid":
        grid_points(config.trials, len(tuned))
    if missing := task.required_params() - {p.name for p in space}:
        raise SpaceError(f"the space lacks {', '.join(sorted(missing))}, which the training loop needs")

    def note_lost(study: optuna.Study, trial: FrozenTrial) -> None:
        notify(
            f"{study.study_name}: trial {trial.number} had no heartbeat for over {config.grace_period_s} s "
            "(its worker stopped): marked failed; it runs again"
        )

    heartbeat = Heartbeat(config.grace_period_s, on_lost=note_lost)
    search = _Search(task, tuned, fixed, config, open_storage(config.storage, heartbeat), heartbeat, notify)
    _check_same_space(search.storage, f"{config.study_name}-stage1", search.fingerprint())
    _note_resume(search.storage, config, notify)
    try:
        with torch_threads(config.threads):
            stages = search.run()
    except KeyboardInterrupt as interrupt:
        finished = {name: counts[0] for name, counts in _stored_trials(search.storage, config).items()}
        raise TuningInterrupted(display_url(config.storage), finished) from interrupt
    return TuningResult(config=config, tuned=tuned, fixed=fixed, stages=stages)


def _stored_trials(storage: optuna.storages.BaseStorage, config: SearchConfig) -> dict[str, tuple[int, int]]:
    """(finished, running) trials of each stage study that ``storage`` holds, by study name."""
    names = set(optuna.get_all_study_names(storage))
    counts = {}
    for number in range(1, config.stages + 1):
        name = f"{config.study_name}-stage{number}"
        if name in names:
            trials = optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)
            states = [t.state for t in trials]
            counts[name] = (sum(state in FINISHED for state in states), states.count(TrialState.RUNNING))
    return counts


def _note_resume(storage: optuna.storages.BaseStorage, config: SearchConfig, notify: Notify) -> None:
    """Say how many finished (and running) trials the study has; for a finished study, how to start anew."""
    counts = _stored_trials(storage, config)
    total = sum(finished for finished, _ in counts.values())
    where = f"study {config.study_name!r} in {display_url(config.storage)}"
    if len(counts) == config.stages and all(f >= config.trials and not r for f, r in counts.values()):
        notify(
            f"{where} is already finished ({total} finished trials in {config.stages} stages): nothing runs, "
            "its results are shown again. To start a new study, use another study name or storage "
            "(fusedbn tune: --study-name, --storage, or another --out folder for the default storage)"
        )
    elif any(finished or running for finished, running in counts.values()):
        per_stage = ", ".join(
            f"stage {name.rpartition('-stage')[2]}: {finished} finished"
            + (f", {running} running" if running else "")
            for name, (finished, running) in counts.items()
        )
        notify(f"resuming: {total} finished trials of {where} ({per_stage})")


def score_chosen(task: Task, result: TuningResult) -> HeldOutScores | None:
    """The held-out test scores of the configuration ``result`` chose (on the search's threads); None for a
    task whose trials score the test split, or when no trial completed."""
    best = result.best()
    if task.score_test or task.test is None or best is None:
        return None
    stage, trial = best
    with torch_threads(result.config.threads):
        return task.held_out_scores(result.params_of(trial), result.config.trial_seed(stage, trial.number))


def _check_same_space(storage: optuna.storages.BaseStorage, study_name: str, fingerprint: dict) -> None:
    """Refuse to resume a study that was tuned over other parameters or ranges."""
    if study_name not in optuna.get_all_study_names(storage):
        return
    stored = optuna.load_study(study_name=study_name, storage=storage).user_attrs.get(SPACE_ATTR)
    if stored is not None and stored != fingerprint:
        raise SpaceError(
            f"study {study_name!r} was tuned over another space ({stored}); this run asks for {fingerprint}. "
            "Use another study name to tune a different space."
        )


def _make_sampler(
    config: SearchConfig, stage: int, tuned: Sequence[Param], existing_trials: int
) -> optuna.samplers.BaseSampler:
    if config.sampler == "random":
        return SeededRandomSampler(config.seed, stage)
    if config.sampler == "grid":
        points = grid_points(config.trials, len(tuned))
        return SeededGridSampler(config.seed, stage, [p.optuna_name for p in tuned], points)
    return optuna.samplers.TPESampler(
        seed=derive_seed(config.seed, stage, existing_trials),
        n_startup_trials=min(10, max(1, config.trials // 2)),
    )


def _stage_bounds(previous: StageResult | None, tuned: Sequence[Param], config: SearchConfig) -> Bounds:
    """A stage's bounds: the declared ranges for the first, else narrowed around the ``previous`` stage's
    best complete trials."""
    if previous is None:
        return {p.name: (p.low, p.high) for p in tuned}
    if not (ranked := previous.ranked()):
        return dict(previous.bounds)
    best = ranked[: max(1, math.ceil(config.keep_top * len(ranked)))]
    return {
        p.name: narrow(p, previous.bounds[p.name], [p.value_from(t.params) for t in best], config.margin)
        for p in tuned
    }


def _failure(error: BaseException) -> str:
    """The ``failure`` user attribute of a trial that ``error`` stopped."""
    if isinstance(error, KeyboardInterrupt):
        return "interrupted (Ctrl-C); runs again on resume"
    first_line = next(iter(str(error).strip().splitlines()), "")
    kind = "out of memory" if isinstance(error, torch.cuda.OutOfMemoryError) else type(error).__name__
    return f"{kind}: {first_line}"


@dataclass
class _Search:
    """One call of :func:`tune`: the stages it runs, in turn, on one storage."""

    task: Task
    tuned: list[Param]
    fixed: dict[str, float]
    config: SearchConfig
    storage: optuna.storages.BaseStorage
    heartbeat: Heartbeat
    notify: Notify

    def fingerprint(self) -> dict[str, list]:
        """The tuned parameters' ranges and scales, stored on each stage study to refuse another space."""
        return {p.name: [p.low, p.high, p.scale.name] for p in self.tuned}

    def run(self) -> list[StageResult]:
        """Run every stage in turn, each after the one before it is complete."""
        stages: list[StageResult] = []
        for number in range(1, self.config.stages + 1):
            stages.append(self._open_stage(number, stages[-1] if stages else None))
            self._run_stage(stages[-1], number)
        return stages

    def _open_stage(self, number: int, previous: StageResult | None) -> StageResult:
        """Stage ``number``'s study, created or loaded, with the bounds it samples within."""
        if self.config.pruner == "none":
            pruner: optuna.pruners.BasePruner = optuna.pruners.NopPruner()
        else:
            pruner = optuna.pruners.MedianPruner(PRUNER_STARTUP_TRIALS, PRUNER_WARMUP_EPOCHS)
        study = optuna.create_study(
            storage=self.storage,
            study_name=f"{self.config.study_name}-stage{number}",
            direction="maximize",
            pruner=pruner,
            load_if_exists=True,
        )
        study.sampler = _make_sampler(
            self.config, number, self.tuned, existing_trials=len(study.get_trials(deepcopy=False))
        )
        if SPACE_ATTR not in study.user_attrs:
            study.set_user_attr(SPACE_ATTR, self.fingerprint())
        if BOUNDS_ATTR not in study.user_attrs:
            study.set_user_attr(BOUNDS_ATTR, _stage_bounds(previous, self.tuned, self.config))
        bounds = {name: (low, high) for name, (low, high) in study.user_attrs[BOUNDS_ATTR].items()}
        return StageResult(study=study, bounds=bounds)

    def _objective(self, stage: StageResult, number: int) -> Callable[[optuna.Trial], float]:
        """Stage ``number``'s objective: trial n trains with seed ``config.trial_seed(number, n)``; an
        exception is recorded in ``failure`` and raised on (out of memory is also told to ``notify``)."""
        worker = f"{socket.gethostname()}:{os.getpid()}"

        def objective(trial: optuna.Trial) -> float:
            trial.set_user_attr(WORKER_ATTR, worker)
            try:
                with beating(self.storage, trial, self.heartbeat):
                    params = dict(self.fixed)
                    for param in self.tuned:
                        params[param.name] = param.suggest(trial, *stage.bounds[param.name])
                    return self.task.fit(params, trial, seed=self.config.trial_seed(number, trial.number))
            except optuna.TrialPruned:
                raise
            except BaseException as error:
                trial.set_user_attr(FAILURE_ATTR, _failure(error))
                if isinstance(error, torch.cuda.OutOfMemoryError):
                    self.notify(f"{stage.study.study_name}: trial {trial.number} failed: {_failure(error)}")
                raise

        return objective

    def _run_stage(self, stage: StageResult, number: int) -> None:
        """Run trials until the stage has its budget of finished trials and no trial is running."""
        budget, label = self.config.trials, f"stage {number}/{self.config.stages}"
        objective = self._objective(stage, number)
        waited_for: set[int] = set()
        ran_here, finished = 0, min(budget, sum(t.state in FINISHED for t in stage.trials()))
        shown = {"desc": label, "unit": "trial", "smoothing": 0, "disable": not self.config.progress}
        with tqdm(total=budget, initial=finished, **shown) as bar:
            while True:
                fail_lost_trials(stage.study, self.storage, self.heartbeat)
                trials = stage.trials()
                finished = sum(t.state in FINISHED for t in trials)
                running = [t for t in trials if t.state == TrialState.RUNNING]  # this worker runs none now
                failed = [t for t in trials if t.state == TrialState.FAIL]
                bar.n = min(finished, budget)
                bar.initial = max(0, bar.n - ran_here)  # the rate counts the trials run here only
                best = stage.best_trial()
                bar.set_postfix({} if best is None else {"best": f"{best.value:.4f}"})
                if finished >= budget and not running:
                    return
                if len(failed) > budget:
                    raise TuningError(
                        f"{stage.study.study_name}: {len(failed)} trials failed, more than the "
                        f"budget of {budget}; last failure: {failed[-1].user_attrs.get(FAILURE_ATTR, LOST)}"
                    )
                if finished + len(running) < budget:
                    with optuna_logs(optuna.logging.ERROR):  # failures are told and raised here
                        stage.study.optimize(objective, n_trials=1, catch=(torch.cuda.OutOfMemoryError,))
                    ran_here += 1
                    continue
                if {t.number for t in running} - waited_for:
                    waited_for |= {t.number for t in running}
                    self.notify(_waiting_note(label, running, self.config.grace_period_s))
                time.sleep(POLL_S)


def _waiting_note(label: str, running: Sequence[FrozenTrial], grace_s: int) -> str:
    """Why a stage waits: the trials still running elsewhere, and when they count as lost."""
    now = time.time()
    described = ", ".join(
        f"trial {t.number} (worker {t.user_attrs.get(WORKER_ATTR, 'unknown')}, started "
        f"{now - t.datetime_start.timestamp():.0f} s ago)"
        for t in running
    )
    return (
        f"{label}: waiting for {described}: another worker may still be running it, or it was left "
        f"by a worker that was killed. A trial without a heartbeat for {grace_s} s (the grace "
        "period) counts as lost and runs again here."
    )
