"""fusedbn bench's options, presets and errors, and the smoke mode end to end."""

import argparse
import csv
import math
from pathlib import Path

import pytest
import torch

from fusedbn import costs
from fusedbn.backend import backend_for
from fusedbn.bench import cli, providers
from fusedbn.bench.results import Result, ResultFile, Run
from fusedbn.records import run_record


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="fusedbn bench")
    cli.add_arguments(parser)
    return parser.parse_args(argv)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--dtypes", "float32,fp8"], "argument --dtypes: unknown dtype 'fp8'"),
        (["--shapes", "resnet"], "argument --shapes: unknown shape 'resnet'; use a group"),
        (["--compile-shapes", "64x"], "argument --compile-shapes: unknown shape '64x'"),
        (["--modes", "train"], "argument --modes: unknown mode 'train'"),
        (["--layouts", "nhwc"], "argument --layouts: unknown layout 'nhwc'"),
        (["--providers", "cudnn"], "argument --providers: unknown provider 'cudnn'"),
        (["--rep-ms", "0"], "argument --rep-ms: expected a positive number, got '0'"),
        (["--time-budget", "soon"], "argument --time-budget: expected a positive number, got 'soon'"),
        (["--smoke", "--quick"], "not allowed with argument"),
    ],
)
def test_bad_arguments_are_refused_with_a_clear_message(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        _parse(*argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_help_is_the_module_docstring():
    assert cli.__doc__.splitlines()[0].startswith("Benchmark fusedbn's BatchNorm")


def test_full_run_plan():
    bench = cli.build_benchmark(_parse())
    assert bench.device == torch.device("cuda")
    assert len(bench.shapes) == 16
    assert bench.dtypes == ["float32", "float16", "bfloat16"]
    assert bench.layouts == ["nchw", "channels_last"]
    assert bench.modes == ["fwd", "bwd", "fwdbwd", "eval"]
    assert bench.providers == ["fusedbn", "auto", "eager", "flag_gems", "compile"]
    assert bench.compile_shapes is None and bench.compile_modes is None
    assert (bench.settings.warmup_ms, bench.settings.rep_ms) == (25, 100)
    assert bench.copy_bytes == 1 << 30
    assert math.isinf(bench.time_budget_s) and math.isinf(bench.compile_budget_s)


def test_quick_plan_compiles_resnet50_training_modes_within_budgets():
    bench = cli.build_benchmark(_parse("--quick"))
    assert bench.dtypes == ["float16", "bfloat16"]
    assert len(bench.shapes) == 16
    assert bench.compile_shapes == {s.name for s in bench.shapes[:12]}
    assert bench.compile_modes == ["fwd", "bwd", "fwdbwd"]
    assert bench.time_budget_s == 240 and bench.compile_budget_s == 150
    assert (bench.settings.warmup_ms, bench.settings.rep_ms) == (10, 40)


def test_options_override_the_preset():
    bench = cli.build_benchmark(
        _parse("--quick", "--dtypes", "fp32", "--compile-shapes", "64x16", "--compile-modes", "eval",
               "--rep-ms", "7", "--time-budget", "30", "--copy-mib", "8")
    )  # fmt: skip
    assert bench.dtypes == ["float32"]
    assert bench.compile_shapes == {"64x16"} and bench.compile_modes == ["eval"]
    assert bench.settings.rep_ms == 7 and bench.settings.warmup_ms == 10
    assert bench.time_budget_s == 30 and bench.compile_budget_s == 150
    assert bench.copy_bytes == 8 << 20


def test_smoke_plan_is_tiny_and_on_the_cpu():
    bench = cli.build_benchmark(_parse("--smoke"))
    assert bench.device == torch.device("cpu")
    assert [s.name for s in bench.shapes] == ["4x8x6x6", "64x16", "2x4x3x4x4"]
    assert bench.providers == ["fusedbn", "auto", "eager", "flag_gems"]
    assert bench.modes == ["fwd", "bwd", "fwdbwd", "eval"]


def test_a_timed_run_without_cuda_says_so(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert cli.main(["--quick", "--out", str(tmp_path)]) == 2
    assert "no CUDA device" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_list_names_the_groups_and_layer_counts(capsys):
    assert cli.main(["--list"]) == 0
    out = capsys.readouterr().out
    assert "resnet50: 64x64x112x112," in out and "extra: 32x16x256x256," in out
    assert "64x256x14x14     11" in out


def test_smoke_end_to_end_then_report(tmp_path, capsys):
    out = tmp_path / "bench"
    # The smoke mode with one dtype, to keep interpreted kernels quick.
    assert cli.main(["--smoke", "--dtypes", "bf16", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    with (out / "results.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    # 3 shapes: 2 layouts, 1 (2D), 2; 4 modes; 4 providers
    assert len(rows) == (2 + 1 + 2) * 4 * 4
    assert {row["status"] for row in rows if row["provider"] != "flag_gems"} == {"ok"}
    # FlagGems runs where it imports (a GPU machine with its wheel); elsewhere its rows say why not.
    gems_reason = providers.unavailable_reason("flag_gems")
    expected_gems = {"ok"} if gems_reason is None else {f"skipped: {gems_reason}"}
    assert {row["status"] for row in rows if row["provider"] == "flag_gems"} == expected_gems
    for column in ("device", "torch", "triton", "date", "commit", "copy_gbps"):
        assert rows[0][column] and len({row[column] for row in rows}) == 1
    assert rows[0]["torch"] == torch.__version__
    summary = (out / "summary.txt").read_text()
    assert "| 2x4x3x4x4 | bfloat16 | channels_last | eval   |" in summary and "| target" in summary
    assert summary.strip() in printed
    # The summary names what ran fusedbn's cases: on the CPU, the interpreter or torch's own BatchNorm
    # (for the kernels' rows and for auto's alike).
    kernels = backend_for("cpu", "triton" if backend_for("cpu") != "torch" else "auto")
    assert f"fusedbn backend: {kernels}, " in summary.splitlines()[3]
    assert f"auto backend: {backend_for('cpu')}, " in summary.splitlines()[3]
    for name in ("speedup.png", "bandwidth.png"):
        assert (out / name).stat().st_size > 1000
    # What the README lists for --smoke, and nothing else: no kernel profile on the CPU.
    written = sorted(p.name for p in out.iterdir())
    assert written == ["bandwidth.png", "results.csv", "speedup.png", "summary.txt"]

    # --report renders the same run again from the file, into another folder.
    again = tmp_path / "again"
    assert cli.main(["--report", str(out / "results.csv"), "--out", str(again)]) == 0
    assert (again / "summary.txt").read_text() == summary
    assert (again / "speedup.png").stat().st_size > 1000


@pytest.mark.skipif(not Path("/proc/self").exists(), reason="needs Linux's /proc")
@pytest.mark.parametrize("argv", [["--smoke"], ["--report", "results.csv"]])
def test_an_output_folder_that_cannot_be_made_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys, argv):
    monkeypatch.chdir(tmp_path)
    if "--report" in argv:
        ResultFile(tmp_path / "results.csv", Run(run_record(), 1.0)).append(
            Result("4x8x6x6", "float32", "nchw", "fwd", "eager", "torch", "ok", median_ms=1.0)
        )
    assert cli.main([*argv, "--out", "/proc/fusedbn-bench"]) == 2
    assert capsys.readouterr().err == (
        "fusedbn bench: error: cannot create the output folder '/proc/fusedbn-bench': "
        "No such file or directory\n"
    )


def test_report_renders_a_committed_result_file_written_before_the_run_record(tmp_path, capsys):
    """The H200 run's results.csv has no machine, threads or load columns: they read as unknown."""
    committed = Path(__file__).resolve().parents[2] / "benchmarks/results/2026-11-27-h200/results.csv"
    assert cli.main(["--report", str(committed), "--out", str(tmp_path)]) == 0
    summary = (tmp_path / "summary.txt").read_text()
    assert summary.startswith("run 20261127T222241Z on NVIDIA H200 (?, load nan): torch 2.11.0+cu130")
    assert "| 64x256x56x56  | float16  | channels_last | fwdbwd |" in summary


def test_report_of_a_missing_file_is_an_error(tmp_path, capsys):
    assert cli.main(["--report", str(tmp_path / "nothing.csv")]) == 2
    assert "fusedbn bench: error:" in capsys.readouterr().err


H200_RUN = "benchmarks/results/2026-11-27-h200/results.csv"


def test_calibrating_from_the_h200_run_writes_the_shipped_table(tmp_path, monkeypatch):
    """--report FILE --calibrate fits the cost model to a committed run: from the H200 run, the
    very table fusedbn ships for the H200."""
    monkeypatch.chdir(Path(__file__).resolve().parents[2])
    assert cli.main(["--report", H200_RUN, "--calibrate", "--out", str(tmp_path)]) == 0
    written = costs.load_table(tmp_path / "cost_table.json")
    assert written == costs.load_table(costs.TABLE_FOLDER / "nvidia-h200.json")


def test_calibrating_without_fusedbns_kernels_is_refused(tmp_path, capsys):
    """A smoke run's fusedbn rows ran the interpreter or torch's BatchNorm: no table of a GPU."""
    out = tmp_path / "bench"
    assert cli.main(["--smoke", "--dtypes", "fp32", "--shapes", "64x16", "--modes", "fwd",
                     "--calibrate", "--out", str(out)]) == 2
    assert "not its compiled kernels: calibrate on a GPU" in capsys.readouterr().err
    assert not (out / "cost_table.json").exists() and (out / "results.csv").exists()
