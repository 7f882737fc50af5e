"""The host-time report: stage clocks, instrumentation that puts everything back, the smoke run."""

import csv
import sys
import time
import types

import pytest
import torch

import fusedbn.autograd
import fusedbn.functional
from fusedbn.bench import host_time
from fusedbn.bench.host_time import STAGES, Stage, StageClock, instrumented


def test_nested_calls_of_a_stage_count_once():
    clock = StageClock()

    def work(depth: int) -> int:
        time.sleep(0.01)
        return depth if depth == 0 else timed(depth - 1)

    timed = clock.wrap("stage", work)
    start = time.perf_counter()
    assert timed(2) == 0
    elapsed = time.perf_counter() - start
    assert 0.03 <= clock.seconds["stage"] <= elapsed


def test_instrumentation_times_the_stage_and_puts_everything_back(monkeypatch):
    module = types.ModuleType("fake_stage_module")

    class Holder:
        @staticmethod
        def method(x):
            return x + 1

    def function(x):
        return Holder.method(x) * 2

    module.function, module.Holder = function, Holder
    monkeypatch.setitem(sys.modules, module.__name__, module)
    stages = (
        Stage("outer", ((module.__name__, "function"), (module.__name__, "absent"))),
        Stage("inner", ((module.__name__, "Holder.method"),)),
    )
    originals = (module.function, vars(Holder)["method"])
    clock = StageClock()
    with pytest.raises(RuntimeError, match="inside"):
        with instrumented(clock, stages) as missing:
            assert missing == [f"{module.__name__}.absent"]
            assert module.function(1) == 4
            assert module.function is not originals[0]
            raise RuntimeError("inside")
    assert (module.function, vars(Holder)["method"]) == originals
    assert set(clock.seconds) == {"outer", "inner"}
    assert clock.seconds["outer"] >= clock.seconds["inner"] > 0


def test_the_real_stage_targets_exist():
    # The checks and the autograd Function are fusedbn's own: a rename must update STAGES.
    clock = StageClock()
    with instrumented(clock) as missing:
        assert fusedbn.functional.usual_call is not None
    present = {f"{m}.{p}" for stage in STAGES for m, p in stage.targets} - set(missing)
    assert {
        "fusedbn.functional.usual_call", "fusedbn.functional.check_batch_norm_args",
        "fusedbn.autograd.plan_batch_norm", "fusedbn.functional.apply_batch_norm",
        "fusedbn.kernels.launcher.KernelLauncher.__call__",
    } <= present
    assert isinstance(vars(fusedbn.autograd.FusedBatchNormFunction)["backward"], staticmethod)


def measured(path) -> dict[tuple[str, str, str], float]:
    """The CSV's values by (variant, side, metric)."""
    with path.open() as handle:
        return {(r["variant"], r["side"], r["metric"]): float(r["value"]) for r in csv.DictReader(handle)}


def test_fake_gpu_smoke_run_measures_every_variant(tmp_path, capsys):
    """The CI run of the benchmark: every variant measured on the fake GPU (not a timed assertion)."""
    assert host_time.main(["--fake-gpu", "--smoke", "--out", str(tmp_path)]) == 0
    values = measured(tmp_path / host_time.CSV_FILE)
    for name in host_time.VARIANT_NAMES:
        assert values[(name, "fusedbn/torch", "ratio_median")] > 0, name
        for side in ("fusedbn", "torch"):
            assert values[(name, side, "us_per_call_median")] > 0, (name, side)
            assert values[(name, side, "python_calls_per_call")] > 10, (name, side)
            assert values[(name, side, "allocations_per_call")] >= 1, (name, side)
        if name != "floor":
            # The stage clocks reached fusedbn's checks and its launches.
            assert values[(name, "fusedbn", "stage_us:argument checks")] > 0, name
            assert values[(name, "fusedbn", "stage_us:kernel launches")] > 0, name
    launches = {name: values[(name, "fusedbn", "launches_per_call")] for name in host_time.VARIANT_NAMES}
    assert launches["whole-channel"] == launches["channels_last"] == launches["add-relu"] == 2
    assert launches["triton-launch"] == 2
    assert launches["eval"] == 1 and launches["floor"] == 0
    assert launches["split"] > launches["whole-channel"]
    assert values[("eval", "torch", "launches_per_call")] == 0
    summary = (tmp_path / host_time.MARKDOWN_FILE).read_text()
    assert "fake GPU" in summary and "| add-relu |" in summary
    assert summary in capsys.readouterr().out


def test_without_cuda_or_fake_gpu_it_refuses(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("there is a GPU")
    assert host_time.main(["--out", str(tmp_path / "out")]) == 2
    assert "--fake-gpu" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "argv, message",
    [(["--shape", "4x"], "unknown shape '4x'"), (["--variants", "whole"], "unknown variant 'whole'"),
     (["--rounds", "0"], "positive integer")],
)  # fmt: skip
def test_bad_options_are_refused(argv, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        host_time.main(["--fake-gpu", "--out", str(tmp_path / "out"), *argv])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.cuda
def test_cuda_run_measures_the_real_launches(tmp_path):
    argv = ["--smoke", "--out", str(tmp_path), "--variants", "whole-channel,eval"]
    assert host_time.main(argv) == 0
    values = measured(tmp_path / host_time.CSV_FILE)
    assert values[("whole-channel", "fusedbn", "launches_per_call")] == 2
    assert values[("eval", "fusedbn/torch", "ratio_median")] > 0
