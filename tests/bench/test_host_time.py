"""The host-time report: where the profiled time goes, the smoke run on the fake GPU, bad options."""

import csv
import json
import math

import pytest
import torch
import triton

import fusedbn
from fusedbn.bench.core import KERNEL_SOURCES

from .helpers import load

host_time = load("host_time")
source_area = host_time.source_area


def test_source_areas_name_fusedbn_files_packages_c_functions_and_the_rest(tmp_path):
    assert source_area(fusedbn.__file__) == "fusedbn/__init__.py"
    assert source_area(str(KERNEL_SOURCES / "launcher.py")) == "fusedbn/kernels/launcher.py"
    assert source_area(torch.nn.functional.__file__) == "torch"
    assert source_area(triton.__file__) == "triton"
    assert source_area(json.__file__) == "Python standard library"
    assert source_area("~") == "C functions"
    assert source_area(str(tmp_path / "script.py")) == "the benchmark's own calls"


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
            shares = {m.split(":", 1)[1]: v for (n, s, m), v in values.items()
                      if (n, s) == (name, side) and m.startswith("self_time_share:")}  # fmt: skip
            assert math.isclose(sum(shares.values()), 1.0, abs_tol=0.01), (name, side)
            # fusedbn's own files take part in fusedbn's calls (but for the floor), never in torch's.
            core = {a for a in shares if a.startswith("fusedbn/") and not a.startswith("fusedbn/bench/")}
            assert bool(core) == (side == "fusedbn" and name != "floor"), (name, side, shares)
    launches = {name: values[(name, "fusedbn", "launches_per_call")] for name in host_time.VARIANT_NAMES}
    assert launches["whole-channel"] == launches["channels_last"] == launches["add-relu"] == 2
    assert launches["triton-launch"] == 2
    assert launches["eval"] == 1 and launches["floor"] == 0
    # On the host-bound smoke shape the cost model picks torch's BatchNorm: no kernel of fusedbn's runs.
    assert launches["auto"] == launches["auto-eval"] == 0
    assert launches["split"] > launches["whole-channel"]
    assert values[("eval", "torch", "launches_per_call")] == 0
    summary = (tmp_path / host_time.MARKDOWN_FILE).read_text()
    assert "fake GPU" in summary and "| add-relu " in summary and "fusedbn/kernels/launcher.py" in summary
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
     (["--rounds", "0"], "expected a positive number, got '0'")],
)  # fmt: skip
def test_bad_options_are_refused(argv, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        host_time.main(["--fake-gpu", "--out", str(tmp_path / "out"), *argv])
    assert exit_info.value.code == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert message in line and line.startswith("python benchmarks/host_time.py: error:")
    assert not (tmp_path / "out").exists()


@pytest.mark.cuda
def test_cuda_run_measures_the_real_launches(tmp_path):
    argv = ["--smoke", "--out", str(tmp_path), "--variants", "whole-channel,eval"]
    assert host_time.main(argv) == 0
    values = measured(tmp_path / host_time.CSV_FILE)
    assert values[("whole-channel", "fusedbn", "launches_per_call")] == 2
    assert values[("eval", "fusedbn/torch", "ratio_median")] > 0
