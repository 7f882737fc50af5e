"""The ``fusedbn tune`` command (fusedbn.tuning.cli): end to end on a tiny budget, and bad arguments."""

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

import optuna
import pytest
import torch

from fusedbn.tuning import cli


def run_in_process(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="fusedbn tune")
    cli.add_arguments(parser)
    return cli.run(parser.parse_args(["--no-progress", *argv]))


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
        (["--sampler", "grid", "--trials", "15"], "a grid over 4 parameters needs at least 16 trials"),
        (["--linear", "learnig_rate"], "unknown parameter(s) learnig_rate"),
        (["--storage", "postgresql+psycopg2://u:p@127.0.0.1:9/db"], "cannot open storage"),
    ],
)
def test_bad_arguments_exit_2_with_a_message_and_write_no_study(
    tmp_path: Path, capsys: pytest.CaptureFixture, argv: list[str], message: str
) -> None:
    assert run_in_process("--out", str(tmp_path / "out"), *argv) == 2
    errors = capsys.readouterr().err
    assert errors.startswith("fusedbn tune: error: ") and message in errors
    assert not (tmp_path / "out" / "study.db").exists()


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


def test_a_malformed_range_is_an_argparse_error(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        run_in_process("--range", "learning_rate=0.1")
    assert exit_info.value.code == 2
    assert "expected NAME=LOW:HIGH" in capsys.readouterr().err


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
    assert "its test retrained on all training examples " in last
    assert "its test as trained in its trial" in last


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
