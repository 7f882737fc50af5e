"""The documentation's own-model example (the wine data) gives the same output every time it runs."""

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def wine_example() -> str:
    """The one Python block of README.md and docs/*.md that tunes a model on scikit-learn's wine data."""
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    blocks = [
        block
        for page in pages
        for block in re.findall(r"```python\n(.*?)```", page.read_text(), re.DOTALL)
        if "load_wine(" in block
    ]
    assert len(blocks) == 1, f"{len(blocks)} wine examples in the documentation"
    return blocks[0]


def run_in(folder: Path, code: str) -> str:
    """Run ``code`` as a user who pasted it would: a fresh Python in an empty ``folder``; its stdout."""
    folder.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "OMP_NUM_THREADS")}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=folder, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_wine_example_prints_the_same_study_twice_in_a_row(tmp_path: Path) -> None:
    """Two fresh runs, with torch's default threads: every trial trains alike (Dropout included) on
    the one thread ``tune`` uses, so the same trials are chosen and the same numbers printed."""
    code = wine_example()
    first = run_in(tmp_path / "first", code)
    assert run_in(tmp_path / "second", code) == first
    assert first.startswith("Study wine (random search, tiers 1-2)\nBest validation accuracy ")
    assert "  dropout " in first and "Wrote summary.json" in first
    assert (tmp_path / "first" / "wine.db").exists() and (tmp_path / "second" / "runs" / "wine").is_dir()
