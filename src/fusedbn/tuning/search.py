"""The search: priority tiers, seeded random (or TPE) sampling, and coarse-to-fine stages over Optuna studies.

:func:`tune` runs ``stages`` stages of ``trials`` finished trials each. Stage 1 samples the full declared
ranges; each later stage keeps the best ``keep_top`` fraction of the previous stage's complete trials
and narrows every parameter's bounds to their span, widened by ``margin`` x the previous width on each
side, on the parameter's own scale, and never outside the previous stage's bounds, so never outside the
declared range (:func:`fusedbn.tuning.space.narrow`). Each stage is its own Optuna study,
``<study_name>-stage<k>``, so that no sampler sees a range change; the stage's bounds are stored on it
as the user attribute ``bounds``.

Budget and workers: only COMPLETE and PRUNED trials count towards a stage's budget. A worker starts a
trial while finished + running trials are below the budget, otherwise waits until the stage has no
running trial and moves on, so every worker narrows from the same finished stage. Several workers (on
one machine or several) may run :func:`tune` with the same study name and storage at once; two that
start a trial at the same instant can take a stage up to (workers - 1) trials over its budget. Running
again with the same study name resumes: finished trials are kept, trials of a killed worker are failed
once their heartbeat is older than ``grace_period_s`` and their budget is run again.

Sampling: ``"random"`` draws each value from a generator seeded by (seed, stage, trial number,
parameter), so the same seed gives the same values whatever the worker or restart, and no two trials
of a study share their draws. ``"tpe"`` is Optuna's TPE (its first min(10, trials // 2) trials are
random) seeded by (seed, stage, trials already in the stage): reproducible for one worker on a fresh
study; give each concurrent TPE worker its own seed. Every stage prunes with Optuna's median pruner from
its 6th trial on, comparing accuracies from the second epoch.

Failures: a diverging trial is PRUNED with its reason in the user attribute ``failure`` (see
:mod:`fusedbn.tuning.training`); a CUDA out-of-memory error fails that one trial (reason in ``failure``)
and the study goes on. A stage stops with :class:`TuningError` once more trials failed than its budget.
"""

import math
import os
import socket
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import optuna
import torch
from optuna.distributions import BaseDistribution, FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState
from tqdm import tqdm

from fusedbn.tuning.space import Bounds, Param, SpaceError, check_space, full_bounds, narrow, split_by_tier
from fusedbn.tuning.storage import FAILURE_ATTR, fail_stale_trials, heartbeat, open_storage
from fusedbn.tuning.training import Task

SAMPLERS = ("random", "tpe")
BOUNDS_ATTR = "bounds"
SPACE_ATTR = "space"
WORKER_ATTR = "worker"
POLL_S = 0.5
HEARTBEATS_PER_GRACE = 5
PRUNER_STARTUP_TRIALS = 5
PRUNER_WARMUP_EPOCHS = 1
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


class TuningError(RuntimeError):
    """A study that cannot go on."""


def derive_seed(*parts: int) -> int:
    """A 32-bit seed that depends on every one of ``parts`` (non-negative integers)."""
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0])


