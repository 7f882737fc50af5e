"""The documentation (README.md, docs/*.md, benchmarks/NOTES.md) checked against the repository.

Every relative link resolves: its file or folder exists, and an ``#anchor`` names a heading of the
target Markdown file as GitHub spells heading anchors. Every Python code block carries a marker on
the line directly above its opening fence (the convention, documented in docs/development.md):

    <!-- doc-test: run -->               run as a script by a fresh Python in an empty folder; it must
                                         exit with code 0
    <!-- doc-test: output -->            the block after a run block: that run's stdout, exactly
    <!-- doc-test: not run: REASON -->   not run (a signature, a fragment, needs a GPU...), and why

Blocks in other languages (shell, text) are never run; an output block may be of any language.
"""

import difflib
import os
import re
import subprocess
import sys
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
LINKED_FILES = [README, *DOCS, ROOT / "benchmarks" / "NOTES.md"]
MARKED_FILES = [README, *DOCS]

MARKER = re.compile(r"^<!--\s*doc-test:\s*(.*?)\s*-->\s*$")
FENCE = re.compile(r"^(```+|~~~+)\s*([\w+-]*)")
HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$")
HTML_ANCHOR = re.compile(r"""<a\s+(?:name|id)=["']([^"']+)["']""")
INLINE_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_DEFINITION = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$")
CODE_SPAN = re.compile(r"(`+)(.+?)\1")
URL_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
LINE_ANCHOR = re.compile(r"^L\d+(-L\d+)?$")


@dataclass(frozen=True)
class Block:
    """A fenced code block: where it opens (1-based line), its language, text and doc-test marker."""

    path: Path
    line: int
    language: str
    text: str
    marker: str | None

    @property
    def name(self) -> str:
        """``file:line``, the file relative to the repository (a file elsewhere by its name)."""
        shown = self.path.relative_to(ROOT) if self.path.is_relative_to(ROOT) else self.path.name
        return f"{shown}:{self.line}"


def split_markdown(text: str, path: Path) -> tuple[list[str], list[Block]]:
    """The lines of ``text`` outside fenced code blocks (blank inside them), and the blocks."""
    lines = text.splitlines()
    prose: list[str] = []
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            prose.append(lines[i])
            i += 1
            continue
        fence, language = opening.groups()
        marker = MARKER.match(lines[i - 1]) if i > 0 else None
        end = i + 1
        while end < len(lines) and not lines[end].startswith(fence):
            end += 1
        body = "\n".join(lines[i + 1 : end])
        blocks.append(Block(path, i + 1, language.lower(), body, marker.group(1) if marker else None))
        prose.extend([""] * (end + 1 - i))
        i = end + 1
    return prose, blocks


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: its rendered text in lower case, with every character but
    letters, digits, marks, ``_``, ``-`` and spaces dropped, and spaces turned into hyphens."""
    text = CODE_SPAN.sub(lambda m: m.group(2), heading)
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", text)  # links and images: their text
    text = re.sub(r"<[^>]+>", "", text)  # inline HTML
    text = re.sub(r"(\*+)(.+?)\1", r"\2", text)  # emphasis with asterisks
    text = re.sub(r"(?<!\w)_+(.+?)_+(?!\w)", r"\1", text)  # emphasis with underscores
    kept = (
        c
        for c in text.lower()
        if c in " -_" or unicodedata.category(c)[0] in "LMN" or unicodedata.category(c) == "Pc"
    )
    return "".join(kept).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every anchor a link into the Markdown file ``path`` may name (repeated headings: -1, -2...)."""
    prose, _ = split_markdown(path.read_text(encoding="utf-8"), path)
    found: set[str] = set()
    seen: dict[str, int] = {}
    for line in prose:
        found.update(HTML_ANCHOR.findall(line))
        heading = HEADING.match(line)
        if heading:
            base = github_anchor(heading.group(1))
            count = seen.get(base, 0)
            seen[base] = count + 1
            found.add(base if count == 0 else f"{base}-{count}")
    return found


def link_targets(path: Path) -> list[tuple[int, str]]:
    """(line, target) of every link and image in ``path``'s prose, code spans and blocks left out."""
    prose, _ = split_markdown(path.read_text(encoding="utf-8"), path)
    targets = []
    for number, line in enumerate(prose, 1):
        line = CODE_SPAN.sub(lambda m: " " * len(m.group(0)), line)
        targets.extend((number, target) for target in INLINE_LINK.findall(line))
        definition = REFERENCE_DEFINITION.match(line)
        if definition:
            targets.append((number, definition.group(1)))
    return targets


