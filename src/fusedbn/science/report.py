"""Writing the findings into ``science.json`` (every number and each figure's data) and ``REPORT.md``
(readable, with the figures and another task's verdicts when given), and reading them back."""

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from fusedbn.records import RunRecord, table
from fusedbn.science.experiments import Finding, Preset
from fusedbn.science.stats import PairedTest

JSON_FILE = "science.json"
MARKDOWN_FILE = "REPORT.md"


class ReportFileError(ValueError):
    """A science.json that cannot be read back; the message says why."""


@dataclass
class RunInfo:
    """How a run went: its task and record, wall and CPU seconds (workers included), the number of worker
    processes and the CPU seconds of each group of experiments."""

    task: str
    record: RunRecord
    wall_seconds: float
    cpu_seconds: float
    workers: int = 1
    group_cpu_seconds: list[float] = field(default_factory=list)


@dataclass
class Comparison:
    """Another task's findings (read from its ``science.json``): its task and each experiment's verdict."""

    task: str
    source: str
    verdicts: dict[str, str]
    titles: dict[str, str]


def read_comparison(path: str | Path) -> Comparison:
    """The task and verdicts of the ``science.json`` at ``path`` (``--compare``); raises
    :class:`ReportFileError` naming an unreadable file."""
    try:
        task, findings = read_science(Path(path))
    except ReportFileError as error:
        raise ReportFileError(f"--compare: {error}") from None
    verdicts, titles = {f.key: f.verdict for f in findings}, {f.key: f.title for f in findings}
    return Comparison(task, str(path), verdicts, titles)


def _tests_table(finding: Finding) -> list[dict[str, object]]:
    """A table row per paired test of ``finding``, with its verdict."""
    return [{"comparison": test.name, "test": test.test, "pairs": test.n,
             "mean difference": f"{test.mean_difference:+.4f}",
             "95% bootstrap CI": f"[{test.ci_low:+.4f}, {test.ci_high:+.4f}]", "p": f"{test.p_value:.2g}",
             "verdict": verdict}
            for test, verdict in zip(finding.tests, finding.test_verdicts, strict=False)]  # fmt: skip


def _groups_sentence(run: RunInfo) -> str:
    """The CPU time of each group of experiments, and what it means for the wall time on idle cores."""
    groups = run.group_cpu_seconds
    if len(groups) < 2:
        return ""
    minutes = ", ".join(f"{seconds / 60:.1f}" for seconds in groups)
    return (f" The {len(groups)} groups of experiments used {minutes} min of CPU: on idle cores, with a "
            f"worker per group, the run takes about {max(groups) / 60:.1f} min.")  # fmt: skip


def _side_by_side(findings: Sequence[Finding], run: RunInfo, other: Comparison) -> list[str]:
    """The two tasks' verdicts per experiment side by side, and a sentence for each one where they differ."""
    mine = {f.key: f for f in findings}
    titles = {**other.titles, **{f.key: f.title for f in findings}}  # the other task's experiments first
    rows = [{"experiment": title, other.task: other.verdicts.get(key, "not run"),
             run.task: mine[key].verdict if key in mine else "not run"}
            for key, title in titles.items()]  # fmt: skip
    differ = [
        f"- {title}: **{mine[key].verdict}** on {run.task}, **{other.verdicts[key]}** on {other.task}."
        for key, title in titles.items()
        if key in mine and key in other.verdicts and mine[key].verdict != other.verdicts[key]
    ]
    agree = "The verdicts agree wherever both tasks ran the experiment."
    return [f"## {run.task} beside {other.task}",
            f"The verdicts of this run beside those of `{other.source}`.", table(rows),
            *(["Where they differ:", "\n".join(differ)] if differ else [agree])]  # fmt: skip


