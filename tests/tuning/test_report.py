"""The summary: best value and parameters, stages, importances, tier check (fusedbn.tuning.report)."""

import json
from pathlib import Path

import pytest
from optuna.trial import TrialState

from fusedbn.tuning.report import format_summary, summarize, tier_disagreements, write_summary
from fusedbn.tuning.search import SearchConfig, TuningResult, tune
from fusedbn.tuning.space import default_space
from fusedbn.tuning.training import Task


def test_tier_disagreements_name_each_inverted_pair() -> None:
    measured = {"hidden_units": 0.5, "learning_rate": 0.3, "momentum": 0.15, "num_layers": 0.05}
    tiers = {"hidden_units": 2, "learning_rate": 1, "momentum": 2, "num_layers": 3}
    assert tier_disagreements(measured, tiers) == ["hidden_units (tier 2) ranks above learning_rate (tier 1)"]
    assert (
        tier_disagreements({"learning_rate": 0.9, "momentum": 0.1}, {"learning_rate": 1, "momentum": 2}) == []
    )
    assert tier_disagreements({"a": 0.1, "b": 0.2, "c": 0.7}, {"a": 1, "b": 2, "c": 3}) == [
        "c (tier 3) ranks above b (tier 2)",
        "c (tier 3) ranks above a (tier 1)",
        "b (tier 2) ranks above a (tier 1)",
    ]


def test_summary_reports_the_best_trial_with_betas_as_beta(tiny_result: TuningResult) -> None:
    summary = summarize(tiny_result)
    complete = [
        (number, t) for number, s in enumerate(tiny_result.stages, 1) for t in s.trials(TrialState.COMPLETE)
    ]
    stage, best = max(complete, key=lambda c: c[1].value)
    assert summary["best_value"] == best.value
    assert (summary["best_stage"], summary["best_trial"]) == (stage, best.number)
    params = summary["best_params"]
    assert params["momentum"] == pytest.approx(1 - best.params["one_minus_momentum"])
    assert 0.9 <= params["momentum"] <= 0.999
    assert params["batch_size"] == 2 ** best.params["log2_batch_size"]
    assert params["num_layers"] == 2 and params["bn_beta"] == 0.9  # tier 3 and 4 defaults
    assert set(summary["tuned"]) == {"learning_rate", "momentum", "hidden_units", "batch_size"}


def test_summary_lists_every_stage_with_bounds_counts_and_best(tiny_result: TuningResult) -> None:
    stages = summarize(tiny_result)["stages"]
    assert [s["study"] for s in stages] == ["tiny-stage1", "tiny-stage2"]
    assert stages[0]["bounds"]["learning_rate"] == [1e-4, 1.0]
    assert stages[1]["bounds"] == {k: list(v) for k, v in tiny_result.stages[1].bounds.items()}
    for summary, stage in zip(stages, tiny_result.stages, strict=True):
        assert summary["complete"] + summary["pruned"] + summary["diverged"] == 6
        assert summary["best_value"] == max(t.value for t in stage.trials(TrialState.COMPLETE))


def test_importances_cover_the_tuned_parameters_and_are_compared_with_tiers(
    tiny_result: TuningResult,
) -> None:
    summary = summarize(tiny_result)
    importances = summary["importances"]
    assert set(importances) == {"learning_rate", "momentum", "hidden_units", "batch_size"}
    assert sum(importances.values()) == pytest.approx(1.0)
    check = summary["tier_check"]
    assert check["tier_order"][0] == "learning_rate"
    assert sorted(check["measured_order"]) == sorted(importances)
    assert importances[check["measured_order"][0]] == max(importances.values())


def test_importances_are_skipped_with_too_few_trials(tmp_path: Path, tiny_task: Task) -> None:
    config = SearchConfig(
        study_name="few", storage=f"sqlite:///{tmp_path}/few.db", trials=2, stages=1, progress=False
    )
    summary = summarize(tune(tiny_task, default_space(), config))
    assert summary["importances"] is None and summary["tier_check"] is None
    assert "not computed" in summary["importance_note"]
    assert "Importances: not computed" in format_summary(summary)


def test_summary_is_written_as_json_and_printed(tiny_result: TuningResult, tmp_path: Path) -> None:
    summary = summarize(tiny_result)
    path = write_summary(summary, tmp_path)
    assert json.loads(path.read_text()) == json.loads(json.dumps(summary))
    text = format_summary(summary)
    assert f"Best validation accuracy {summary['best_value']:.4f}" in text
    assert "Stage 2 (tiny-stage2)" in text
    assert "momentum" in text and "one_minus" not in text
    assert "Tier order:" in text


def test_a_long_tier_disagreement_list_is_shortened_in_the_text(tiny_result: TuningResult) -> None:
    summary = summarize(tiny_result)
    order = ["a", "b", "c", "d"]
    summary["importances"] = dict(zip(order, (0.4, 0.3, 0.2, 0.1), strict=True))
    summary["tuned"] = {name: {"tier": 4 - i, "scale": "linear"} for i, name in enumerate(order)}
    summary["tier_check"] = {
        "measured_order": order,
        "tier_order": order[::-1],
        "disagreements": tier_disagreements(summary["importances"], {n: 4 - i for i, n in enumerate(order)}),
    }
    line = format_summary(summary).splitlines()[-1]
    # Every one of the 6 pairs is inverted: 3 shown, 3 left to the JSON file.
    assert line.startswith("Tier order: differs in 6 pair(s): a (tier 4) ranks above b (tier 3);")
    assert line.endswith("; and 3 more (see summary.json)")
