"""The ``fusedbn tune`` command (fusedbn.tuning.cli): end to end on a tiny budget, bad arguments,
threads, and Ctrl-C on a real process with a real SQLite study."""

import json
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState

import fusedbn.cli
from fusedbn.tuning import cli
from fusedbn.tuning.search import SearchConfig
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
        (["--grace-period", "1"], "grace_period_s must be a whole number of seconds >= 2, got 1"),
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
        (["--grace-period", "2.5"], "argument --grace-period: invalid int value: '2.5'"),
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
def test_threads_go_to_the_search_and_the_count_is_restored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, argv: list[str], threads: int
) -> None:
    seen: list[int] = []
    real_tune = cli.tune

    def tune_and_record(task: object, space: object, config: SearchConfig) -> object:
        seen.append(config.threads)
        return real_tune(task, space, config)

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


# Small MNIST-1D runs: one epoch, the cheapest corner of the space.
MNIST1D = ["--task", "mnist1d", "--epochs", "1", "--stages", "1", "--range", "channels=8:16"]
MNIST1D += ["--range", "batch_size=128:256"]


@pytest.mark.usefixtures("mnist1d_offline")
def test_mnist1d_end_to_end_scores_the_test_split_only_after_the_search(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "out"
    assert run_in_process(*MNIST1D, "--trials", "2", "--out", str(out)) == 0
    output = capsys.readouterr().out
    assert "Study fusedbn-mnist1d " in output
    assert "Held-out test accuracy of the chosen configuration" in output
    summary = json.loads((out / "summary.json").read_text())
    held_out = summary["held_out"]
    assert summary["best"]["test_accuracy"] is None  # no trial read the test split
    assert (held_out["train_examples"], held_out["train_examples_all"]) == (3200, 4000)
    assert held_out["valid_accuracy"] == summary["best"]["valid_accuracy"]  # the trial's model, again
    assert 0.1 < held_out["test_accuracy"] <= 1.0 and 0.1 < held_out["test_accuracy_all"] <= 1.0
    study = optuna.load_study(study_name="fusedbn-mnist1d-stage1", storage=f"sqlite:///{out / 'study.db'}")
    assert all("test_accuracy" not in trial.user_attrs for trial in study.trials)


@pytest.mark.usefixtures("mnist1d_offline")
def test_a_mnist1d_study_resumes_and_a_bad_run_leaves_it_alone(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    argv = [*MNIST1D, "--storage", storage, "--out", str(tmp_path / "out")]
    assert run_in_process(*argv, "--trials", "2") == 0
    study = optuna.load_study(study_name="fusedbn-mnist1d-stage1", storage=storage)
    first = [(trial.params, trial.value) for trial in study.trials]
    assert run_in_process(*argv, "--trials", "2", "--range", "num_layers=0:4") == 2
    assert [(trial.params, trial.value) for trial in study.trials] == first
    assert run_in_process(*argv, "--trials", "3") == 0
    resumed = [(trial.params, trial.value) for trial in study.trials]
    assert len(resumed) == 3 and resumed[:2] == first
    assert "Over" not in capsys.readouterr().out


@pytest.mark.usefixtures("mnist1d_offline")
def test_mnist1d_with_several_seeds_spreads_the_held_out_accuracies(capsys: pytest.CaptureFixture) -> None:
    argv = [*MNIST1D, "--storage", "memory", "--trials", "1", "--pruner", "none", "--no-batchnorm"]
    assert run_in_process(*argv, "--seed", "0", "1") == 0
    last = capsys.readouterr().out.splitlines()[-1]
    assert last.startswith("Over 2 seeds: best validation ")
    # In the order of the README's table: as trained in the trial, then retrained on all examples.
    assert 0 < last.index("its test as trained in its trial") < last.index("its test retrained on all")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--task", "mnist"], "unknown task 'mnist'; choose one of digits, mnist1d"),
        (["--task", "mnist1d", "--data-seed", "4x"], "--data-seed must be an integer, got '4x'"),
        (["--data-seed", "4"], "task digits has fixed data and takes no data seed"),
        (["--task", "mnist1d", "--range", "hidden_units=16:64"], "unknown parameter(s) hidden_units"),
        (["--task", "mnist1d", "--range", "num_layers=0:4"], "num_layers: range [0.0, 4.0] does not fit"),
        (["--task", "mnist1d", "--range", "batch_size=16:8192"], "does not fit task mnist1d, which takes"),
    ],
)
def test_bad_task_arguments_print_one_line_exit_2_and_create_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture, argv: list[str], message: str
) -> None:
    out = tmp_path / "out"
    assert run_in_process("--out", str(out), *argv) == 2
    errors = capsys.readouterr().err
    assert errors.count("\n") == 1 and errors.startswith("fusedbn tune: error: ") and message in errors
    assert not out.exists()


def test_mnist1d_missing_names_the_install_command_and_creates_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "mnist1d", None)
    monkeypatch.setitem(sys.modules, "mnist1d.data", None)
    assert run_in_process("--task", "mnist1d", "--out", str(tmp_path / "out")) == 2
    errors = capsys.readouterr().err
    assert errors == (
        "fusedbn tune: error: --task mnist1d needs the mnist1d package: "
        "pip install '.[tune]' (from a clone of fusedbn)\n"
    )
    assert not (tmp_path / "out").exists()


def _running_trial(db: Path, study_name: str, process: object, timeout: float = 120) -> optuna.Study:
    """Wait until the study has a finished trial and a running one with at least 40 of its 100 epochs
    to go (time for the signal to land inside it, even on a busy machine); returns the study. The
    study is opened once and then only read, so that a poll takes milliseconds, not the epochs'
    window (an epoch takes about 20 ms on the idle machine)."""
    deadline = time.monotonic() + timeout
    study = None
    while True:
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "timed out"
        try:
            study = study or optuna.load_study(study_name=study_name, storage=open_storage(f"sqlite:///{db}"))
            trials = study.get_trials()
        except (StorageError, KeyError):  # the folder or the study is not there yet
            trials = []
        early = [t for t in trials if t.state == TrialState.RUNNING and 1 <= len(t.intermediate_values) <= 60]
        if early and any(t.state in FINISHED for t in trials):
            return study
        time.sleep(0.05)


def test_ctrl_c_stops_the_running_trial_cleanly_and_the_same_command_resumes(
    tmp_path: Path, start_tune: Callable
) -> None:
    argv = ["--trials", "2", "--stages", "1", "--epochs", "100", "--pruner", "none", "--out", "out"]
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
