"""Benchmark results: one row per measured case, with the run's metadata, appended to a CSV file.

Every row repeats the run's metadata (run id, date, device, versions, commit, measured copy
bandwidth), so rows from many runs can share one file and still be told apart.
"""

import csv
import dataclasses
import datetime
import math
import os
import platform
import subprocess
from dataclasses import dataclass
from pathlib import Path

import torch
import triton

import fusedbn

OK = "ok"


@dataclass(frozen=True)
class RunInfo:
    """Where and with what a run was measured."""

    run_id: str
    date: str
    device: str
    torch: str
    triton: str
    fusedbn: str
    commit: str
    cuda: str
    copy_gbps: float


@dataclass(frozen=True)
class Result:
    """One case (shape, dtype, layout, mode, provider) and what was measured for it.

    ``status`` is "ok", "error: ..." or "skipped: ..."; the numbers are NaN unless it is "ok".
    ``rel_diff`` is the largest difference from torch eager's output relative to its largest
    value (NaN for eager itself). ``backend`` names what ran fusedbn (see fusedbn.backend_for).
    """

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


INFO_FIELDS = [f.name for f in dataclasses.fields(RunInfo)]
RESULT_FIELDS = [f.name for f in dataclasses.fields(Result)]
COLUMNS = INFO_FIELDS + RESULT_FIELDS


def git_commit(repo: Path | None = None) -> str:
    """The checked-out commit of fusedbn's source tree, with "-dirty" if tracked files changed.

    Falls back to the environment variable FUSEDBN_COMMIT, then to "unknown", where there is no git
    repository (a copied tree, say).
    """
    repo = repo or Path(fusedbn.__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        changed = subprocess.run(["git", "diff", "--quiet", "HEAD"], cwd=repo, timeout=10).returncode
    except (OSError, subprocess.SubprocessError):
        return os.environ.get("FUSEDBN_COMMIT", "unknown")
    return commit + ("-dirty" if changed else "")


def error_status(error: Exception, where: str = "") -> str:
    """A failed case's status: ``error: <where><type>: <first line of the message>``, at most 300 chars."""
    lines = str(error).strip().splitlines()
    return f"error: {where}{type(error).__name__}: {lines[0] if lines else ''}"[:300]


def device_name(device: torch.device) -> str:
    """The GPU's name for CUDA, else the CPU's description."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu {platform.processor() or platform.machine()}"


def collect_run_info(device: torch.device, copy_gbps: float, now: datetime.datetime | None = None) -> RunInfo:
    """RunInfo for a run starting ``now`` (default: the current UTC time) on ``device``."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    return RunInfo(
        run_id=now.strftime("%Y%m%dT%H%M%SZ"),
        date=now.isoformat(timespec="seconds"),
        device=device_name(device),
        torch=torch.__version__,
        triton=triton.__version__,
        fusedbn=fusedbn.__version__,
        commit=git_commit(),
        cuda=torch.version.cuda or "none",
        copy_gbps=copy_gbps,
    )


class ResultFile:
    """A CSV file that rows are appended to as they are measured, so an interrupted run keeps them."""

    def __init__(self, path: Path, info: RunInfo):
        self.path = path
        self.info = info
        if path.exists() and path.stat().st_size > 0:
            with path.open(newline="") as handle:
                header = next(csv.reader(handle), [])
            if header != COLUMNS:
                raise ValueError(
                    f"{path} has other columns than this version of fusedbn bench writes; "
                    f"choose another --out folder"
                )
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("w", newline="") as handle:
                csv.writer(handle).writerow(COLUMNS)

    def append(self, result: Result) -> None:
        row = dataclasses.asdict(self.info) | dataclasses.asdict(result)
        with self.path.open("a", newline="") as handle:
            csv.DictWriter(handle, fieldnames=COLUMNS).writerow(row)


def _convert(cls: type, row: dict[str, str]) -> object:
    values = {}
    for field in dataclasses.fields(cls):
        text = row[field.name]
        values[field.name] = field.type(text) if field.type in (int, float) else text
    return cls(**values)


def read_results(path: Path, run_id: str | None = None) -> tuple[RunInfo, list[Result]]:
    """The rows of one run in a result file: ``run_id``'s, or by default the last run's."""
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        raise ValueError(f"{path} holds no results")
    missing = set(COLUMNS) - set(rows[0])
    if missing:
        raise ValueError(f"{path} is not a fusedbn bench result file (no {', '.join(sorted(missing))})")
    wanted = run_id or rows[-1]["run_id"]
    rows = [row for row in rows if row["run_id"] == wanted]
    if not rows:
        raise ValueError(f"{path} has no run {wanted!r}")
    return _convert(RunInfo, rows[0]), [_convert(Result, row) for row in rows]
