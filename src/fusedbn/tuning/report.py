"""The study's summary: best value and hyperparameters, every stage's bounds, importances, tier check.

Parameter importances come from Optuna's fANOVA evaluator on the coarse first stage, the only stage
that samples the full ranges (narrowed stages would make every parameter look unimportant). They need
at least :data:`MIN_TRIALS_FOR_IMPORTANCE` complete trials there; with fewer the summary says so.
The tier check lists each pair of parameters that the measured importances rank in the opposite order
to their priority tiers.
"""

import json
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from fusedbn.tuning.search import TuningResult
from fusedbn.tuning.storage import FAILURE_ATTR, display_url

MIN_TRIALS_FOR_IMPORTANCE = 4
SUMMARY_FILE = "summary.json"
MAX_DISAGREEMENTS_SHOWN = 3


def importances(result: TuningResult) -> dict[str, float] | None:
    """Importance of each tuned parameter (summing to 1) on stage 1, or None with too few complete trials."""
    first = result.stages[0]
    if len(result.tuned) < 2 or len(first.trials(TrialState.COMPLETE)) < MIN_TRIALS_FOR_IMPORTANCE:
        return None
    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=result.config.seed)
    by_optuna_name = optuna.importance.get_param_importances(first.study, evaluator=evaluator)
    return {p.name: by_optuna_name.get(p.optuna_name, 0.0) for p in result.tuned}


def tier_disagreements(measured: dict[str, float], tiers: dict[str, int]) -> list[str]:
    """Each pair where a parameter of a later tier measures as more important than one of an earlier tier."""
    order = sorted(measured, key=measured.get, reverse=True)
    return [
        f"{later} (tier {tiers[later]}) ranks above {earlier} (tier {tiers[earlier]})"
        for i, later in enumerate(order)
        for earlier in order[i + 1 :]
        if tiers[later] > tiers[earlier]
    ]


def summarize(result: TuningResult) -> dict[str, Any]:
    """A JSON-ready summary of ``result`` (betas shown as beta, not 1 - beta)."""
    config = result.config
    tiers = {p.name: p.tier for p in result.tuned}
    best = result.best()
    stages = []
    for stage in result.stages:
        stage_best = stage.best_trial()
        trials = stage.trials()
        stages.append(
            {
                "study": stage.study.study_name,
                "bounds": {name: list(bounds) for name, bounds in stage.bounds.items()},
                "best_value": stage_best.value if stage_best else None,
                "complete": sum(t.state == TrialState.COMPLETE for t in trials),
                "pruned": sum(
                    t.state == TrialState.PRUNED and FAILURE_ATTR not in t.user_attrs for t in trials
                ),
                "diverged": sum(t.user_attrs.get(FAILURE_ATTR, "").startswith("diverged") for t in trials),
                "failed": sum(t.state == TrialState.FAIL for t in trials),
            }
        )
    measured = importances(result)
    summary_complete = stages[0]["complete"]
    return {
        "study_name": config.study_name,
        "storage": display_url(config.storage),
        "objective": "validation accuracy (maximised)",
        "sampler": config.sampler,
        "seed": config.seed,
        "tiers_tuned": config.tiers,
        "trials_per_stage": config.trials,
        "best_value": best[1].value if best else None,
        "best_stage": best[0] if best else None,
        "best_trial": best[1].number if best else None,
        "best_params": result.params_of(best[1]) if best else None,
        "tuned": {p.name: {"tier": p.tier, "scale": p.scale} for p in result.tuned},
        "fixed": result.fixed,
        "stages": stages,
        "importances": measured,
        "importance_note": (
            f"fANOVA on the {summary_complete} complete trials of stage 1"
            if measured is not None
            else f"not computed: needs >= 2 tuned parameters and >= {MIN_TRIALS_FOR_IMPORTANCE} complete "
            "trials in stage 1"
        ),
        "tier_check": None
        if measured is None
        else {
            "measured_order": sorted(measured, key=measured.get, reverse=True),
            "tier_order": sorted(tiers, key=tiers.get),
            "disagreements": tier_disagreements(measured, tiers),
        },
    }


def _number(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    if value == 0 or 1e-3 <= abs(value) < 1e4:
        return f"{value:.4g}"
    return f"{value:.3g}"


def format_summary(summary: dict[str, Any]) -> str:
    """The summary as text for a terminal."""
    lines = [f"Study {summary['study_name']} ({summary['sampler']} search, tiers 1-{summary['tiers_tuned']})"]
    if summary["best_value"] is None:
        lines.append("No trial completed.")
    else:
        lines.append(
            f"Best validation accuracy {summary['best_value']:.4f} "
            f"(stage {summary['best_stage']}, trial {summary['best_trial']})"
        )
        lines.append("Best hyperparameters:")
        for name, value in summary["best_params"].items():
            origin = (
                f"tuned, tier {summary['tuned'][name]['tier']}" if name in summary["tuned"] else "default"
            )
            lines.append(f"  {name:<16}{_number(value):>12}   ({origin})")
    for number, stage in enumerate(summary["stages"], start=1):
        best = "-" if stage["best_value"] is None else f"{stage['best_value']:.4f}"
        lines.append(
            f"Stage {number} ({stage['study']}): best {best}; {stage['complete']} complete, "
            f"{stage['pruned']} pruned, {stage['diverged']} diverged, {stage['failed']} failed"
        )
        for name, (low, high) in stage["bounds"].items():
            lines.append(f"  {name:<16}[{_number(low)}, {_number(high)}]")
    if summary["importances"] is None:
        lines.append(f"Importances: {summary['importance_note']}")
    else:
        ranked = ", ".join(
            f"{n} {summary['importances'][n]:.2f}" for n in summary["tier_check"]["measured_order"]
        )
        lines.append(f"Importances ({summary['importance_note']}): {ranked}")
        disagreements = summary["tier_check"]["disagreements"]
        if not disagreements:
            lines.append("Tier order: matches the measured order")
        else:
            shown = "; ".join(disagreements[:MAX_DISAGREEMENTS_SHOWN])
            more = len(disagreements) - MAX_DISAGREEMENTS_SHOWN
            tail = f"; and {more} more (see {SUMMARY_FILE})" if more > 0 else ""
            lines.append(f"Tier order: differs in {len(disagreements)} pair(s): {shown}{tail}")
    return "\n".join(lines)


def write_summary(summary: dict[str, Any], out_dir: Path) -> Path:
    """Write ``summary`` as JSON into ``out_dir``; returns the file's path."""
    path = Path(out_dir) / SUMMARY_FILE
    path.write_text(json.dumps(summary, indent=2, allow_nan=False) + "\n")
    return path
