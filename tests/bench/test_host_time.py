"""The host-time report: stage clocks, instrumentation that puts everything back, the smoke run."""

import csv
import sys
import time
import types

import pytest

import fusedbn.autograd
import fusedbn.functional
from fusedbn.backend import TORCH, backend_for
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
        assert fusedbn.functional.check_batch_norm_args is not None
    present = {f"{m}.{p}" for stage in STAGES for m, p in stage.targets} - set(missing)
    assert "fusedbn.functional.check_batch_norm_args" in present
    assert "fusedbn.autograd.FusedBatchNormFunction.forward" in present
    assert isinstance(vars(fusedbn.autograd.FusedBatchNormFunction)["forward"], staticmethod)


def test_smoke_report(tmp_path, capsys):
    argv = ["--smoke", "--out", str(tmp_path), "--layouts", "channels_last", "--steps", "2", "--warmup", "1"]
    assert host_time.main(argv) == 0
    assert "host time per training forward+backward" in capsys.readouterr().out
    with (tmp_path / host_time.CSV_FILE).open() as handle:
        parts = {row["part"]: float(row["us_per_step"]) for row in csv.DictReader(handle)}
    assert parts["torch eager step"] > 0 and parts["fusedbn step"] > 0
    # The clocks reached fusedbn's checks and its Function; kernels launch unless torch's fallback runs.
    assert parts["argument checks"] > 0
    assert parts["rest of the Function bodies"] + parts["planning"] + parts["kernel launches"] > 0
    assert (parts["kernel launches"] > 0) == (backend_for("cpu") != TORCH)
    assert "BatchNormFunction" in (tmp_path / host_time.TEXT_FILE).read_text()


def test_bad_shape_is_refused(tmp_path, capsys):
    assert host_time.main(["--smoke", "--out", str(tmp_path), "--shapes", "4x"]) == 2
    assert "unknown shape '4x'" in capsys.readouterr().err


@pytest.mark.cuda
def test_cuda_report_times_the_launches(tmp_path):
    argv = [
        "--out",
        str(tmp_path),
        "--shapes",
        "8x16x6x6",
        "--layouts",
        "nchw",
        "--steps",
        "5",
        "--warmup",
        "2",
    ]
    assert host_time.main(argv) == 0
    with (tmp_path / host_time.CSV_FILE).open() as handle:
        parts = {row["part"]: float(row["us_per_step"]) for row in csv.DictReader(handle)}
    assert parts["fusedbn step"] > 0 and parts["torch eager step"] > 0
    assert parts["argument checks"] > 0 and parts["planning"] + parts["kernel launches"] > 0
