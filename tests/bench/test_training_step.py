"""The training-step benchmark: the smoke run end to end, the agreement check, options."""

import argparse
import csv
import math

import pytest
import torch

from fusedbn.backend import backend_for

from .helpers import load

training_step = load("training_step")
EAGER, EPILOGUES, FUSEDBN = training_step.EAGER, training_step.EPILOGUES, training_step.FUSEDBN
TORCH_BN, TOLERANCES, VARIANTS = training_step.TORCH_BN, training_step.TOLERANCES, training_step.VARIANTS
StepCase, StepResult = training_step.StepCase, training_step.StepResult


def test_smoke_run_trains_every_variant_alike(tmp_path, capsys):
    code = training_step.main(["--smoke", "--out", str(tmp_path), "--warmup", "1", "--steps", "1"])
    output = capsys.readouterr().out
    assert code == 0, output
    with (tmp_path / training_step.CSV_FILE).open() as handle:
        rows = list(csv.DictReader(handle))
    assert [row["variant"] for row in rows] == list(VARIANTS)
    for row in rows:
        assert row["status"] == "ok", row
        assert row["agrees"] == "yes", row
        assert float(row["images_per_s"]) > 0 and float(row["host_ms"]) > 0
        assert math.isfinite(float(row["loss_first"])) and math.isfinite(float(row["loss_last"]))
        # fusedbn's rows say which implementation ran: on the CPU the interpreter or torch's fallback.
        expected_backend = "torch" if row["variant"] == TORCH_BN else backend_for("cpu")
        assert row["backend"] == expected_backend
    # The fused variants really are different models that ran the same training.
    assert float(rows[1]["loss_diff"]) <= TOLERANCES["fp32"].loss
    summary = (tmp_path / training_step.SUMMARY_FILE).read_text()
    assert summary.count("| yes ") == len(VARIANTS)
    assert "fusedbn.bench.resnet (tiny) at 16x16, 1 timed steps" in summary
    assert (tmp_path / training_step.PLOT_FILE).stat().st_size > 0
    with (tmp_path / training_step.KERNELS_FILE).open() as handle:
        header = next(csv.reader(handle))
    assert header[:2] == ["variant", "execution"] and "device_us_per_step" in header  # no profile: no rows


def test_the_plot_says_what_it_shows_and_labels_every_case_part() -> None:
    results = [
        StepResult(StepCase(variant, EAGER, "fp32", "channels_last", 4), "ok", backend, images_per_s=ips)
        for variant, backend, ips in (("torch", "torch", 10.0), ("fusedbn", "torch", 11.0))
    ]
    figure = training_step.plot_figure(results, "Training steps of a tiny ResNet")
    (axes,) = figure.axes
    assert figure.get_suptitle() == "Training steps of a tiny ResNet"
    assert [t.get_text() for t in axes.get_xticklabels()] == ["eager\nfp32\nchannels_last\nbatch 4"]
    assert [t.get_text() for t in axes.get_legend().get_texts()] == [
        "torch (BatchNorm run by torch)",
        "fusedbn (BatchNorm run by torch)",
    ]
    assert "higher is better" in axes.get_ylabel()
    assert training_step.plot_figure([StepResult(results[0].case, "error: x")], "none measured") is None


def _result(variant: str, losses: list[float], stats: list[float], precision: str = "bf16") -> StepResult:
    return StepResult(
        StepCase(variant, EAGER, precision, "channels_last", 8),
        "ok",
        losses=losses,
        running_stats={"bn1.running_var": torch.tensor(stats)},
    )


