"""Set-up of the fusedbn test suite: which implementation CPU tensors take, fixtures and markers.

Without CUDA the suite runs on one of fusedbn's two CPU paths, chosen by the environment variable
FUSEDBN_TEST_CPU_PATH: "kernels" (the default) runs the Triton kernels on the CPU through Triton's
interpreter, the code a GPU runs; "torch" runs what a CPU user gets, torch's BatchNorm behind
fusedbn's API. Triton reads ``TRITON_INTERPRET`` when a kernel is decorated, i.e. when
``fusedbn.kernels`` is imported, so it is set here, before any test module imports fusedbn. Tests of
the kernels themselves are marked ``kernels`` and skipped on the torch path. With CUDA the tests run
the compiled kernels on the GPU. Shared helpers live in helpers.py.
"""

import os
from collections.abc import Iterator

import torch

CPU_PATHS = ("kernels", "torch")
CPU_PATH = os.environ.get("FUSEDBN_TEST_CPU_PATH", "kernels")
if CPU_PATH not in CPU_PATHS:
    raise ValueError(f"FUSEDBN_TEST_CPU_PATH must be one of {CPU_PATHS}, got {CPU_PATH!r}")
if not torch.cuda.is_available() and CPU_PATH == "kernels":
    os.environ["TRITON_INTERPRET"] = "1"


def _patch_triton_language_once_per_launch() -> None:
    """Make Triton's interpreter patch ``triton.language`` once per kernel launch, not again at every
    call of a ``@triton.jit`` helper inside the kernel (tiles, moments, Triton's own ``tl.sum``).

    The launch has already replaced the language's builtins by their interpreted versions; patching
    them again for a helper that sees the same language modules changes nothing but costs milliseconds
    a call, about 40% of a small kernel test's time. A helper that sees a module the launch has not
    patched yet (``triton.language.core`` for Triton's own helpers) is patched as before. Where Triton
    no longer has these internals the interpreter runs unchanged.
    """
    import triton.language as tl
    from triton.runtime import interpreter

    if not hasattr(interpreter, "_patch_lang") or not hasattr(interpreter, "GridExecutor"):
        return
    patch_language = interpreter._patch_lang
    launch = interpreter.GridExecutor.__call__
    patched_by_launch: list[set[int]] = []  # one entry per launch in progress: the modules it patched

    def patch_unless_patched(fn):
        languages = {id(value) for value in fn.__globals__.values() if value is tl or value is tl.core}
        if patched_by_launch and languages and languages <= patched_by_launch[-1]:
            return None  # a helper's call: the interpreter drops what this returns
        if patched_by_launch:
            patched_by_launch[-1] |= languages
        return patch_language(fn)

    def launch_patching_once(self, *args, **kwargs):
        patched_by_launch.append(set())
        try:
            return launch(self, *args, **kwargs)
        finally:
            patched_by_launch.pop()

    interpreter._patch_lang = patch_unless_patched
    interpreter.GridExecutor.__call__ = launch_patching_once


if os.environ.get("TRITON_INTERPRET") == "1":
    _patch_triton_language_once_per_launch()

import pytest  # noqa: E402
from helpers import KERNELS_ON_CPU, LaunchPath, assert_close, force_launch_path, launch_path_names  # noqa: E402


@pytest.fixture(name="assert_close")
def assert_close_fixture():
    """``assert_close(actual, expected, dtype=None, scale=None, msg="")`` with the suite's tolerances."""
    return assert_close


@pytest.fixture(scope="session")
def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.fixture(params=launch_path_names())
def launch_path(request, monkeypatch) -> Iterator[LaunchPath]:
    """Run the test on each launch path: one tile per channel block (the default limits for small
    shapes), whole channels streamed through several tiles, and the split reduction (on the torch
    path: torch's BatchNorm, with no launch)."""
    yield from force_launch_path(monkeypatch, request.param)


@pytest.fixture
def split_path(monkeypatch) -> Iterator[LaunchPath]:
    """Force the split path (for tests that only need one path; the torch path on the torch path)."""
    yield from force_launch_path(monkeypatch, launch_path_names()[-1])


@pytest.fixture
def single_path(monkeypatch) -> Iterator[LaunchPath]:
    """Force the one-tile whole-channel path with the default limits (or the torch path)."""
    yield from force_launch_path(monkeypatch, launch_path_names()[0])


def _register_hypothesis_profiles() -> None:
    """"ci" (the default) keeps the property tests to about a minute under Triton's interpreter,
    with the same examples on every run; FUSEDBN_HYPOTHESIS_PROFILE=long draws many more, afresh."""
    try:
        from hypothesis import settings
    except ImportError:
        return
    settings.register_profile("ci", max_examples=25, deadline=None, derandomize=True)
    settings.register_profile("long", max_examples=1000, deadline=None)
    settings.load_profile(os.environ.get("FUSEDBN_HYPOTHESIS_PROFILE", "ci"))


_register_hypothesis_profiles()


def pytest_configure(config):
    config.addinivalue_line("markers", "cuda: needs a CUDA GPU (skipped without one)")
    config.addinivalue_line(
        "markers", "kernels: tests fusedbn's kernels themselves (skipped on the torch CPU path)"
    )


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skips = {
        "cuda": pytest.mark.skip(reason="needs a CUDA GPU"),
        "kernels": pytest.mark.skip(reason="the kernels do not run on the torch CPU path"),
    }
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skips["cuda"])
        elif "kernels" in item.keywords and not KERNELS_ON_CPU:
            item.add_marker(skips["kernels"])