def broken_links(path: Path, root: Path = ROOT) -> list[str]:
    """Each relative link of ``path`` that does not resolve inside ``root``, with the reason."""
    problems = []
    for number, target in link_targets(path):
        if URL_SCHEME.match(target):
            continue
        file_part, _, anchor = target.partition("#")
        linked = (path.parent / file_part).resolve() if file_part else path
        where = f"{path.name}:{number}: {target}"
        if not linked.is_relative_to(root.resolve()):
            problems.append(f"{where}: outside the repository")
        elif not linked.exists():
            problems.append(f"{where}: no such file or folder")
        elif anchor and linked.suffix == ".md":
            if anchor not in anchors(linked):
                problems.append(f"{where}: no heading with anchor #{anchor} in {linked.name}")
        elif anchor and not LINE_ANCHOR.match(anchor):
            problems.append(f"{where}: #{anchor} is neither a Markdown heading nor a line anchor")
    return problems


@dataclass(frozen=True)
class Runnable:
    """A block marked ``run``, and the stdout its ``output`` block expects (None: not compared)."""

    block: Block
    expected: str | None


def doc_tests(path: Path) -> tuple[list[Runnable], list[str]]:
    """The runnable blocks of ``path``, and every misuse of the marker convention in it."""
    _, blocks = split_markdown(path.read_text(encoding="utf-8"), path)
    runnables: list[Runnable] = []
    problems: list[str] = []
    for index, block in enumerate(blocks):
        where = f"{block.name} ({block.language or 'no language'} block)"
        marker = block.marker
        if marker is None:
            if block.language in ("python", "py"):
                problems.append(f"{where}: no doc-test marker on the line above it")
        elif marker == "run":
            if block.language not in ("python", "py"):
                problems.append(f"{where}: only Python blocks can be run")
                continue
            following = blocks[index + 1] if index + 1 < len(blocks) else None
            has_output = following is not None and following.marker == "output"
            runnables.append(Runnable(block, following.text if has_output else None))
        elif marker == "output":
            if not runnables or runnables[-1].block is not blocks[index - 1]:
                problems.append(f"{where}: an output block must come right after a run block")
        elif not re.fullmatch(r"not run: \S.*", marker):
            problems.append(f"{where}: unknown marker {marker!r} (run, output or 'not run: REASON')")
    return runnables, problems


def run_block(runnable: Runnable, folder: Path) -> list[str]:
    """Run a block as a user pasting it would, in ``folder``; what went wrong, if anything.

    The environment is this one without TRITON_INTERPRET (the test suite sets it; a user's shell
    does not), on one torch thread.
    """
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"} | {"OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-c", runnable.block.text],
        cwd=folder, env=env, capture_output=True, text=True, timeout=300,
    )
    if result.returncode != 0:
        return [f"{runnable.block.name} exited with code {result.returncode}:\n{result.stderr[-3000:]}"]
    if runnable.expected is None:
        return []
    got = [line.rstrip() for line in result.stdout.rstrip().splitlines()]
    wanted = [line.rstrip() for line in runnable.expected.rstrip().splitlines()]
    if got == wanted:
        return []
    diff = "\n".join(difflib.unified_diff(wanted, got, "documented output", "printed", lineterm=""))
    return [f"{runnable.block.name} printed other output than its output block:\n{diff}"]


def _runnables() -> list[Runnable]:
    return [runnable for path in MARKED_FILES for runnable in doc_tests(path)[0]]


# ------------------------------------------------------------------------------------------------
# The repository's documentation


def test_the_docs_folder_exists_and_the_readme_links_every_page():
    assert DOCS, "docs/*.md"
    linked = {target.partition("#")[0] for _, target in link_targets(README)}
    missing = [page.name for page in DOCS if f"docs/{page.name}" not in linked]
    assert not missing, f"docs pages the README does not link to: {missing}"