def test_agreement_flags_a_variant_beyond_tolerance():
    tolerance = TOLERANCES["bf16"]
    reference = _result(TORCH_BN, [2.0, 1.5], [1.0, 4.0])
    close = _result(FUSEDBN, [2.0 * (1 + tolerance.loss / 2), 1.5], [1.0, 4.0])
    far_loss = _result(EPILOGUES, [2.0, 1.5 + 4.0 * tolerance.loss], [1.0, 4.0])
    far_stats = _result(FUSEDBN, [2.0, 1.5], [1.0, 4.0 * (1 + 2 * tolerance.running_stats)])
    far_stats.case = StepCase(FUSEDBN, "cuda-graph", "bf16", "channels_last", 8)
    orphan = _result(FUSEDBN, [2.0, 1.5], [1.0, 4.0], precision="fp16")
    failed = StepResult(StepCase(EPILOGUES, "compile", "bf16", "channels_last", 8), "error: boom")
    results = [reference, close, far_loss, far_stats, orphan, failed]
    training_step.check_agreement(results)
    assert [r.agrees for r in results] == ["yes", "yes", "NO", "NO", "-", ""]
    assert close.loss_diff == pytest.approx(tolerance.loss / 2, rel=1e-3)
    assert far_stats.stats_diff == pytest.approx(2 * tolerance.running_stats, rel=1e-3)


def test_nan_loss_disagrees():
    reference = _result(TORCH_BN, [2.0, 1.5], [1.0, 4.0])
    broken = _result(FUSEDBN, [2.0, math.nan], [1.0, 4.0])
    training_step.check_agreement([reference, broken])
    assert broken.agrees == "NO"


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    training_step.add_arguments(parser)
    return parser.parse_args(argv)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--batches", "64,1"], "batch sizes must be at least 2"),
        (["--batches", "big"], "expected comma-separated batch sizes"),
        (["--executions", "eager,graph"], "unknown execution 'graph'"),
        (["--steps", "0"], "expected a positive number, got '0'"),
        (["--warmup", "x"], "expected a positive number, got 'x'"),
        (["--variants", "apex"], "unknown variant 'apex'"),
        (["--precisions", "fp8"], "unknown precision 'fp8'"),
    ],
)
def test_bad_options_are_refused(argv, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        training_step.main([*argv, "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert message in line and line.startswith("python benchmarks/training_step.py: error:")
    assert not (tmp_path / "out").exists()


def test_gpu_plan_runs_eager_first_and_the_target_case_first():
    plan = training_step.build_plan(_parse("--executions", "compile,eager", "--precisions", "bf16"))
    cases = plan.cases()
    assert cases[0] == StepCase(TORCH_BN, "compile", "bf16", "channels_last", 128)
    assert plan.settings.model == "resnet50" and plan.settings.image_size == 224
    smoke = training_step.build_plan(_parse("--smoke"))
    assert smoke.device.type == "cpu" and smoke.executions == (EAGER,) and smoke.settings.model == "tiny"


def test_cuda_only_executions_are_skipped_on_the_cpu(tmp_path):
    plan = training_step.build_plan(_parse("--smoke", "--executions", "cuda-graph", "--variants", "torch"))
    results = training_step.run_plan(plan, training_step.base_model(plan.settings)[0])
    assert [r.status for r in results] == ["skipped: cuda-graph needs CUDA"]


@pytest.mark.cuda
def test_cuda_eager_and_graph_steps_train_alike(tmp_path):
    # Every variant in eager mode and as a captured CUDA graph, fp32 (checked against torch eager)
    # and fp16 with a GradScaler (checked to run and to profile).
    tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        plan = training_step.build_plan(
            _parse("--model", "tiny", "--image-size", "32", "--batches", "8",
                   "--executions", "eager,cuda-graph", "--precisions", "fp32,fp16",
                   "--layouts", "channels_last", "--warmup", "2", "--steps", "3", "--profile-steps", "1")
        )  # fmt: skip
        results = training_step.run_plan(plan, training_step.base_model(plan.settings)[0])
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32
    assert len(results) == 2 * 2 * len(VARIANTS)
    for result in results:
        assert result.status == "ok", (result.case, result.status)
        assert all(math.isfinite(loss) for loss in result.losses)
        assert result.gpu_ms > 0
        # Kernels replayed from a CUDA graph may not reach the profiler one by one.
        graph = result.case.execution == "cuda-graph"
        assert 0 < result.bn_share < 1 or (graph and math.isnan(result.bn_share))
        if result.case.precision == "fp32":
            assert result.agrees == "yes", (result.case, result.loss_diff, result.stats_diff)
