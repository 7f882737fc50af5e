"""The ``fusedbn tune`` command (fusedbn.tuning.cli): end to end on a tiny budget, bad arguments,
threads, and Ctrl-C on a real process with a real SQLite study."""

import json
import signal
import time
from collections.abc import Callable
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState

import fusedbn.cli
from fusedbn.tuning import cli
from fusedbn.tuning.storage import FAILURE_ATTR, StorageError, open_storage

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def run_in_process(*argv: str) -> int:
    """``fusedbn tune --no-progress ARGV`` through the ``fusedbn`` command, in this process."""
    return fusedbn.cli.main(["tune", "--no-progress", *argv])


def test_tune_end_to_end_on_a_tiny_budget(tmp_path: Path, start_tune: Callable) -> None:
    process = start_tune("--trials", "3", "--stages", "2", "--epochs", "1", "--out", "out")
    output, errors = process.communicate(timeout=150)
    assert process.returncode == 0, errors
    out = tmp_path / "out"
    assert "Best validation accuracy" in output
    assert "Stage 2 (fusedbn-digits-stage2)" in output
    assert f"to out/ (study in sqlite:///{Path('out') / 'study.db'})" in output
    summary = json.loads((out / "summary.json").read_text())
    assert [s["study"] for s in summary["stages"]] == ["fusedbn-digits-stage1", "fusedbn-digits-stage2"]
    assert 0.1 < summary["best"]["valid_accuracy"] <= 1.0
    assert 0.1 < summary["best"]["test_accuracy"] <= 1.0
    assert (out / "study.db").exists()
    for name in ("history.png", "learning_rate.png", "beta.png", "learning_rate_beta.png"):
        assert (out / name).stat().st_size > 10_000, name


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--range", "learnig_rate=1e-3:0.1"], "unknown parameter(s) learnig_rate"),
        (["--range", "momentum=0.5:1.2"], "momentum: a beta must lie strictly between 0 and 1"),
        (["--range", "learning_rate=0.1:1e-3"], "learning_rate: empty or inverted range"),
        (["--trials", "0"], "trials must be >= 1"),
        (["--stages", "0"], "stages must be >= 1"),
        (["--epochs", "0"], "epochs must be >= 1"),
        (["--keep-top", "0"], "keep_top must lie in (0, 1]"),
        (["--margin", "2"], "margin must lie in (0, 1]"),
        (["--grace-period", "0"], "grace period must be > 0 seconds"),
        (["--seed", "-1"], "seed must be >= 0"),
        (["--train-seed", "-2"], "train_seed must be >= 0"),
        (["--study-name", ""], "study name must not be empty"),
        (["--threads", "0"], "threads must be >= 1, got 0"),
        (["--device", "nonsense"], "unknown device 'nonsense'"),
        (["--sampler", "grid", "--trials", "15"], "a grid over 4 parameters needs at least 16 trials"),
        (["--linear", "learnig_rate"], "unknown parameter(s) learnig_rate"),
        (["--storage", "postgresql+psycopg2://u:p@127.0.0.1:9/db"], "cannot open storage"),
        (["--storage", "sqlite:///no/such/folder/study.db"], "folder 'no/such/folder' does not exist"),
        (["--storage", "journal:///no/such/folder/study.log"], "folder 'no/such/folder' does not exist"),
        (["--storage", "nosuchdb://host/db"], "cannot open storage 'nosuchdb://host/db'"),
    ],
)
def test_bad_arguments_are_one_line_exit_2_and_create_nothing(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
    argv: list[str],
    message: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    assert run_in_process("--out", "runs/out", *argv) == 2
    errors = capsys.readouterr().err
    assert errors.startswith("fusedbn tune: error: ") and message in errors, errors
    assert len(errors.splitlines()) == 1, errors
    assert list(tmp_path.iterdir()) == [], "a rejected command creates no folder, study or file"


@pytest.mark.parametrize("out", ["/proc/fusedbn-nope", "a-file/out", "a-file"])
def test_an_output_folder_that_cannot_be_made_is_one_line_and_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, out: str
) -> None:
    if out.startswith("/proc") and not Path("/proc/self").exists():
        pytest.skip("needs Linux's /proc")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a-file").write_text("in the way")
    assert run_in_process("--out", out, "--storage", "sqlite:///elsewhere.db") == 2
    errors = capsys.readouterr().err
    assert errors.startswith(f"fusedbn tune: error: cannot create the output folder '{out}': ")
    assert len(errors.splitlines()) == 1, errors
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]
    assert not Path(out).exists() or Path(out).is_file()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--trials", "x"], "argument --trials: invalid int value: 'x'"),
        (["--tiers", "9"], "argument --tiers: invalid choice: 9"),
        (["--sampler", "bayes"], "argument --sampler: invalid choice: 'bayes'"),
        (["--range", "learning_rate=0.1"], "argument --range: expected NAME=LOW:HIGH"),
        (["--threads", "two"], "argument --threads: invalid int value: 'two'"),
        (["--bogus"], "unrecognized arguments: --bogus"),
    ],
)
def test_malformed_options_are_one_line_and_exit_2(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
    argv: list[str],
    message: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        run_in_process(*argv)
    assert exit_info.value.code == 2
    errors = capsys.readouterr().err
    assert errors.startswith(f"fusedbn tune: error: {message}") and len(errors.splitlines()) == 1
    assert errors.endswith(" (see fusedbn tune --help)\n")
    assert list(tmp_path.iterdir()) == []


def test_grid_linear_scale_no_batchnorm_and_several_seeds_in_memory(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    argv = ["--storage", "memory", "--sampler", "grid", "--linear", "learning_rate", "--tiers", "1"]
    argv += ["--trials", "4", "--stages", "1", "--epochs", "1", "--no-batchnorm", "--pruner", "none"]
    argv += ["--seed", "3", "4", "--train-seed", "7", "--out", str(tmp_path / "out")]
    assert run_in_process(*argv) == 0
    output = capsys.readouterr().out
    assert "Study fusedbn-digits-seed3" in output and "Study fusedbn-digits-seed4" in output
    assert output.splitlines()[-1].startswith("Over 2 seeds: best validation ")
    for seed in (3, 4):
        summary = json.loads((tmp_path / "out" / f"seed{seed}" / "summary.json").read_text())
        assert summary["scales"] == {"learning_rate": "linear"}
        assert summary["seed"] == seed and summary["train_seed"] == 7
        assert summary["stages"][0]["complete"] == 4  # no pruner: every trial runs to the end
    assert not (tmp_path / "out" / "study.db").exists()


@pytest.mark.parametrize(("argv", "threads"), [([], 1), (["--threads", "2"], 2)])
def test_trials_train_on_the_threads_asked_for_and_the_count_is_restored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, argv: list[str], threads: int
) -> None:
    seen: list[int] = []
    real_tune = cli.tune

    def tune_and_record(*args: object, **kwargs: object) -> object:
        seen.append(torch.get_num_threads())
        return real_tune(*args, **kwargs)

    monkeypatch.setattr(cli, "tune", tune_and_record)
    torch.set_num_threads(3)  # restored to 1 by the one_torch_thread fixture
    argv = [*argv, "--storage", "memory", "--trials", "1", "--stages", "1", "--epochs", "1"]
    assert run_in_process(*argv, "--out", str(tmp_path / "out")) == 0
    assert seen == [threads]
    assert torch.get_num_threads() == 3


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_cuda_without_a_gpu_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert run_in_process("--device", "cuda", "--out", str(tmp_path / "out")) == 2
    assert "no CUDA GPU" in capsys.readouterr().err


def _running_trial(db: Path, study_name: str, process: object, timeout: float = 120) -> optuna.Study:
    """Wait until the study has a finished trial and a running one with at least 30 of its 60 epochs
    to go (time for the signal to land inside it, even on a busy machine); returns the study."""
    deadline = time.monotonic() + timeout
    while True:
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "timed out"
        try:
            study = optuna.load_study(study_name=study_name, storage=open_storage(f"sqlite:///{db}"))
            trials = study.get_trials()
        except (StorageError, KeyError):  # the folder or the study is not there yet
            trials = []
        early = [t for t in trials if t.state == TrialState.RUNNING and 1 <= len(t.intermediate_values) <= 30]
        if early and any(t.state in FINISHED for t in trials):
            return study
        time.sleep(0.05)


def test_ctrl_c_stops_the_running_trial_cleanly_and_the_same_command_resumes(
    tmp_path: Path, start_tune: Callable
) -> None:
    argv = ["--trials", "2", "--stages", "1", "--epochs", "60", "--pruner", "none", "--out", "out"]
    process = start_tune(*argv)
    study = _running_trial(tmp_path / "out" / "study.db", "fusedbn-digits-stage1", process)
    (stopped,) = [t.number for t in study.get_trials() if t.state == TrialState.RUNNING]
    process.send_signal(signal.SIGINT)
    output, errors = process.communicate(timeout=60)

    assert process.returncode == 130 and output == ""
    trials = study.get_trials()
    finished = sum(t.state in FINISHED for t in trials)
    assert errors.splitlines() == [
        "fusedbn tune: interrupted. A trial that was running is marked failed and runs again on resume.",
        f"{finished} finished trials are stored in sqlite:///out/study.db "
        f"(fusedbn-digits-stage1: {finished}).",
        "Run the same command again to resume.",
    ]
    assert trials[stopped].state == TrialState.FAIL, "the running trial stops, it does not run to its end"
    assert trials[stopped].user_attrs[FAILURE_ATTR].startswith("interrupted (Ctrl-C)")
    assert not [t for t in trials if t.state == TrialState.RUNNING]

    resumed = start_tune(*argv)
    output, errors = resumed.communicate(timeout=150)
    assert resumed.returncode == 0, errors
    assert errors.splitlines()[0] == (
        f"resuming: {finished} finished trials of study 'fusedbn-digits' in sqlite:///out/study.db "
        f"(stage 1: {finished} finished)"
    )
    assert "Best validation accuracy" in output
    trials = study.get_trials()
    assert sum(t.state in FINISHED for t in trials) == 2
    assert [t.number for t in trials if t.state == TrialState.FAIL] == [stopped]
