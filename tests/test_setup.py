"""scripts/setup.sh: the torch it installs is an explicit choice (auto, cpu, cuda), checked with
--dry-run, which prints the pip commands instead of running them."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SETUP = ROOT / "scripts" / "setup.sh"
CPU = "-m pip install --quiet torch==2.13.0+cpu"
CPU_INDEX = "--index-url https://download.pytorch.org/whl/cpu"
CUDA = "-m pip install --quiet torch==2.13.0"
FUSEDBN = "-m pip install --quiet -e .[test]"


@pytest.fixture
def no_torch(tmp_path: Path) -> str:
    """A stand-in Python in which ``import torch`` fails (and so does everything else)."""
    python = tmp_path / "python-without-torch"
    python.write_text("#!/bin/sh\nexit 1\n")
    python.chmod(0o755)
    return str(python)


def setup(
    *options: str, python: str = sys.executable, choice: str | None = None
) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "FUSEDBN_TORCH"} | {"PYTHON": python}
    if choice is not None:
        env["FUSEDBN_TORCH"] = choice
    return subprocess.run(
        ["bash", str(SETUP), "--dry-run", *options], capture_output=True, text=True, env=env, timeout=60
    )


def commands(result: subprocess.CompletedProcess, python: str) -> list[str]:
    assert result.returncode == 0, result.stderr
    return [line.replace(python, "PY", 1).strip() for line in result.stdout.splitlines()]


def test_the_script_parses() -> None:
    result = subprocess.run(["bash", "-n", str(SETUP)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_by_default_a_machine_without_torch_gets_the_cpu_build(no_torch: str) -> None:
    result = setup(python=no_torch)
    assert commands(result, no_torch) == [
        f"PY {CPU}",
        f"(if that finds none: PY {CPU} {CPU_INDEX})",
        f"PY {FUSEDBN}",
    ]
    assert "installing the CPU build of torch 2.13.0" in result.stderr


def test_by_default_an_installed_torch_is_kept() -> None:
    result = setup()
    assert commands(result, sys.executable) == [f"PY {FUSEDBN}"]
    assert "keeping the installed torch" in result.stderr


@pytest.mark.parametrize("how", ["option", "environment"])
def test_cpu_installs_the_cpu_build_even_over_an_installed_torch(how: str) -> None:
    result = setup("--torch", "cpu") if how == "option" else setup(choice="cpu")
    lines = commands(result, sys.executable)
    assert lines[0] == f"PY {CPU}" and lines[-1] == f"PY {FUSEDBN}"


def test_cuda_installs_the_pypi_build_and_says_it_is_large(no_torch: str) -> None:
    result = setup("--torch=cuda", python=no_torch)
    assert commands(result, no_torch) == [f"PY {CUDA}", f"PY {FUSEDBN}"]
    assert "the CUDA build: several GB" in result.stderr


def test_cuda_takes_out_a_cpu_build_first() -> None:
    """This test environment holds a CPU build, which would satisfy torch==2.13.0 as it is."""
    result = setup(choice="cuda")
    assert commands(result, sys.executable) == [
        "PY -m pip uninstall --quiet --yes torch",
        f"PY {CUDA}",
        f"PY {FUSEDBN}",
    ]


@pytest.mark.parametrize(
    ("options", "choice", "message"),
    [
        ((), "gpu", "setup: unknown torch choice 'gpu' (FUSEDBN_TORCH or --torch): use auto, cpu or cuda"),
        (("--torch", "rocm"), None, "setup: unknown torch choice 'rocm'"),
        (("--everything",), None, "setup: unknown option --everything"),
    ],
)
def test_an_unknown_choice_is_refused_and_installs_nothing(
    options: tuple[str, ...], choice: str | None, message: str
) -> None:
    result = setup(*options, choice=choice)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith(message)
