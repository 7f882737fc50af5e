"""The study's summary (a :class:`Summary`): best trial with its held-out test accuracy, every stage's bounds
and counts, importances with their noise floor, and what they say about the priority tiers.

The tier check compares every pair of tuned parameters from different tiers: it *agrees* when the earlier
tier's ranks above the later one's in at least 95% of the bootstrap resamples, *disagrees* when the later one
ranks above, and is *undecided* otherwise.
"""

import itertools
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from optuna.trial import FrozenTrial, TrialState

from fusedbn.tuning.importance import ABOVE_NOISE, Importances, fanova_importances
from fusedbn.tuning.search import StageResult, TuningResult
from fusedbn.tuning.storage import FAILURE_ATTR, display_url
from fusedbn.tuning.training import HeldOutScores

TRIALS_PER_PARAMETER = 4
IMPORTANCE_RESAMPLES = 20
SUMMARY_FILE = "summary.json"
MAX_PAIRS_SHOWN = 3


@dataclass
class BestTrial:
    """The chosen configuration: the complete trial with the highest validation accuracy."""

    stage: int
    trial: int
    valid_accuracy: float
    test_accuracy: float | None
    train_accuracy: float | None
    params: dict[str, float]


@dataclass
class StageSummary:
    """One stage: its study, bounds (natural units), best validation accuracy and trial counts."""

    study: str
    bounds: dict[str, tuple[float, float]]
    best_value: float | None
    complete: int
    pruned: int
    diverged: int
    failed: int


@dataclass
class TierCheck:
    """Pairs of parameters from different tiers whose measured order agrees, disagrees or is undecided."""

    agree: list[str]
    disagree: list[str]
    undecided: list[str]


@dataclass
class Summary:
    """What :func:`summarize` returns; :meth:`to_json` gives the contents of summary.json."""

    study_name: str
    storage: str
    sampler: str
    seed: int
    train_seed: int
    tiers_tuned: int
    trials_per_stage: int
    tiers: dict[str, int]
    scales: dict[str, str]
    coordinates: dict[str, str]
    fixed: dict[str, float]
    best: BestTrial | None
    stages: list[StageSummary]
    importances: Importances | None
    importance_note: str
    tier_check: TierCheck | None
    objective: str = "validation accuracy (maximised)"
    held_out: HeldOutScores | None = None

    def to_json(self) -> dict:
        """The summary as plain JSON-ready data."""
        return asdict(self)


def scored_value(trial: FrozenTrial) -> float | None:
    """A complete trial's value, a pruned (not diverged) trial's last reported value (the most that is known
    of it), else None."""
    reported = trial.intermediate_values
    if trial.state == TrialState.COMPLETE:
        value = trial.value
    elif trial.state == TrialState.PRUNED and reported and FAILURE_ATTR not in trial.user_attrs:
        value = reported[max(reported)]
    else:
        return None
    return value if value is not None and math.isfinite(value) else None


def scored_trials(result: TuningResult) -> list[tuple[int, FrozenTrial, float]]:
    """(stage index from 0, trial, :func:`scored_value`) of every scored trial, stage by stage."""
    return [
        (index, trial, value)
        for index, stage in enumerate(result.stages)
        for trial in sorted(stage.trials(), key=lambda t: t.number)
        if (value := scored_value(trial)) is not None
    ]


def importances(result: TuningResult, resamples: int = IMPORTANCE_RESAMPLES) -> Importances | None:
    """Importances of the tuned parameters over every stage's scored trials, or None with too few: fewer than
    :data:`TRIALS_PER_PARAMETER` per tuned parameter, the noise dummy counted."""
    scored = scored_trials(result)
    if len(result.tuned) < 2 or len(scored) < TRIALS_PER_PARAMETER * (len(result.tuned) + 1):
        return None
    return fanova_importances(
        [p.name for p in result.tuned],
        np.array([[p.scale.to_coord(p.value_from(t.params)) for p in result.tuned] for _, t, _ in scored]),
        np.array([value for _, _, value in scored]),
        [result.coord_range(p) for p in result.tuned],
        seed=result.config.seed,
        resamples=resamples,
    )


def tier_check(measured: Importances, tiers: dict[str, int]) -> TierCheck:
    """Compare every pair of parameters from different tiers (see the module docstring)."""
    check = TierCheck(agree=[], disagree=[], undecided=[])
    for earlier, later in itertools.permutations(measured.values, 2):
        if tiers[earlier] >= tiers[later]:
            continue
        first, second = f"{earlier} (tier {tiers[earlier]})", f"{later} (tier {tiers[later]})"
        if measured.ranks_above(earlier, later):
            check.agree.append(f"{first} vs {second}")
        elif measured.ranks_above(later, earlier):
            check.disagree.append(f"{second} ranks above {first}")
        else:
            check.undecided.append(f"{first} vs {second}")
    return check


def _best(result: TuningResult) -> BestTrial | None:
    if (best := result.best()) is None:
        return None
    stage, trial = best
    return BestTrial(
        stage=stage,
        trial=trial.number,
        valid_accuracy=trial.value,
        test_accuracy=trial.user_attrs.get("test_accuracy"),
        train_accuracy=trial.user_attrs.get("train_accuracy"),
        params=result.params_of(trial),
    )


