"""run_science (fusedbn.science): groups of experiments in worker processes give the one-process results."""

import json
import os
from pathlib import Path

import pytest

from fusedbn.science import run_science
from fusedbn.science.experiments import PRESETS, SCIENCE_TASKS, Context, Finding, ScienceTask
from fusedbn.science.stats import HELD


def _finding(key: str, context: Context) -> Finding:
    return Finding(
        key=key,
        title=key,
        claim="claim",
        setup="setup",
        rows=[{"seeds": context.preset.seeds}],
        tests=[],
        test_verdicts=[],
        verdict=HELD,
        explanation="explanation",
        figure=f"{key}.png",
        figure_data={"kind": "published_vs_reproduced", "models": {}, "margin": 0.03},
        extra={"process": os.getpid()},
    )


def first(context: Context) -> Finding:
    return _finding("first", context)


def second(context: Context) -> Finding:
    return _finding("second", context)


def third(context: Context) -> Finding:
    return _finding("third", context)


def fake_science() -> ScienceTask:
    digits = SCIENCE_TASKS["digits"]
    return ScienceTask(
        definition=digits.definition,
        presets=digits.presets,
        experiments=(first, second, third),
        groups=((first, third), (second,)),
        workers=2,
        good_accuracy=0.5,
        fixed={},
        fixed_label="",
        depth_label="layers",
    )


def test_worker_processes_run_the_groups_and_keep_the_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(SCIENCE_TASKS, "digits", fake_science())
    parallel = run_science("smoke", tmp_path / "two", "cmd", workers=2)
    assert [f.key for f in parallel] == ["first", "second", "third"]
    processes = [f.extra.pop("process") for f in parallel]
    # A group runs in one worker process (which worker takes which group is the pool's choice).
    assert processes[0] == processes[2] and os.getpid() not in processes
    alone = run_science("smoke", tmp_path / "one", "cmd", workers=1)
    assert {f.extra.pop("process") for f in alone} == {os.getpid()}
    assert alone == parallel and alone[0].rows == [{"seeds": PRESETS["smoke"].seeds}]
    assert "2 process(es) of 1 torch thread(s)" in (tmp_path / "two" / "REPORT.md").read_text()
    run = json.loads((tmp_path / "two" / "science.json").read_text())["run"]
    assert len(run["group_cpu_seconds"]) == 2 and min(run["group_cpu_seconds"]) >= 0


def test_groups_must_hold_every_experiment_once() -> None:
    with pytest.raises(ValueError, match="the groups must hold every experiment exactly once"):
        ScienceTask(**{**vars(fake_science()), "groups": ((first,), (second,))})