@pytest.mark.parametrize("path", LINKED_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(path: Path):
    assert not broken_links(path), "\n".join(broken_links(path))


@pytest.mark.parametrize("path", MARKED_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_python_block_is_marked(path: Path):
    _, problems = doc_tests(path)
    assert not problems, "\n".join(problems)


def test_the_readme_has_a_runnable_quick_start_with_its_output():
    runnables, _ = doc_tests(README)
    assert any(runnable.expected for runnable in runnables), "a run block followed by its output"


@pytest.mark.parametrize("runnable", _runnables(), ids=lambda r: r.block.name)
def test_marked_block_runs(runnable: Runnable, tmp_path: Path):
    problems = run_block(runnable, tmp_path)
    assert not problems, "\n".join(problems)


def test_the_readme_fits_a_first_read():
    """Under 20 KB, with a table of contents: a list of links to its own headings."""
    text = README.read_text(encoding="utf-8")
    assert len(text.encode("utf-8")) < 20_000
    own = anchors(README)
    contents = [target for _, target in link_targets(README) if target.startswith("#")]
    assert len(contents) >= 5 and set(t[1:] for t in contents) <= own


def test_the_readme_holds_no_measurement_history():
    """Commit hashes and load averages belong to benchmarks/NOTES.md, not to the README's prose."""
    prose, _ = split_markdown(README.read_text(encoding="utf-8"), README)
    text = "\n".join(line for line in prose if not line.lstrip().startswith("|"))
    assert "load average" not in text.lower()
    words = re.findall(r"\b[0-9a-f]{7,40}\b", text)
    hashes = [word for word in words if re.search(r"[a-f]", word) and re.search(r"\d", word)]
    assert not hashes, hashes


def test_the_readme_gives_the_two_commands_and_ci_runs_its_test_command():
    """``make tune`` and ``make test`` are in a README shell block and are Makefile targets, and
    .ci/run's command is the README's test command."""
    _, blocks = split_markdown(README.read_text(encoding="utf-8"), README)
    shell = "\n".join(block.text for block in blocks if block.language in ("bash", "sh", "shell"))
    commands = {line.split("#")[0].strip() for line in shell.splitlines()}
    assert {"make tune", "make test"} <= commands
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^tune:", makefile, re.MULTILINE) and re.search(r"^test:", makefile, re.MULTILINE)
    ci_lines = [
        line.strip()
        for line in (ROOT / ".ci" / "run").read_text().splitlines()
        if line.strip() and not line.startswith("#") and not line.startswith(("set ", "cd "))
    ]
    assert ci_lines == ["make test"]


# ------------------------------------------------------------------------------------------------
# The checks themselves catch what they are for


def test_anchors_follow_githubs_rules():
    # Worked out by hand from GitHub's rule: lower case; every character but letters, digits, marks,
    # '_', '-' and spaces dropped; spaces become hyphens; inline markup counts by its text.
    assert github_anchor("Hello World!") == "hello-world"
    assert github_anchor("Per-op suite: `fusedbn bench`") == "per-op-suite-fusedbn-bench"
    assert github_anchor("The MNIST-1D paper's table") == "the-mnist-1d-papers-table"
    assert github_anchor("`fused_batch_norm` and *friends*") == "fused_batch_norm-and-friends"
    assert github_anchor("Host time on a fake GPU: the lean call path (issue 14)") == (
        "host-time-on-a-fake-gpu-the-lean-call-path-issue-14"
    )
    assert github_anchor("A [linked](x.md) heading") == "a-linked-heading"


def test_broken_files_anchors_and_escapes_are_reported(tmp_path: Path):
    (tmp_path / "other.md").write_text("# Other page\n\n## Usage\n\n## Usage\n")
    (tmp_path / "code.py").write_text("x = 1\n")
    doc = tmp_path / "doc.md"
    doc.write_text(
        "# Title\n\n"
        "[ok](other.md#usage) [ok](other.md#usage-1) [ok](#title) [ok](code.py#L1) [ok](https://x.org/#y)\n"
        "`[not a link](missing.md)`\n\n"
        "```bash\n[also not](missing.md)\n```\n\n"
        "[gone](missing.md) [bad anchor](other.md#usage-2) [self](#nothing) [line](code.py#top)\n"
        "[out](../outside.md)\n\n[ref]: missing-too.md\n"
    )
    (tmp_path.parent / "outside.md").write_text("# Outside\n")
    problems = broken_links(doc, root=tmp_path)
    reported = [problem.split(": ", 2)[1] for problem in problems]
    assert reported == [
        "missing.md", "other.md#usage-2", "#nothing", "code.py#top", "../outside.md", "missing-too.md"
    ], problems


def test_marker_misuse_is_reported(tmp_path: Path):
    doc = tmp_path / "doc.md"
    doc.write_text(
        "```python\nprint(1)\n```\n\n"  # unmarked
        "<!-- doc-test: run -->\n```bash\necho 1\n```\n\n"  # run on a shell block
        "<!-- doc-test: output -->\n```text\n1\n```\n\n"  # output after no run block
        "<!-- doc-test: rnu -->\n```python\nprint(2)\n```\n\n"  # unknown marker
        "<!-- doc-test: not run: a fragment -->\n```python\nf(x)\n```\n\n"  # fine
        "<!-- doc-test: not run: -->\n```python\nf(x)\n```\n"  # no reason
    )
    runnables, problems = doc_tests(doc)
    assert runnables == []
    lines = [problem.split(":")[1] for problem in problems]
    assert lines == [
        "1 (python block)", "6 (bash block)", "11 (text block)", "16 (python block)", "26 (python block)"
    ], problems


def test_a_failing_block_and_a_wrong_output_are_reported(tmp_path: Path):
    doc = tmp_path / "doc.md"
    doc.write_text(
        "<!-- doc-test: run -->\n```python\nprint('one')\nprint('two')\n```\n"
        "<!-- doc-test: output -->\n```text\none\ntwo\n```\n\n"
        "<!-- doc-test: run -->\n```python\nprint('one')\n```\n"
        "<!-- doc-test: output -->\n```text\nuno\n```\n\n"
        "<!-- doc-test: run -->\n```python\nraise SystemExit(3)\n```\n"
    )
    runnables, problems = doc_tests(doc)
    assert not problems and len(runnables) == 3
    passing, wrong_output, failing = (run_block(runnable, tmp_path) for runnable in runnables)
    assert passing == []
    assert len(wrong_output) == 1 and "-uno" in wrong_output[0] and "+one" in wrong_output[0]
    assert len(failing) == 1 and "exited with code 3" in failing[0]
