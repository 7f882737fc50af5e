"""``fusedbn science`` end to end on the smallest preset: report, JSON, figures, verdicts; redrawing
the figures from science.json; bad arguments; Ctrl-C on a real process."""

import json
import re
import signal
import sys
import time
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
from helpers import start_fusedbn

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

    # --replot draws the same figures from science.json alone.
    drawn = {f["figure"]: matplotlib.image.imread(out / f["figure"]) for f in data["findings"]}
    for name in drawn:
        (out / name).unlink()
    assert main(["science", "--replot", "--out", str(out)]) == 0
    assert capsys.readouterr().out.startswith("Drew random_vs_grid.png, coarse_to_fine.png")
    for name, pixels in drawn.items():
        assert np.array_equal(matplotlib.image.imread(out / name), pixels), name
    assert json.loads((out / "science.json").read_text()) == data, "--replot changes no number"


def test_replot_without_figure_data_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    old = {"findings": [{"key": "random_vs_grid", "figure": "x.png"}]}  # as fusedbn science wrote before
    (tmp_path / "science.json").write_text(json.dumps(old))
    assert main(["science", "--replot", "--out", str(tmp_path)]) == 2
    errors = capsys.readouterr().err
    assert errors.startswith("fusedbn science: error: ") and len(errors.splitlines()) == 1
    assert "keeps no figure data for 'random_vs_grid'" in errors
    assert main(["science", "--replot", "--out", str(tmp_path / "missing")]) == 2
    errors = capsys.readouterr().err
    assert errors.startswith("fusedbn science: error: cannot read ") and len(errors.splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["science.json"]


@pytest.mark.skipif(not Path("/proc/self").exists(), reason="needs Linux's /proc")
def test_an_output_folder_that_cannot_be_made_is_one_line_before_any_experiment(
    capsys: pytest.CaptureFixture,
) -> None:
    assert main(["science", "--preset", "smoke", "--out", "/proc/fusedbn-x"]) == 2
    captured = capsys.readouterr()
    assert captured.err == (
        "fusedbn science: error: cannot create the output folder '/proc/fusedbn-x': "
        "No such file or directory\n"
    )
    assert captured.out == ""


def test_ctrl_c_stops_science_with_one_message_and_leaves_no_folder(tmp_path: Path) -> None:
    process = start_fusedbn(tmp_path, "science", "--preset", "smoke", "--out", "sci")
    first = process.stderr.readline()  # the first progress line: the experiments are running
    assert "random vs grid" in first, first + process.communicate()[1]
    process.send_signal(signal.SIGINT)
    output, errors = process.communicate(timeout=60)
    assert process.returncode == 130 and output == ""
    assert "Traceback" not in errors
    assert errors.splitlines()[-1] == (
        "fusedbn science: interrupted. The experiments run in memory and write their report only at the "
        "end, so nothing was written to sci/ and the same command starts over."
    )
    assert list(tmp_path.iterdir()) == [], "the folder it had created is gone again"


def _children(pid: int) -> set[int]:
    """The processes whose parent is ``pid`` (from /proc)."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:  # the process ended while we looked
            continue
        if int(fields[1]) == pid:
            found.add(int(stat.parent.name))
    return found


@pytest.mark.skipif(not Path("/proc/self").exists(), reason="needs Linux's /proc")
@pytest.mark.usefixtures("mnist1d_offline")
def test_ctrl_c_stops_the_worker_processes_too(tmp_path: Path) -> None:
    argv = ["science", "--task", "mnist1d", "--preset", "smoke", "--workers", "2", "--out", "sci"]
    process = start_fusedbn(tmp_path, *argv)
    first = process.stderr.readline()  # a worker's first progress line: both groups are running
    assert re.search(r"paper table|coarse-to-fine", first), first + process.communicate()[1]
    workers = _children(process.pid)
    assert len(workers) >= 2, "two workers (and multiprocessing's resource tracker)"
    process.send_signal(signal.SIGINT)
    output, errors = process.communicate(timeout=60)
    assert process.returncode == 130 and output == "" and "Traceback" not in errors
    assert errors.splitlines()[-1].startswith("fusedbn science: interrupted.")
    assert list(tmp_path.iterdir()) == []
    deadline = time.monotonic() + 10
    while workers & {int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()}:
        assert time.monotonic() < deadline, "a worker process outlived the command"
        time.sleep(0.1)


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
        (["--compare", "no/such.json"], "--compare: cannot read 'no/such.json': No such file or directory"),
        (["--task", "mnist1d", "--workers", "0"], "--workers must be >= 1, got 0"),
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
