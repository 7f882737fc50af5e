"""Benchmark results: one row per measured case, appended to a CSV file with the run's record and copy
bandwidth, so rows of many runs can share one file."""

import csv
import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

from fusedbn.records import RunRecord, write_csv

OK = "ok"


@dataclass(frozen=True)
class Result:
    """One case (shape, dtype, layout, mode, provider) and what was measured: ``status`` "ok", "error: ..." or
    "skipped: ..." (the numbers are NaN unless ok); ``rel_diff``: the largest difference from eager's output
    over its largest value (NaN for eager); ``backend``: what ran it (fusedbn.backend_for)."""

    shape: str
    dtype: str
    layout: str
    mode: str
    provider: str
    backend: str
    status: str
    median_ms: float = math.nan
    min_ms: float = math.nan
    max_ms: float = math.nan
    first_call_s: float = math.nan
    bytes: int = 0
    gbps: float = math.nan
    copy_share: float = math.nan
    rel_diff: float = math.nan

    @property
    def ok(self) -> bool:
        return self.status == OK

    @property
    def key(self) -> tuple[str, str, str, str]:
        """The case without its provider: results with the same key are compared with each other."""
        return (self.shape, self.dtype, self.layout, self.mode)


@dataclass(frozen=True)
class Run:
    """A benchmark run: its record and the device-to-device copy bandwidth it measured, in GB/s."""

    record: RunRecord
    copy_gbps: float


RESULT_FIELDS = [f.name for f in dataclasses.fields(Result)]
COLUMNS = [*(f.name for f in dataclasses.fields(RunRecord)), "copy_gbps", *RESULT_FIELDS]


def error_status(error: Exception, where: str = "") -> str:
    """A failed case's status: ``error: <where><type>: <first line of the message>``, at most 300 chars."""
    lines = str(error).strip().splitlines()
    return f"error: {where}{type(error).__name__}: {lines[0] if lines else ''}"[:300]


class ResultFile:
    """A CSV file that rows are appended to as they are measured; ValueError for a file with other columns."""

    def __init__(self, path: Path, run: Run):
        self.path = path
        self.row = dataclasses.asdict(run.record) | {"copy_gbps": run.copy_gbps}
        write_csv(path, [], COLUMNS, append=True)

    def append(self, result: Result) -> None:
        write_csv(self.path, [self.row | dataclasses.asdict(result)], COLUMNS, append=True)


def read_results(path: Path, run_id: str | None = None) -> tuple[Run, list[Result]]:
    """The rows of one run in a result file: ``run_id``'s, by default the last run's (fields of the run record
    that an older file lacks read as unknown)."""
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        raise ValueError(f"{path} holds no results")
    missing = {"run_id", "copy_gbps", *RESULT_FIELDS} - set(rows[0])
    if missing:
        raise ValueError(f"{path} is not a fusedbn bench result file (no {', '.join(sorted(missing))})")
    wanted = run_id or rows[-1]["run_id"]
    rows = [row for row in rows if row["run_id"] == wanted]
    if not rows:
        raise ValueError(f"{path} has no run {wanted!r}")
    fields = dataclasses.fields(Result)
    results = [Result(**{f.name: f.type(row[f.name]) if f.type in (int, float) else row[f.name]
                         for f in fields}) for row in rows]  # fmt: skip
    return Run(RunRecord.from_row(rows[0]), float(rows[0]["copy_gbps"])), results
