"""The ``fusedbn tune`` command (fusedbn.tuning.cli): end to end on a tiny budget, and bad arguments."""

import argparse
import json
from collections.abc import Callable
from pathlib import Path

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
