"""The result file: the run record on every row, appending runs, reading a run back."""

import math

import pytest

from fusedbn.bench import results
from fusedbn.bench.results import Result, ResultFile, Run
from fusedbn.records import RunRecord


def _run(run_id: str, copy_gbps: float = 3000.0) -> Run:
    record = RunRecord(run_id, "2026-01-01T00:00:00+00:00", "NVIDIA H100", "x86_64, 16 CPUs, Python 3.12",
                       "2.11", "3.6", "12.8", "0.1.0", "abc", 1, 0.5)  # fmt: skip
    return Run(record, copy_gbps)


def _result(provider: str, median_ms: float, status: str = "ok") -> Result:
    return Result("64x64x56x56", "float16", "nchw", "fwd", provider, "triton", status, median_ms=median_ms,
                  min_ms=median_ms / 2, max_ms=median_ms * 2, first_call_s=1.5, bytes=123, gbps=4.5,
                  copy_share=0.75, rel_diff=1e-4)  # fmt: skip


def test_rows_carry_the_run_record_and_runs_append(tmp_path):
    path = tmp_path / "results.csv"
    first = ResultFile(path, _run("run1"))
    first.append(_result("eager", 2.0))
    first.append(_result("fusedbn", 1.0))
    second = ResultFile(path, _run("run2", copy_gbps=4000.0))
    second.append(_result("fusedbn", 0.5))
    second.append(
        Result("65536x256", "float32", "nchw", "eval", "compile", "inductor", "skipped: time budget")
    )

    lines = path.read_text().splitlines()
    assert len(lines) == 1 + 4
    header = lines[0].split(",")
    for column in ("device", "machine", "torch", "triton", "date", "commit", "load_before", "copy_gbps",
                   "median_ms", "status"):  # fmt: skip
        assert column in header
    assert lines[1].split(",")[header.index("device")] == "NVIDIA H100"

    run, last = results.read_results(path)
    assert run.record.run_id == "run2" and run.copy_gbps == 4000.0
    assert run.record.machine == "x86_64, 16 CPUs, Python 3.12" and run.record.load_before == 0.5
    assert math.isnan(run.record.load_after)  # rows are written while the run goes on
    assert last[0] == _result("fusedbn", 0.5)
    assert last[1].status == "skipped: time budget" and math.isnan(last[1].median_ms) and not last[1].ok
    run, earlier = results.read_results(path, "run1")
    assert run.record.run_id == "run1" and [r.provider for r in earlier] == ["eager", "fusedbn"]
    assert earlier[1].key == ("64x64x56x56", "float16", "nchw", "fwd")


def test_result_file_refuses_a_file_with_other_columns(tmp_path):
    path = tmp_path / "results.csv"
    path.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="other columns"):
        ResultFile(path, _run("run1"))
    assert path.read_text() == "a,b\n1,2\n"
    with pytest.raises(ValueError, match="not a fusedbn bench result file"):
        results.read_results(path)


def test_read_results_errors(tmp_path):
    path = tmp_path / "results.csv"
    ResultFile(path, _run("run1"))
    with pytest.raises(ValueError, match="holds no results"):
        results.read_results(path)
    ResultFile(path, _run("run1")).append(_result("eager", 1.0))
    with pytest.raises(ValueError, match="no run 'run9'"):
        results.read_results(path, "run9")
