"""Writing the findings: ``science.json`` (every number, and each figure's data) and ``REPORT.md`` (the
same, readable, with the figures); reading the findings back from ``science.json``."""

import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from fusedbn.science.experiments import Finding, Preset
from fusedbn.science.stats import PairedTest

JSON_FILE = "science.json"
MARKDOWN_FILE = "REPORT.md"


def _cell(value: object) -> str:
    return str(value).replace("|", "\\|")


def _table(rows: Sequence[dict[str, object]]) -> list[str]:
    if not rows:
        return []
    columns = list(dict.fromkeys(key for row in rows for key in row))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(row.get(c, "")) for c in columns) + " |" for row in rows]
    return lines


def _tests_table(finding: Finding) -> list[dict[str, object]]:
    return [
        {
            "comparison": test.name,
            "test": test.test,
            "pairs": test.n,
            "mean difference": f"{test.mean_difference:+.4f}",
            "95% bootstrap CI": f"[{test.ci_low:+.4f}, {test.ci_high:+.4f}]",
            "p": f"{test.p_value:.2g}",
            "verdict": verdict,
        }
        for test, verdict in zip(finding.tests, finding.test_verdicts, strict=False)
    ]


def markdown(findings: Sequence[Finding], preset: Preset, command: str, seconds: float) -> str:
    """The report as Markdown: a verdict table, then one section per experiment with its figure."""
    lines = [
        "# `fusedbn science`: the tuning advice put to the test",
        "",
        f"Command: `{command}` (preset `{preset.name}`: {preset.seeds} seeds, {preset.epochs} epoch(s) per "
        f"training). Wall time {seconds / 60:.1f} min. Same command, same numbers: every draw is seeded.",
        "",
        "Verdicts: *held* (significant at 5% in the claimed direction, bootstrap interval on that side), "
        "*contradicted* (significant the other way), *not shown* (cannot be told from chance with this "
        "data). Numbers are mean +- standard deviation over seeds unless said otherwise.",
        "",
        *_table([{"experiment": f.title, "verdict": f"**{f.verdict}**"} for f in findings]),
    ]
    for number, finding in enumerate(findings, start=1):
        lines += [
            "",
            f"## {number}. {finding.title}",
            "",
            f"**Claim.** {finding.claim}",
            "",
            f"**Setup.** {finding.setup}",
            "",
            *_table(finding.rows),
            "",
        ]
        if finding.tests:
            lines += [*_table(_tests_table(finding)), ""]
        lines += [
            f"**Verdict: {finding.verdict}.** {finding.explanation}",
            "",
            f"![{finding.title}]({finding.figure})",
        ]
    return "\n".join(lines) + "\n"


def write_report(
    findings: Sequence[Finding], preset: Preset, command: str, seconds: float, out: Path
) -> list[Path]:
    """Write ``science.json`` and ``REPORT.md`` into ``out``; returns their paths."""
    data = {
        "command": command,
        "preset": asdict(preset),
        "wall_seconds": round(seconds, 1),
        "findings": [asdict(f) for f in findings],
    }
    json_path, markdown_path = out / JSON_FILE, out / MARKDOWN_FILE
    json_path.write_text(json.dumps(data, indent=2, default=float) + "\n")
    markdown_path.write_text(markdown(findings, preset, command, seconds))
    return [json_path, markdown_path]


class ReportFileError(ValueError):
    """A science.json that cannot be read back; the message says why."""


def read_findings(path: Path) -> list[Finding]:
    """The findings kept in the science.json at ``path``; :class:`ReportFileError` says what is wrong."""
    try:
        data = json.loads(path.read_text())
    except OSError as error:
        raise ReportFileError(f"cannot read {str(path)!r}: {error.strerror or error}") from None
    except json.JSONDecodeError as error:
        raise ReportFileError(f"{str(path)!r} is not JSON: {error}") from None
    findings = []
    for item in data.get("findings", []):
        if not item.get("figure_data"):
            raise ReportFileError(
                f"{str(path)!r} keeps no figure data for {item.get('key')!r} (an older fusedbn science "
                "wrote it): run the experiments again"
            )
        try:
            findings.append(Finding(**{**item, "tests": [PairedTest(**t) for t in item["tests"]]}))
        except (TypeError, KeyError) as error:
            raise ReportFileError(f"{str(path)!r} holds a finding fusedbn cannot read: {error}") from None
    if not findings:
        raise ReportFileError(f"{str(path)!r} holds no findings")
    return findings
