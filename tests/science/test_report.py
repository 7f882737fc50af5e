"""The science report (fusedbn.science.report): run information and two tasks' verdicts side by side."""

import json
from pathlib import Path

import pytest

from fusedbn.records import RunRecord
from fusedbn.science.experiments import PRESETS, Finding
from fusedbn.science.report import ReportFileError, RunInfo, markdown, read_comparison, write_report


def finding(key: str, verdict: str) -> Finding:
    return Finding(
        key=key,
        title=f"title of {key}",
        claim="claim",
        setup="setup",
        rows=[{"n": 1}],
        tests=[],
        test_verdicts=[],
        verdict=verdict,
        explanation="explanation",
        figure=f"{key}.png",
        figure_data={"kind": "published_vs_reproduced", "models": {}, "margin": 0.03},
    )


RECORD = RunRecord("r", "2026-01-01T00:00:00+00:00", "cpu x86_64", "x86_64, 2 CPUs, Python 3.11", "2.13",
                   "3.9", "none", "0.1.0", "abc1234", 1, 0.5, 2.5)  # fmt: skip
RUN = RunInfo(task="mnist1d", record=RECORD, wall_seconds=90, cpu_seconds=60)


def test_report_records_wall_and_cpu_time_threads_and_load(tmp_path: Path) -> None:
    json_path, markdown_path = write_report([finding("a", "held")], PRESETS["smoke"], "cmd", RUN, tmp_path)
    text = markdown_path.read_text()
    assert "Wall time 1.5 min, CPU time 1.0 min, 1 process(es) of 1 torch thread(s), which had 67%" in text
    assert "load average 0.5 at the start, 2.5 at the end" in text
    assert "Run on x86_64, 2 CPUs, Python 3.11, torch 2.13, fusedbn 0.1.0 at abc1234" in text
    data = json.loads(json_path.read_text())
    assert data["run"]["task"] == "mnist1d" and data["run"]["cpu_seconds"] == 60
    assert data["run"]["record"]["commit"] == "abc1234"
    assert "groups of experiments" not in text, "one group: nothing to say"


def test_report_says_what_the_longest_group_of_experiments_costs(tmp_path: Path) -> None:
    run = RunInfo(**{**vars(RUN), "workers": 2, "group_cpu_seconds": [600.0, 1230.0]})
    text = markdown([finding("a", "held")], PRESETS["smoke"], "cmd", run)
    assert "The 2 groups of experiments used 10.0, 20.5 min of CPU: on idle cores, with a worker per " in text
    assert "group, the run takes about 20.5 min." in text


def test_two_tasks_side_by_side_say_where_they_differ(tmp_path: Path) -> None:
    other = tmp_path / "digits"
    other.mkdir()
    digits_run = RunInfo("digits", RECORD, 1, 1)
    findings = [finding("a", "held"), finding("b", "not shown")]
    write_report(findings, PRESETS["smoke"], "cmd", digits_run, other)
    comparison = read_comparison(other / "science.json")
    assert comparison.task == "digits" and comparison.verdicts == {"a": "held", "b": "not shown"}
    mine = [finding("paper", "contradicted"), finding("a", "held"), finding("b", "held")]
    text = markdown(mine, PRESETS["smoke"], "cmd", RUN, comparison)
    assert "## mnist1d beside digits" in text
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in text.splitlines()
            if line.startswith("|")]  # fmt: skip
    assert ["title of a", "held", "held"] in rows and ["title of paper", "not run", "contradicted"] in rows
    assert "- title of b: **held** on mnist1d, **not shown** on digits." in text
    assert "- title of a:" not in text


def test_a_file_without_findings_is_refused(tmp_path: Path) -> None:
    (tmp_path / "science.json").write_text("{}")
    with pytest.raises(ReportFileError, match="--compare: .* holds no findings"):
        read_comparison(tmp_path / "science.json")
