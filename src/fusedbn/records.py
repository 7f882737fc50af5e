"""What a harness run records about itself (:class:`RunRecord`: when, on what device and machine, with
which versions, from which commit, under what load), and the two forms every harness writes numbers in:
:func:`write_csv` and :func:`table`, a Markdown table padded to its columns, read in a terminal as
rendered."""

import csv
import dataclasses
import datetime
import math
import os
import platform
import re
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import triton

from fusedbn._version import __version__

SOURCE = Path(__file__).resolve().parent  # fusedbn's source folder, inside its git checkout


@dataclass(frozen=True)
class RunRecord:
    """When, where and with what a run was made; ``load_after`` is NaN until :meth:`finished`."""

    run_id: str
    date: str
    device: str
    machine: str
    torch: str
    triton: str
    cuda: str
    fusedbn: str
    commit: str
    torch_threads: int
    load_before: float  # 1-minute load average: the machine's other work shows there
    load_after: float = math.nan

    def finished(self) -> "RunRecord":
        """This record with the load average at the end of the run."""
        return dataclasses.replace(self, load_after=os.getloadavg()[0])

    def header(self) -> str:
        """The record in one line, as every harness's report opens: run, device, machine, threads (when
        known), load (before, and after once finished), versions and commit."""
        threads = f", {self.torch_threads} torch threads" if self.torch_threads else ""
        load = f"load {self.load_before:.2f}"
        if not math.isnan(self.load_after):
            load += f" before, {self.load_after:.2f} after"
        return (f"run {self.run_id} on {self.device} ({self.machine}{threads}, {load}): torch {self.torch}, "
                f"triton {self.triton}, CUDA {self.cuda}, fusedbn {self.fusedbn} at {self.commit}")

    @classmethod
    def from_row(cls, row: Mapping[str, str]) -> "RunRecord":
        """A record read back from a CSV row; fields that an older file lacks read as "?" or NaN."""
        values = {}
        for field in dataclasses.fields(cls):
            text = row.get(field.name, "")
            kind = field.type if field.type in (int, float) else str
            values[field.name] = kind(text) if text else {int: 0, float: math.nan, str: "?"}[kind]
        return cls(**values)


def device_name(device: torch.device | str) -> str:
    """The GPU's name for a CUDA device, else the CPU's description."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu {platform.processor() or platform.machine()}"


def git_commit(repo: Path = SOURCE) -> str:
    """The commit checked out in ``repo`` (default: fusedbn's source), "-dirty" if tracked files changed;
    without a git repository, the environment variable FUSEDBN_COMMIT, else "unknown"."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        changed = subprocess.run(["git", "diff", "--quiet", "HEAD"], cwd=repo, timeout=10).returncode
    except (OSError, subprocess.SubprocessError):
        return os.environ.get("FUSEDBN_COMMIT", "unknown")
    return commit + ("-dirty" if changed else "")


def run_record(device: torch.device | str = "cpu", now: datetime.datetime | None = None) -> RunRecord:
    """The record of a run starting ``now`` (default: the current UTC time) on ``device``."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    return RunRecord(
        run_id=now.strftime("%Y%m%dT%H%M%SZ"),
        date=now.isoformat(timespec="seconds"),
        device=device_name(device),
        machine=f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        torch=torch.__version__,
        triton=triton.__version__,
        cuda=torch.version.cuda or "none",
        fusedbn=__version__,
        commit=git_commit(),
        torch_threads=torch.get_num_threads(),
        load_before=os.getloadavg()[0],
    )


_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)(e[-+]?\d+)?[x%!]?|[-+]?(nan|inf)|-")


def table(rows: Sequence[Mapping[str, object]], columns: Sequence[str] | None = None) -> str:
    """``rows`` as a Markdown table, a column per key (default: every key, in order of appearance), cells
    padded to their column; a column of numbers (and "-") aligned right, an empty one left; a missing value is
    an empty cell, "|" is escaped and a line break a space; no rows: ""."""
    if not rows:
        return ""
    columns = list(columns or dict.fromkeys(key for row in rows for key in row))
    cells = [[str(row.get(c, "")).replace("|", "\\|").replace("\n", " ") for c in columns] for row in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    right = [any(row[i] for row in cells) and all(_NUMBER.fullmatch(row[i]) for row in cells if row[i])
             for i in range(len(columns))]  # fmt: skip

    def line(values: Sequence[str]) -> str:
        padded = (v.rjust(w) if r else v.ljust(w) for v, w, r in zip(values, widths, right, strict=True))
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join("-" * (w + 1) + (":" if r else "-") for w, r in zip(widths, right, strict=True))
    return "\n".join([line(columns), rule + "|", *(line(row) for row in cells)])


def write_csv(
    path: Path, rows: Iterable[Mapping[str, object]], columns: Sequence[str], append: bool = False
) -> None:
    """Write ``rows`` (mappings of the ``columns``) to the CSV file ``path`` under a header row; ``append``
    adds them to a file that has rows under the same header (else ValueError naming it, nothing written)."""
    appending = append and path.exists() and path.stat().st_size > 0
    if appending:
        with path.open(newline="") as handle:
            if next(csv.reader(handle), []) != list(columns):
                raise ValueError(f"{path} has other columns than this version of fusedbn writes")
    with path.open("a" if appending else "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns))
        if not appending:
            writer.writeheader()
        writer.writerows(rows)
