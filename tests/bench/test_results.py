"""The result file: metadata on every row, appending runs, reading a run back; the commit lookup."""

import datetime
import math
import subprocess

import pytest
import torch
import triton

import fusedbn
from fusedbn.bench import results
from fusedbn.bench.results import Result, ResultFile, RunInfo


def _info(run_id: str, copy_gbps: float = 3000.0) -> RunInfo:
    return RunInfo(
        run_id, "2026-01-01T00:00:00+00:00", "NVIDIA H100", "2.11", "3.6", "0.1.0", "abc", "12.8", copy_gbps
    )


def _result(provider: str, median_ms: float, status: str = "ok") -> Result:
    return Result("64x64x56x56", "float16", "nchw", "fwd", provider, "triton", status, median_ms=median_ms,
                  min_ms=median_ms / 2, max_ms=median_ms * 2, first_call_s=1.5, bytes=123, gbps=4.5,
                  copy_share=0.75, rel_diff=1e-4)  # fmt: skip


def test_collect_run_info_names_device_versions_date_and_commit(monkeypatch):
    monkeypatch.setattr(results, "git_commit", lambda: "0123abcd")
    now = datetime.datetime(2026, 3, 4, 5, 6, 7, tzinfo=datetime.timezone.utc)
    info = results.collect_run_info(torch.device("cpu"), 12.5, now)
    assert info.run_id == "20260304T050607Z"
    assert info.date == "2026-03-04T05:06:07+00:00"
    assert info.device.startswith("cpu")
    assert (info.torch, info.triton, info.fusedbn) == (
        torch.__version__,
        triton.__version__,
        fusedbn.__version__,
    )
    assert info.commit == "0123abcd" and info.copy_gbps == 12.5


def _git(repo, *args):
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout.strip()


def test_git_commit_of_a_clean_and_a_changed_tree(tmp_path):
    _git(tmp_path, "init", "-q")
    (tmp_path / "file.py").write_text("a = 1\n")
    _git(tmp_path, "add", "file.py")
    _git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-q", "-m", "one")
    head = _git(tmp_path, "rev-parse", "HEAD")
    assert results.git_commit(tmp_path) == head
    (tmp_path / "file.py").write_text("a = 2\n")
    assert results.git_commit(tmp_path) == head + "-dirty"


def test_git_commit_without_a_repository_falls_back_to_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    monkeypatch.setenv("FUSEDBN_COMMIT", "feedbeef")
    assert results.git_commit(tmp_path) == "feedbeef"
    monkeypatch.delenv("FUSEDBN_COMMIT")
    assert results.git_commit(tmp_path) == "unknown"


def test_rows_carry_the_run_metadata_and_runs_append(tmp_path):
    path = tmp_path / "out" / "results.csv"
    first = ResultFile(path, _info("run1"))
    first.append(_result("eager", 2.0))
    first.append(_result("fusedbn", 1.0))
    second = ResultFile(path, _info("run2", copy_gbps=4000.0))
    second.append(_result("fusedbn", 0.5))
    second.append(
        Result("65536x256", "float32", "nchw", "eval", "compile", "inductor", "skipped: time budget")
    )

    lines = path.read_text().splitlines()
    assert len(lines) == 1 + 4
    header = lines[0].split(",")
    for column in ("device", "torch", "triton", "date", "commit", "copy_gbps", "median_ms", "status"):
        assert column in header
    assert lines[1].split(",")[header.index("device")] == "NVIDIA H100"

    info, last = results.read_results(path)
    assert info == _info("run2", copy_gbps=4000.0)
    assert last[0] == _result("fusedbn", 0.5)
    assert last[1].status == "skipped: time budget" and math.isnan(last[1].median_ms) and not last[1].ok
    info, earlier = results.read_results(path, "run1")
    assert info.run_id == "run1" and [r.provider for r in earlier] == ["eager", "fusedbn"]
    assert earlier[1].key == ("64x64x56x56", "float16", "nchw", "fwd")


def test_result_file_refuses_a_file_with_other_columns(tmp_path):
    path = tmp_path / "results.csv"
    path.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="other columns"):
        ResultFile(path, _info("run1"))
    with pytest.raises(ValueError, match="not a fusedbn bench result file"):
        results.read_results(path)


def test_read_results_errors(tmp_path):
    path = tmp_path / "results.csv"
    ResultFile(path, _info("run1"))
    with pytest.raises(ValueError, match="holds no results"):
        results.read_results(path)
    ResultFile(path, _info("run1")).append(_result("eager", 1.0))
    with pytest.raises(ValueError, match="no run 'run9'"):
        results.read_results(path, "run9")
