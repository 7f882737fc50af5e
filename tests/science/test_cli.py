"""``fusedbn science`` end to end on the smallest preset: report, JSON, figures, verdicts."""

import json
import re
import sys
from pathlib import Path

import matplotlib.image
import pytest

from fusedbn.cli import main
from fusedbn.science.experiments import EXPERIMENTS
from fusedbn.science.stats import CONTRADICTED, HELD, NOT_SHOWN


def test_science_writes_a_report_with_a_verdict_and_a_figure_per_experiment(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "science"
    assert main(["science", "--preset", "smoke", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "importances: sgd" in captured.err, "progress lines go to stderr"
    data = json.loads((out / "science.json").read_text())
    assert data["preset"]["name"] == "smoke" and len(data["findings"]) == len(EXPERIMENTS)
    report = (out / "REPORT.md").read_text()
    for finding in data["findings"]:
        assert finding["verdict"] in (HELD, NOT_SHOWN, CONTRADICTED)
        assert f"{finding['verdict']:>12}  {finding['title']}" in captured.out
        assert finding["title"] in report and f"]({finding['figure']})" in report
        pixels = matplotlib.image.imread(out / finding["figure"])
        assert pixels.shape[1] >= 400 and pixels[..., :3].std() > 0.02, finding["figure"]
        for test in finding["tests"]:
            assert 0.0 <= test["p_value"] <= 1.0 and test["ci_low"] <= test["ci_high"]
    assert len(re.findall(r"\*\*Verdict: (held|not shown|contradicted)\.\*\*", report)) == len(EXPERIMENTS)


def test_an_unknown_preset_is_an_argparse_error(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["science", "--preset", "huge"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'huge'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--task", "mnist"], "unknown task 'mnist'; choose one of digits, mnist1d"),
        (["--task", "mnist1d", "--data-seed", "1.5"], "--data-seed must be an integer, got '1.5'"),
        (["--data-seed", "3"], "task digits has fixed data and takes no data seed"),
        (["--compare", "no/such.json"], "--compare 'no/such.json': not a readable science.json"),
    ],
)
def test_bad_arguments_print_one_line_exit_2_and_create_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture, argv: list[str], message: str
) -> None:
    out = tmp_path / "science"
    assert main(["science", "--preset", "smoke", "--out", str(out), *argv]) == 2
    errors = capsys.readouterr().err
    assert errors.count("\n") == 1 and errors.startswith("fusedbn science: error: ") and message in errors
    assert not out.exists()


def test_mnist1d_missing_names_the_install_command(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "mnist1d", None)
    monkeypatch.setitem(sys.modules, "mnist1d.data", None)
    assert main(["science", "--task", "mnist1d", "--out", str(tmp_path / "science")]) == 2
    assert "pip install '.[tune]'" in capsys.readouterr().err
    assert not (tmp_path / "science").exists()
