"""Shared set-up for the fusedbn test suite.

Without CUDA the Triton kernels run on the CPU through Triton's interpreter. Triton reads
``TRITON_INTERPRET`` when a kernel is decorated, i.e. when ``fusedbn.kernels`` is imported, so it is set
here, at conftest import time, before any test module imports fusedbn. With CUDA the same tests run
the compiled kernels on the GPU.
"""

import os
from collections.abc import Iterator

import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402

from fusedbn.kernels import layout  # noqa: E402

# (rtol, atol) per input dtype, used for every comparison with torch or a float64 reference. Values
# are compared after scaling atol by the largest magnitude of the expected tensor (at least 1), so the
# bounds are relative to the size of what is compared. float16/bfloat16 results are rounded to the
# input dtype once, hence a few units of its rounding error (2**-11 and 2**-8).
TOLERANCES: dict[torch.dtype, tuple[float, float]] = {
    torch.float64: (1e-10, 1e-10),
    torch.float32: (2e-5, 2e-5),
    torch.float16: (4e-3, 4e-3),
    torch.bfloat16: (3e-2, 3e-2),
}

# Limits that send the small test shapes down the split path with several splits per channel block,
# tiles that overhang the tensor (partial last tiles) and channel blocks of 4 that do not divide the
# channel counts used in the tests (3 and 5). The multiprocessor count is pinned too, so the number of
# splits is the same on the CPU and on any GPU.
SPLIT_LIMITS = layout.LaunchLimits(
    single_tile=32,
    stream_tile=16,
    programs_per_sm=8,
    max_channel_block=4,
    whole_channel_blocks_per_sm=float("inf"),
    multiprocessors=2,
)
# Limits that give each program whole channels streamed through several small tiles.
WHOLE_CHANNEL_LIMITS = layout.LaunchLimits(
    single_tile=16, stream_tile=16, max_channel_block=4, whole_channel_blocks_per_sm=0
)
PATH_LIMITS = {
    "single": layout.LaunchLimits(),
    "whole": WHOLE_CHANNEL_LIMITS,
    "split": SPLIT_LIMITS,
}


def _assert_close(actual, expected, dtype=None, scale=None, msg=""):
    """Every element of ``actual`` within the tolerance of ``dtype`` of ``expected`` (no NaN passes)."""
    dtype = dtype or actual.dtype
    rtol, atol = TOLERANCES[dtype]
    expected = expected.to(device=actual.device)
    if scale is None:
        scale = max(1.0, float(expected.detach().abs().max())) if expected.numel() else 1.0
    assert not torch.isnan(actual).any(), f"{msg}: NaN in result"
    torch.testing.assert_close(
        actual.detach().double(),
        expected.detach().double(),
        rtol=rtol,
        atol=atol * scale,
        msg=lambda m: f"{msg}: {m}",
    )


@pytest.fixture
def assert_close():
    """``assert_close(actual, expected, dtype=None, scale=None, msg="")`` with the suite's tolerances."""
    return _assert_close


@pytest.fixture(scope="session")
def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class LaunchPath:
    """Which launch path a test forces, and a record of the launches the kernels actually chose."""

    def __init__(self, name: str):
        self.name = name
        self.launches: list[layout.Launch] = []

    @property
    def split(self) -> bool:
        return self.name == "split"

    def check(self) -> None:
        """Assert that kernels were launched and every launch took the forced path."""
        launches = self.launches
        assert launches, "no kernel launch was recorded"
        if self.name == "split":
            assert not any(launch.whole_channel for launch in launches), launches
            assert any(launch.num_splits > 1 for launch in launches), launches
        elif self.name == "whole":
            assert all(launch.whole_channel for launch in launches), launches
            assert any(launch.num_tiles > 1 for launch in launches), launches
        else:
            assert all(launch.whole_channel and launch.num_tiles == 1 for launch in launches), launches


def _force_path(monkeypatch, name: str) -> Iterator[LaunchPath]:
    """Launch with the path's limits inside the test, recording every launch chosen."""
    path = LaunchPath(name)
    original = layout.choose_launch

    def recording_choose_launch(*args, **kwargs):
        launch = original(*args, **kwargs)
        path.launches.append(launch)
        return launch

    monkeypatch.setattr(layout, "choose_launch", recording_choose_launch)
    with layout.launch_limits(PATH_LIMITS[name]):
        yield path


@pytest.fixture(params=list(PATH_LIMITS))
def launch_path(request, monkeypatch) -> Iterator[LaunchPath]:
    """Run the test on each launch path: one tile per channel block (the default limits for small
    shapes), whole channels streamed through several tiles, and the split reduction."""
    yield from _force_path(monkeypatch, request.param)


@pytest.fixture
def split_path(monkeypatch) -> Iterator[LaunchPath]:
    """Force the split path (for tests that only need one path)."""
    yield from _force_path(monkeypatch, "split")


@pytest.fixture
def single_path(monkeypatch) -> Iterator[LaunchPath]:
    """Force the one-tile whole-channel path with the default limits."""
    yield from _force_path(monkeypatch, "single")


def pytest_configure(config):
    config.addinivalue_line("markers", "cuda: needs a CUDA GPU (skipped without one)")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