class SeededRandomSampler(optuna.samplers.BaseSampler):
    """Independent random sampling; each draw depends only on (seed, stage, trial number, parameter name).

    Log distributions are sampled uniformly in log space; log-scale integers as Optuna does, by rounding
    a log-uniform draw over [low - 0.5, high + 0.5].
    """

    def __init__(self, seed: int, stage: int) -> None:
        self._seed = seed
        self._stage = stage

    def infer_relative_search_space(
        self, study: optuna.Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        return {}

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: Mapping[str, BaseDistribution]
    ) -> dict[str, float]:
        return {}

    def sample_independent(
        self, study: optuna.Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> float:
        rng = np.random.default_rng(
            derive_seed(self._seed, self._stage, trial.number, zlib.crc32(param_name.encode()))
        )
        low, high = param_distribution.low, param_distribution.high
        if isinstance(param_distribution, FloatDistribution) and param_distribution.step is None:
            if param_distribution.log:
                return min(max(math.exp(rng.uniform(math.log(low), math.log(high))), low), high)
            return float(rng.uniform(low, high))
        if isinstance(param_distribution, IntDistribution) and param_distribution.step == 1:
            if param_distribution.log:
                draw = math.exp(rng.uniform(math.log(low - 0.5), math.log(high + 0.5)))
                return min(max(round(draw), low), high)
            return int(rng.integers(low, high + 1))
        raise TypeError(f"{param_name}: SeededRandomSampler cannot sample {param_distribution!r}")


@dataclass
class SearchConfig:
    """How to search: where the study lives, its budget, which tiers, which sampler, how to narrow.

    ``trials`` is the number of finished (COMPLETE or PRUNED) trials per stage; ``tiers`` tunes tiers
    1..tiers; ``keep_top`` is the fraction of a stage's best complete trials the next stage narrows
    around, ``margin`` the widening on each side as a fraction of the previous width; a RUNNING trial
    without a heartbeat for ``grace_period_s`` seconds is taken as lost and failed.
    """

    study_name: str
    storage: str
    trials: int = 20
    stages: int = 3
    tiers: int = 2
    sampler: str = "random"
    seed: int = 0
    keep_top: float = 0.25
    margin: float = 0.1
    grace_period_s: float = 30.0
    progress: bool = True

    def check(self) -> None:
        """Raise ValueError naming the first unusable setting."""
        if not self.study_name:
            raise ValueError("study name must not be empty")
        for name in ("trials", "stages"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {self.sampler!r}; choose one of {', '.join(SAMPLERS)}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        if not 0 < self.keep_top <= 1:
            raise ValueError(f"keep_top must lie in (0, 1], got {self.keep_top}")
        if not 0 < self.margin <= 1:
            raise ValueError(f"margin must lie in (0, 1], got {self.margin}")
        if self.grace_period_s <= 0:
            raise ValueError(f"grace period must be > 0 seconds, got {self.grace_period_s}")


@dataclass
class StageResult:
    """One stage: its Optuna study and the bounds it sampled within (natural units)."""

    study: optuna.Study
    bounds: Bounds

    def trials(self, *states: TrialState) -> list[FrozenTrial]:
        """The stage's trials in the given states (all states when none given)."""
        return self.study.get_trials(deepcopy=False, states=states or None)

    def best_trial(self) -> FrozenTrial | None:
        """The complete trial with the highest accuracy, or None when no trial completed."""
        complete = [t for t in self.trials(TrialState.COMPLETE) if math.isfinite(t.value)]
        return max(complete, key=lambda t: t.value, default=None)


@dataclass
class TuningResult:
    """What :func:`tune` returns: the configuration, the parameters tuned and fixed, and every stage."""

    config: SearchConfig
    tuned: list[Param]
    fixed: dict[str, float]
    stages: list[StageResult]

    def best(self) -> tuple[int, FrozenTrial] | None:
        """(stage number from 1, trial) of the best complete trial over all stages; None if none completed."""
        candidates = [(i + 1, s.best_trial()) for i, s in enumerate(self.stages)]
        candidates = [(i, t) for i, t in candidates if t is not None]
        return max(candidates, key=lambda c: c[1].value, default=None)

    def params_of(self, trial: FrozenTrial) -> dict[str, float]:
        """All hyperparameters of ``trial`` in natural units (betas as beta), the fixed ones included."""
        return {**{p.name: p.value_from(trial.params) for p in self.tuned}, **self.fixed}


def tune(task: Task, space: Sequence[Param], config: SearchConfig) -> TuningResult:
    """Tune ``task`` over the tiers of ``space`` chosen by ``config``; returns every stage's study.

    Arguments are checked before the storage is opened, and the storage before any trial runs:
    ValueError (:class:`SpaceError` for the space) or :class:`StorageError` otherwise.
    """
    config.check()
    check_space(space)
    tuned, fixed = split_by_tier(space, config.tiers)
    missing = task.required_params() - {p.name for p in space}
    if missing:
        raise SpaceError(f"the space lacks {', '.join(sorted(missing))}, which the training loop needs")
    storage = open_storage(config.storage)
    fingerprint = {p.name: [p.low, p.high, p.scale] for p in tuned}
    _check_same_space(storage, f"{config.study_name}-stage1", fingerprint)

    stages: list[StageResult] = []
    for number in range(1, config.stages + 1):
        study = optuna.create_study(
            storage=storage,
            study_name=f"{config.study_name}-stage{number}",
            direction="maximize",
            pruner=optuna.pruners.MedianPruner(
                n_startup_trials=PRUNER_STARTUP_TRIALS, n_warmup_steps=PRUNER_WARMUP_EPOCHS
            ),
            load_if_exists=True,
        )
        study.sampler = _make_sampler(config, number, existing_trials=len(study.get_trials(deepcopy=False)))
        if SPACE_ATTR not in study.user_attrs:
            study.set_user_attr(SPACE_ATTR, fingerprint)
        if BOUNDS_ATTR not in study.user_attrs:
            bounds = full_bounds(tuned) if not stages else _narrowed(stages[-1], tuned, config)
            study.set_user_attr(BOUNDS_ATTR, {name: list(b) for name, b in bounds.items()})
        bounds = {name: (low, high) for name, (low, high) in study.user_attrs[BOUNDS_ATTR].items()}
        stage = StageResult(study=study, bounds=bounds)
        objective = _objective(
            task, tuned, fixed, bounds, derive_seed(config.seed, number), config.grace_period_s
        )
        _run_stage(stage, objective, config, f"stage {number}/{config.stages}")
        stages.append(stage)
    return TuningResult(config=config, tuned=tuned, fixed=fixed, stages=stages)


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


def _make_sampler(config: SearchConfig, stage: int, existing_trials: int) -> optuna.samplers.BaseSampler:
    if config.sampler == "random":
        return SeededRandomSampler(config.seed, stage)
    return optuna.samplers.TPESampler(
        seed=derive_seed(config.seed, stage, existing_trials),
        n_startup_trials=min(10, max(1, config.trials // 2)),
    )


def _narrowed(previous: StageResult, tuned: Sequence[Param], config: SearchConfig) -> Bounds:
    """The next stage's bounds: narrowed around the previous stage's best complete trials."""
    complete = [t for t in previous.trials(TrialState.COMPLETE) if math.isfinite(t.value)]
    if not complete:
        return dict(previous.bounds)
    best = sorted(complete, key=lambda t: t.value, reverse=True)[
        : max(1, math.ceil(config.keep_top * len(complete)))
    ]
    return {
        p.name: narrow(p, previous.bounds[p.name], [p.value_from(t.params) for t in best], config.margin)
        for p in tuned
    }


def _objective(
    task: Task,
    tuned: Sequence[Param],
    fixed: Mapping[str, float],
    bounds: Bounds,
    stage_seed: int,
    grace_s: float,
) -> Callable[[optuna.Trial], float]:
    worker = f"{socket.gethostname()}:{os.getpid()}"

    def objective(trial: optuna.Trial) -> float:
        trial.set_user_attr(WORKER_ATTR, worker)
        with heartbeat(trial, grace_s / HEARTBEATS_PER_GRACE):
            params = dict(fixed)
            for param in tuned:
                params[param.name] = param.suggest(trial, *bounds[param.name])
            try:
                return task.fit(params, trial, seed=derive_seed(stage_seed, trial.number))
            except torch.cuda.OutOfMemoryError as error:
                trial.set_user_attr(FAILURE_ATTR, f"out of memory: {str(error).splitlines()[0]}")
                raise

    return objective


def _run_stage(
    stage: StageResult, objective: Callable[[optuna.Trial], float], config: SearchConfig, label: str
) -> None:
    """Run trials until the stage has its budget of finished trials and no trial is running."""
    budget = config.trials
    with tqdm(total=budget, desc=label, unit="trial", disable=not config.progress) as bar:
        while True:
            fail_stale_trials(stage.study, config.grace_period_s)
            trials = stage.trials()
            finished = sum(t.state in FINISHED for t in trials)
            running = sum(t.state == TrialState.RUNNING for t in trials)
            failed = [t for t in trials if t.state == TrialState.FAIL]
            bar.update(min(finished, budget) - bar.n)
            best = stage.best_trial()
            if best is not None:
                bar.set_postfix(best=f"{best.value:.4f}")
            if finished >= budget and running == 0:
                return
            if len(failed) > budget:
                reason = failed[-1].user_attrs.get(FAILURE_ATTR, "see the log")
                raise TuningError(
                    f"{stage.study.study_name}: {len(failed)} trials failed, more than the "
                    f"budget of {budget}; last failure: {reason}"
                )
            if finished + running < budget:
                stage.study.optimize(
                    objective, n_trials=1, catch=(torch.cuda.OutOfMemoryError,), gc_after_trial=True
                )
            else:
                time.sleep(POLL_S)
