"""The core install: a wheel of fusedbn installed without extras into a fresh virtual environment.

The environment sees torch, triton and the packages they declare, and nothing else from this
Python: the virtual environment has no system site-packages, and a .pth file adds a folder of links
to exactly those distributions. pip installs the wheel there without an index, so the install
succeeds only if fusedbn's own requirements are torch and triton; a harness's dependency (optuna,
scikit-learn, matplotlib, ...) is then missing, as after a plain ``pip install .`` in a clone.
"""

import importlib.metadata
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import triton
from packaging.requirements import Requirement

from fusedbn import __version__

ROOT = Path(__file__).resolve().parent.parent
CORE = ("torch", "triton")
EXTRA_ONLY = ("optuna", "sqlalchemy", "sklearn", "matplotlib", "tqdm", "numpy", "psycopg2", "pytest")


def _requirement_closure(names: tuple[str, ...]) -> list[importlib.metadata.Distribution]:
    """The installed distributions ``names`` and everything they require (extras left out)."""
    seen: dict[str, importlib.metadata.Distribution] = {}
    pending = list(names)
    while pending:
        name = pending.pop()
        key = name.lower().replace("_", "-")
        if key in seen:
            continue
        distribution = importlib.metadata.distribution(name)
        seen[key] = distribution
        for text in distribution.requires or []:
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                pending.append(requirement.name)
    return list(seen.values())


def _link_distributions(distributions: list[importlib.metadata.Distribution], folder: Path) -> None:
    """Link the top-level files and folders of each distribution (its code and metadata) into ``folder``."""
    folder.mkdir()
    for distribution in distributions:
        tops = {Path(file).parts[0] for file in distribution.files or []}
        for top in sorted(tops - {"..", "__pycache__"}):
            target = Path(distribution.locate_file(top))
            if target.exists() and not (folder / top).exists():
                (folder / top).symlink_to(target)


def _run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(command, capture_output=True, text=True, **kwargs)
    assert result.returncode == 0, f"{command} failed:\n{result.stdout}\n{result.stderr}"
    return result


# Runs inside the fresh environment, on the CPU (torch's native BatchNorm behind fusedbn's checks).
USE_CORE = textwrap.dedent(
    """
    import copy, importlib.metadata, importlib.util, sys
    import torch
    import fusedbn

    assert fusedbn.__file__.startswith(sys.prefix), fusedbn.__file__
    assert importlib.metadata.version("fusedbn") == fusedbn.__version__  # setup.py read the declaration
    importable = [name for name in sys.argv[1:] if importlib.util.find_spec(name) is not None]
    assert not importable, f"installed without extras, yet importable: {importable}"

    torch.manual_seed(0)
    x = torch.randn(4, 3, 5, 6) * 2 + 3
    fused, reference = fusedbn.FusedBatchNorm2d(3), torch.nn.BatchNorm2d(3)
    torch.testing.assert_close(fused(x), reference(x))
    torch.testing.assert_close(fused.running_var, reference.running_var)

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, bias=False), torch.nn.BatchNorm2d(4))
    original = copy.deepcopy(model)
    weight = model[1].weight
    fusedbn.convert_model(model)
    assert type(model[1]) is fusedbn.FusedBatchNorm2d and model[1].weight is weight
    torch.testing.assert_close(model(x), original(x))
    print("core ok", fusedbn.__version__)
    """
)


@pytest.fixture(scope="module")
def core_env(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtual environment with fusedbn's wheel installed without extras; its python."""
    work = tmp_path_factory.mktemp("install")
    # Build from a copy of the sources, so that the build leaves nothing in the checkout.
    source = work / "source"
    source.mkdir()
    for name in ("setup.py", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for name in ("src", "kernels"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    _run([*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(work / "wheels"),
          str(source)])
    (wheel,) = (work / "wheels").glob("fusedbn-*.whl")

    # No pip inside: its bundled setuptools could be older than torch requires; the running pip
    # installs into the environment through --python.
    venv = work / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    python = venv / "bin" / "python"
    site_packages = Path(
        _run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip()
    )
    _link_distributions(_requirement_closure(CORE), work / "core-dependencies")
    (site_packages / "core_dependencies.pth").write_text(f"{work / 'core-dependencies'}\n")
    _run([*pip, "--python", str(python), "install", "--no-index", "--no-cache-dir", str(wheel)])
    return python


def _clean_env() -> dict[str, str]:
    """This process's environment without anything that would put the checkout's fusedbn on the path.

    torch warns on import when numpy is missing, as it is in a core install; that warning is
    torch's, not fusedbn's, and is silenced so that the tests see fusedbn's own output.
    """
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "TRITON_INTERPRET")}
    env["PYTHONWARNINGS"] = "ignore:Failed to initialize NumPy"
    return env


def test_core_install_runs_without_extras(core_env, tmp_path):
    result = _run([str(core_env), "-c", USE_CORE, *EXTRA_ONLY], cwd=tmp_path, env=_clean_env())
    assert result.stdout.startswith("core ok")


@pytest.mark.parametrize("command,extra", [("tune", "tune"), ("bench", "bench")])
def test_subcommand_without_its_extra_names_the_extra(core_env, tmp_path, command, extra):
    fusedbn = core_env.parent / "fusedbn"
    result = subprocess.run(
        [str(fusedbn), command, "--out", str(tmp_path / "out")],
        capture_output=True, text=True, cwd=tmp_path, env=_clean_env(),
    )
    assert result.returncode == 2, result
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(
        f"fusedbn {command} needs the '{extra}' extra: pip install '.[{extra}]' in a clone of fusedbn"
    )
    assert not (tmp_path / "out").exists()


def test_version_names_fusedbn_torch_and_triton(core_env, tmp_path):
    """The environment runs this Python's torch and triton, and the wheel carries this checkout's
    version (the core script checks that the installed metadata agrees with ``fusedbn.__version__``)."""
    fusedbn = core_env.parent / "fusedbn"
    result = _run([str(fusedbn), "--version"], cwd=tmp_path, env=_clean_env())
    expected = f"fusedbn {__version__} (torch {torch.__version__}, triton {triton.__version__})\n"
    assert result.stdout == expected


@pytest.mark.parametrize("command", [["-c", "import fusedbn"], ["-m", "fusedbn.cli", "--version"]])
def test_the_interpreter_without_numpy_is_one_clear_line(core_env, tmp_path, command):
    """TRITON_INTERPRET=1 needs numpy, which a core install lacks: fusedbn says so instead of letting
    Triton's import fail on a raw ModuleNotFoundError."""
    env = _clean_env() | {"TRITON_INTERPRET": "1"}
    result = subprocess.run([str(core_env), *command], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1] == (
        "ImportError: TRITON_INTERPRET=1 runs fusedbn's kernels under Triton's interpreter, which needs "
        "numpy: pip install numpy, or unset TRITON_INTERPRET"
    )
    assert "ModuleNotFoundError" not in result.stderr
