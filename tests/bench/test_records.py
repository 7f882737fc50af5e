"""fusedbn.records, shared by every harness: the run record, the commit lookup, the Markdown table and
the CSV writer."""

import csv
import dataclasses
import datetime
import math
import subprocess

import pytest
import torch
import triton

import fusedbn
from fusedbn import records
from fusedbn.records import RunRecord


def test_run_record_names_when_where_and_with_what(monkeypatch):
    monkeypatch.setattr(records, "git_commit", lambda: "0123abcd")
    now = datetime.datetime(2026, 3, 4, 5, 6, 7, tzinfo=datetime.timezone.utc)
    record = records.run_record(torch.device("cpu"), now)
    assert record.run_id == "20260304T050607Z" and record.date == "2026-03-04T05:06:07+00:00"
    assert record.device.startswith("cpu") and "CPUs, Python" in record.machine
    assert (record.torch, record.triton, record.fusedbn) == (torch.__version__, triton.__version__,
                                                             fusedbn.__version__)  # fmt: skip
    assert record.commit == "0123abcd" and record.torch_threads == torch.get_num_threads()
    assert record.load_before >= 0 and math.isnan(record.load_after)
    assert record.finished().load_after >= 0 and record.finished().run_id == record.run_id


def test_a_record_reads_back_from_a_row_and_an_older_row_reads_as_unknown():
    record = records.run_record()
    row = {key: str(value) for key, value in vars(record).items()}
    assert RunRecord.from_row(row).torch_threads == record.torch_threads
    assert RunRecord.from_row(row).commit == record.commit
    old = RunRecord.from_row({"run_id": "r", "device": "NVIDIA H200", "commit": "abc"})
    assert (old.machine, old.torch_threads, old.device) == ("?", 0, "NVIDIA H200")
    assert math.isnan(old.load_before)


def test_header_is_one_line_with_load_after_once_finished_and_threads_when_known():
    record = RunRecord("20260101T000000Z", "2026-01-01", "NVIDIA H200", "x86_64, 8 CPUs", "2.11.0", "3.6.0",
                       "12.8", "0.1.0", "abc1234", 4, 0.25)  # fmt: skip
    assert record.header() == (
        "run 20260101T000000Z on NVIDIA H200 (x86_64, 8 CPUs, 4 torch threads, load 0.25): torch 2.11.0, "
        "triton 3.6.0, CUDA 12.8, fusedbn 0.1.0 at abc1234"
    )
    finished = dataclasses.replace(record, load_after=1.5, torch_threads=0)
    assert "(x86_64, 8 CPUs, load 0.25 before, 1.50 after):" in finished.header()


def _git(repo, *args):
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout.strip()


def test_git_commit_of_a_clean_and_a_changed_tree(tmp_path):
    _git(tmp_path, "init", "-q")
    (tmp_path / "file.py").write_text("a = 1\n")
    _git(tmp_path, "add", "file.py")
    _git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-q", "-m", "one")
    head = _git(tmp_path, "rev-parse", "HEAD")
    assert records.git_commit(tmp_path) == head
    (tmp_path / "file.py").write_text("a = 2\n")
    assert records.git_commit(tmp_path) == head + "-dirty"


def test_git_commit_without_a_repository_falls_back_to_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    monkeypatch.setenv("FUSEDBN_COMMIT", "feedbeef")
    assert records.git_commit(tmp_path) == "feedbeef"
    monkeypatch.delenv("FUSEDBN_COMMIT")
    assert records.git_commit(tmp_path) == "unknown"


def test_a_table_pads_its_columns_aligns_numbers_right_and_escapes_pipes():
    text = records.table([{"name": "a|b", "us": 1.5}, {"name": "longer", "us": "-", "extra": "x"}])
    assert text.splitlines() == [
        "| name   |  us | extra |",
        "|--------|----:|-------|",
        "| a\\|b   | 1.5 |       |",
        "| longer |   - | x     |",
    ]
    assert records.table([{"n": 1}], columns=["n", "m"]).splitlines()[1:] == ["|--:|---|", "| 1 |   |"]
    assert records.table([]) == ""


def test_write_csv_appends_under_the_same_header_and_refuses_another(tmp_path):
    path = tmp_path / "rows.csv"
    records.write_csv(path, [{"a": 1, "b": 2}], ["a", "b"])
    records.write_csv(path, [{"a": 3, "b": 4}], ["a", "b"], append=True)
    with path.open() as handle:
        assert list(csv.DictReader(handle)) == [{"a": "1", "b": "2"}, {"a": "3", "b": "4"}]
    before = path.read_text()
    with pytest.raises(ValueError, match="rows.csv has other columns"):
        records.write_csv(path, [{"a": 5}], ["a"], append=True)
    assert path.read_text() == before
    records.write_csv(path, [{"a": 5}], ["a"])  # without append: a new file
    assert path.read_text().splitlines() == ["a", "5"]
