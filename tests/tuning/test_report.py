"""The summary: best trial and its test accuracy, stages, importances, tier check (fusedbn.tuning.report)."""

import json
from pathlib import Path

import pytest
from optuna.trial import TrialState

from fusedbn.tuning.importance import NOISE, Importances
from fusedbn.tuning.report import Summary, format_summary, scored_value, summarize, tier_check, write_summary
from fusedbn.tuning.search import SearchConfig, TuningResult, tune
from fusedbn.tuning.space import default_space
from fusedbn.tuning.training import HeldOutScores, Task


def measured(order: list[str], above: dict[tuple[str, str], float]) -> Importances:
    """Importances ranked in ``order``; ``above[(a, b)]``: share of resamples where a beats b (else 0.5)."""
    names = [*order, NOISE]
    return Importances(
        trials=30,
        resamples=20,
        values={name: 1.0 / (i + 2) for i, name in enumerate(order)},
        intervals={name: (0.0, 1.0) for name in order},
        noise=0.01,
        noise_interval=(0.0, 0.05),
        above={a: {b: above.get((a, b), 1 - above.get((b, a), 0.5)) for b in names if b != a} for a in names},
    )


def test_tier_check_claims_only_what_the_resamples_support() -> None:
    tiers = {"learning_rate": 1, "momentum": 2, "num_layers": 3}
    importances = measured(
        ["momentum", "learning_rate", "num_layers"],
        {
            ("momentum", "learning_rate"): 0.97,
            ("learning_rate", "num_layers"): 0.6,
            ("momentum", "num_layers"): 1.0,
        },
    )
    check = tier_check(importances, tiers)
    assert check.disagree == ["momentum (tier 2) ranks above learning_rate (tier 1)"]
    assert check.agree == ["momentum (tier 2) vs num_layers (tier 3)"]
    assert check.undecided == ["learning_rate (tier 1) vs num_layers (tier 3)"]


def test_summary_reports_the_best_trial_with_betas_as_beta_and_its_test_accuracy(
    tiny_result: TuningResult, tiny_summary: Summary
) -> None:
    complete = [
        (number, t) for number, s in enumerate(tiny_result.stages, 1) for t in s.trials(TrialState.COMPLETE)
    ]
    stage, best = max(complete, key=lambda c: c[1].value)
    chosen = tiny_summary.best
    assert chosen.valid_accuracy == best.value
    assert (chosen.stage, chosen.trial) == (stage, best.number)
    assert 0.1 < chosen.test_accuracy <= 1.0 and chosen.test_accuracy == best.user_attrs["test_accuracy"]
    params = chosen.params
    assert params["momentum"] == pytest.approx(1 - best.params["one_minus_momentum"])
    assert 0.9 <= params["momentum"] <= 0.999
    assert params["batch_size"] == 2 ** best.params["log2_batch_size"]
    assert params["num_layers"] == 2 and params["bn_beta"] == 0.9  # tier 3 and 4 defaults
    assert set(tiny_summary.tiers) == {"learning_rate", "momentum", "hidden_units", "batch_size"}


def test_summary_lists_every_stage_with_bounds_counts_and_best(
    tiny_result: TuningResult, tiny_summary: Summary
) -> None:
    stages = tiny_summary.stages
    assert [s.study for s in stages] == ["tiny-stage1", "tiny-stage2"]
    assert stages[0].bounds["learning_rate"] == (1e-4, 1.0)
    assert stages[1].bounds == tiny_result.stages[1].bounds
    for summary, stage in zip(stages, tiny_result.stages, strict=True):
        assert summary.complete + summary.pruned + summary.diverged == 10
        assert summary.best_value == max(t.value for t in stage.trials(TrialState.COMPLETE))


def test_importances_use_every_scored_trial_and_show_the_noise_floor(
    tiny_result: TuningResult, tiny_summary: Summary
) -> None:
    importances = tiny_summary.importances
    scored = [t for s in tiny_result.stages for t in s.trials() if scored_value(t) is not None]
    assert importances.trials == len(scored) >= 20
    assert set(importances.values) == {"learning_rate", "momentum", "hidden_units", "batch_size"}
    assert sum(importances.values.values()) + importances.noise == pytest.approx(1.0)
    for name, (low, high) in importances.intervals.items():
        assert 0.0 <= low <= high <= 1.0, name
    pairs = tiny_summary.tier_check
    # Four parameters of tiers 1, 2, 2, 2: three pairs from different tiers, each put in one list.
    assert len(pairs.agree) + len(pairs.disagree) + len(pairs.undecided) == 3