def _stage_summary(stage_result: StageResult) -> StageSummary:
    trials = stage_result.trials()
    best = stage_result.best_trial()
    return StageSummary(
        study=stage_result.study.study_name,
        bounds=dict(stage_result.bounds),
        best_value=best.value if best else None,
        complete=sum(t.state == TrialState.COMPLETE for t in trials),
        pruned=sum(t.state == TrialState.PRUNED and FAILURE_ATTR not in t.user_attrs for t in trials),
        diverged=sum(t.user_attrs.get(FAILURE_ATTR, "").startswith("diverged") for t in trials),
        failed=sum(t.state == TrialState.FAIL for t in trials),
    )


def summarize(
    result: TuningResult, resamples: int = IMPORTANCE_RESAMPLES, held_out: HeldOutScores | None = None
) -> Summary:
    """The :class:`Summary` of ``result`` (betas shown as beta, not 1 - beta), with the chosen
    configuration's ``held_out`` scores when its task keeps the test split out of the search."""
    config = result.config
    tiers = {p.name: p.tier for p in result.tuned}
    measured = importances(result, resamples)
    needed = TRIALS_PER_PARAMETER * (len(result.tuned) + 1)
    note = (
        f"fANOVA on sampled scales over {measured.trials} scored trials of all stages, "
        f"{resamples} bootstrap resamples"
        if measured is not None
        else f"not computed: needs >= 2 tuned parameters and >= {needed} scored trials"
    )
    return Summary(
        study_name=config.study_name,
        storage=display_url(config.storage),
        sampler=config.sampler,
        seed=config.seed,
        train_seed=config.training_seed,
        tiers_tuned=config.tiers,
        trials_per_stage=config.trials,
        tiers=tiers,
        scales={p.name: p.scale.name for p in result.tuned},
        coordinates={p.name: p.scale.description for p in result.tuned},
        fixed=dict(result.fixed),
        best=_best(result),
        stages=[_stage_summary(stage) for stage in result.stages],
        importances=measured,
        importance_note=note,
        tier_check=None if measured is None else tier_check(measured, tiers),
        held_out=held_out,
    )


def _number(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    if value == 0 or 1e-3 <= abs(value) < 1e4:
        return f"{value:.4g}"
    return f"{value:.3g}"


def _pairs(pairs: list[str]) -> str:
    shown = "; ".join(pairs[:MAX_PAIRS_SHOWN])
    more = len(pairs) - MAX_PAIRS_SHOWN
    return f"{shown}; and {more} more (see {SUMMARY_FILE})" if more > 0 else shown


def _importance_lines(summary: Summary) -> list[str]:
    if (measured := summary.importances) is None:
        return [f"Importances: {summary.importance_note}"]
    ranked = ", ".join(
        f"{name} {measured.values[name]:.2f} [{low:.2f}-{high:.2f}]"
        for name in measured.order()
        for low, high in [measured.intervals[name]]
    )
    coordinates = ", ".join(f"{name}: {coordinate}" for name, coordinate in summary.coordinates.items())
    low, high = measured.noise_interval
    lines = [
        f"Importances ({summary.importance_note}): {ranked}",
        f"  measured on the sampled coordinates: {coordinates}",
        f"  noise floor (a dummy parameter with no effect): {measured.noise:.2f} [{low:.2f}-{high:.2f}]; "
        f"{ABOVE_NOISE}: {', '.join(measured.above_noise()) or 'none'}",
    ]
    check = summary.tier_check
    verdict = (
        f"Tier order vs measured importances: {len(check.agree)} pair(s) agree, {len(check.disagree)} "
        f"disagree, {len(check.undecided)} undecided at this number of trials"
    )
    lines.append(verdict if not check.disagree else f"{verdict}; disagreeing: {_pairs(check.disagree)}")
    return lines


def format_summary(summary: Summary) -> str:
    """The summary as text for a terminal."""
    lines = [f"Study {summary.study_name} ({summary.sampler} search, tiers 1-{summary.tiers_tuned})"]
    if (best := summary.best) is None:
        lines.append("No trial completed.")
    else:
        test = "" if best.test_accuracy is None else f"; held-out test accuracy {best.test_accuracy:.4f}"
        where = f"stage {best.stage}, trial {best.trial}"
        lines.append(f"Best validation accuracy {best.valid_accuracy:.4f} ({where}){test}")
        if (held := summary.held_out) is not None:
            lines.append(
                f"Held-out test accuracy of the chosen configuration: {held.test_accuracy:.4f} trained on "
                f"the {held.train_examples} training examples as in its trial (validation "
                f"{held.valid_accuracy:.4f} on that retraining); {held.test_accuracy_all:.4f} retrained on "
                f"all {held.train_examples_all} training and validation examples"
            )
        lines.append("Best hyperparameters:")
        for name, value in best.params.items():
            origin = f"tuned, tier {summary.tiers[name]}" if name in summary.tiers else "default"
            lines.append(f"  {name:<16}{_number(value):>12}   ({origin})")
    for number, stage in enumerate(summary.stages, start=1):
        stage_best = "-" if stage.best_value is None else f"{stage.best_value:.4f}"
        lines.append(
            f"Stage {number} ({stage.study}): best {stage_best}; {stage.complete} complete, "
            f"{stage.pruned} pruned, {stage.diverged} diverged, {stage.failed} failed"
        )
        lines += [f"  {name:<16}[{_number(lo)}, {_number(hi)}]" for name, (lo, hi) in stage.bounds.items()]
    lines += _importance_lines(summary)
    return "\n".join(lines)


def write_summary(summary: Summary, out_dir: Path) -> Path:
    """Write ``summary`` as JSON into ``out_dir``; returns the file's path."""
    path = Path(out_dir) / SUMMARY_FILE
    path.write_text(json.dumps(summary.to_json(), indent=2, allow_nan=False) + "\n")
    return path