def markdown(
    findings: Sequence[Finding], preset: Preset, command: str, run: RunInfo, other: Comparison | None = None
) -> str:
    """The report as Markdown: a verdict table, the other task's verdicts beside them when given, then
    one section per experiment with its figure."""
    cpu_share = run.cpu_seconds / max(1e-9, run.wall_seconds * run.workers * run.record.torch_threads)
    paragraphs = [
        "# `fusedbn science`: the tuning advice put to the test",
        f"Command: `{command}` (task `{run.task}`, preset `{preset.name}`: {preset.seeds} seeds, "
        f"{preset.epochs} epoch(s) per training). Wall time {run.wall_seconds / 60:.1f} min, CPU time "
        f"{run.cpu_seconds / 60:.1f} min, {run.workers} process(es) of {run.record.torch_threads} torch "
        f"thread(s), which had {cpu_share:.0%} of their cores' time (below 100%: other work shared "
        f"the machine; 1-minute load average {run.record.load_before:.1f} at the start, "
        f"{run.record.load_after:.1f} at the end). Same command, same numbers: every draw is seeded. "
        f"Run on {run.record.machine}, torch {run.record.torch}, fusedbn {run.record.fusedbn} at "
        f"{run.record.commit}, {run.record.date}."
        + _groups_sentence(run),
        "Verdicts: *held* (significant at 5% in the claimed direction, bootstrap interval on that side), "
        "*contradicted* (significant the other way), *not shown* (cannot be told from chance with this "
        "data). Numbers are mean +- standard deviation over seeds unless said otherwise.",
        table([{"experiment": f.title, "verdict": f"**{f.verdict}**"} for f in findings]),
    ]
    if other is not None:
        paragraphs += _side_by_side(findings, run, other)
    for number, finding in enumerate(findings, start=1):
        paragraphs += [f"## {number}. {finding.title}", f"**Claim.** {finding.claim}",
                       f"**Setup.** {finding.setup}", table(finding.rows),
                       *([table(_tests_table(finding))] if finding.tests else []),
                       f"**Verdict: {finding.verdict}.** {finding.explanation}",
                       f"![{finding.title}]({finding.figure})"]  # fmt: skip
    return "\n\n".join(paragraphs) + "\n"


def write_report(
    findings: Sequence[Finding], preset: Preset, command: str, run: RunInfo, out: Path,
    other: Comparison | None = None,
) -> list[Path]:  # fmt: skip
    """Write ``science.json`` and ``REPORT.md`` into ``out``; returns their paths."""
    data = {"command": command, "preset": asdict(preset), "wall_seconds": round(run.wall_seconds, 1),
            "run": asdict(run), "findings": [asdict(f) for f in findings]}  # fmt: skip
    json_path, markdown_path = out / JSON_FILE, out / MARKDOWN_FILE
    json_path.write_text(json.dumps(data, indent=2, default=float) + "\n")
    markdown_path.write_text(markdown(findings, preset, command, run, other))
    return [json_path, markdown_path]


def read_science(path: Path) -> tuple[str, list[Finding]]:
    """The task and the findings, each with its figure data, of the science.json at ``path``;
    :class:`ReportFileError` says what is wrong."""
    try:
        data = json.loads(path.read_text())
    except OSError as error:
        raise ReportFileError(f"cannot read {str(path)!r}: {error.strerror or error}") from None
    except json.JSONDecodeError as error:
        raise ReportFileError(f"{str(path)!r} is not JSON: {error}") from None
    if not isinstance(data, dict):
        raise ReportFileError(f"{str(path)!r} is not a science.json (no findings)")
    findings = []
    for item in data.get("findings", []):
        if not item.get("figure_data"):
            raise ReportFileError(f"{str(path)!r} keeps no figure data for {item.get('key')!r} (an older "
                                  "fusedbn science wrote it): run the experiments again")
        try:
            findings.append(Finding(**{**item, "tests": [PairedTest(**t) for t in item["tests"]]}))
        except (TypeError, KeyError) as error:
            raise ReportFileError(f"{str(path)!r} holds a finding fusedbn cannot read: {error}") from None
    if not findings:
        raise ReportFileError(f"{str(path)!r} holds no findings")
    return data.get("run", {}).get("task", "digits"), findings