def test_pruned_trials_count_at_their_last_report_and_diverged_ones_not_at_all(
    tiny_result: TuningResult,
) -> None:
    for trial in (t for s in tiny_result.stages for t in s.trials()):
        value = scored_value(trial)
        if trial.state == TrialState.COMPLETE:
            assert value == trial.value
        elif trial.state == TrialState.PRUNED and "failure" not in trial.user_attrs:
            assert value == trial.intermediate_values[max(trial.intermediate_values)]
        else:
            assert value is None


def test_importances_are_skipped_with_too_few_trials(tmp_path: Path, tiny_task: Task) -> None:
    config = SearchConfig(
        study_name="few", storage=f"sqlite:///{tmp_path}/few.db", trials=2, stages=1, progress=False
    )
    summary = summarize(tune(tiny_task, default_space(), config))
    assert summary.importances is None and summary.tier_check is None
    assert "not computed" in summary.importance_note
    assert "Importances: not computed" in format_summary(summary)


def test_summary_is_written_as_json_and_printed(tiny_summary: Summary, tmp_path: Path) -> None:
    path = write_summary(tiny_summary, tmp_path)
    written = json.loads(path.read_text())
    assert written["best"]["valid_accuracy"] == tiny_summary.best.valid_accuracy
    assert written["importances"]["noise"] == tiny_summary.importances.noise
    text = format_summary(tiny_summary)
    assert f"Best validation accuracy {tiny_summary.best.valid_accuracy:.4f}" in text
    assert f"held-out test accuracy {tiny_summary.best.test_accuracy:.4f}" in text
    assert "Stage 2 (tiny-stage2)" in text
    assert "momentum" in text and "one_minus" not in text
    assert "noise floor" in text and "Tier order vs measured importances:" in text
    above = ", ".join(tiny_summary.importances.above_noise()) or "none"
    assert f"; above the noise floor in at least 95% of the resamples: {above}\n" in text
    assert "matches" not in text


def test_a_long_disagreement_list_is_shortened_in_the_text(tiny_summary: Summary) -> None:
    order = ["a", "b", "c", "d"]
    supported = {(a, b): 1.0 for i, a in enumerate(order) for b in order[i + 1 :]}
    summary = Summary(**{**tiny_summary.__dict__, "tiers": {n: 4 - i for i, n in enumerate(order)}})
    summary.importances = measured(order, supported)
    summary.tier_check = tier_check(summary.importances, summary.tiers)
    line = format_summary(summary).splitlines()[-1]
    # Every one of the 6 pairs is inverted: 3 shown, 3 left to the JSON file.
    assert "0 pair(s) agree, 6 disagree, 0 undecided" in line
    assert line.endswith("; and 3 more (see summary.json)")


def test_held_out_scores_are_printed_and_written(tiny_result: TuningResult, tmp_path: Path) -> None:
    held_out = HeldOutScores(
        valid_accuracy=0.91,
        test_accuracy=0.8765,
        test_accuracy_all=0.9321,
        train_examples=3,
        train_examples_all=4,
    )
    summary = summarize(tiny_result, resamples=6, held_out=held_out)
    (line,) = [line for line in format_summary(summary).splitlines() if line.startswith("Held-out")]
    # As the README's table: the test accuracy as trained in the trial first, then retrained on all.
    assert line == (
        "Held-out test accuracy of the chosen configuration: 0.8765 trained on the 3 training examples as "
        "in its trial (validation 0.9100 on that retraining); 0.9321 retrained on all 4 training and "
        "validation examples"
    )
    written = json.loads(write_summary(summary, tmp_path).read_text())
    assert written["held_out"]["test_accuracy_all"] == 0.9321
    assert "Held-out" not in format_summary(summarize(tiny_result, resamples=6))
