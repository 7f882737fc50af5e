"""The GPU run's scripts and the compile gate's sweep: they parse, and the wheel download asks for
what the GPU machine needs.

The whole run rehearses on the CPU with ``GPU_CHECK_SMOKE=1 bash benchmarks/gpu_check.sh`` (about
half a minute, so not part of the suite).
"""

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GPU_CHECK = ROOT / "benchmarks" / "gpu_check.sh"
FETCH_WHEELS = ROOT / "scripts" / "fetch-gpu-wheels.sh"
COMPILE_CHECK = ROOT / "benchmarks" / "compile_check.sh"


@pytest.mark.parametrize("script", [GPU_CHECK, FETCH_WHEELS, COMPILE_CHECK], ids=lambda p: p.name)
def test_script_parses(script):
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def _fetch(*options: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(FETCH_WHEELS), *options], capture_output=True, text=True, timeout=30)


def test_wheel_download_targets_the_gpu_machine():
    result = _fetch("--dry-run")
    assert result.returncode == 0, result.stderr
    words = result.stdout.split()
    assert words[words.index("--python-version") + 1] == "3.12"
    assert "manylinux2014_x86_64" in words and "--no-deps" in words and "--only-binary=:all:" in words
    assert {"flag-gems==5.0.2", "PyYAML", "optuna", "alembic", "sqlalchemy", "colorlog"} <= set(words)
    assert "scikit-learn" not in words and "matplotlib" not in words
    more = _fetch("--dry-run", "--with-sklearn", "--with-matplotlib").stdout.split()
    assert {"scikit-learn", "scipy", "matplotlib", "kiwisolver"} <= set(more)


def test_unknown_option_is_refused():
    result = _fetch("--everything")
    assert result.returncode == 2
    assert "unknown option --everything" in result.stderr
