"""Fixtures for the tuning tests: torch's native BatchNorm, a tiny digits task, worker subprocesses."""

import importlib.util
import os
import socket
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import optuna
import pytest
import torch
from helpers import start_fusedbn

import fusedbn
from fusedbn.tuning.report import Summary, summarize
from fusedbn.tuning.search import SearchConfig, TuningResult, tune
from fusedbn.tuning.space import default_space
from fusedbn.tuning.tasks import get_task
from fusedbn.tuning.training import Task


@pytest.fixture(autouse=True)
def native_batch_norm() -> Iterator[None]:
    """Run FusedBatchNorm on torch's native CPU kernel: the harness, not the kernels, is under test."""
    with fusedbn.use_backend("torch"):
        yield


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    """Tiny models gain nothing from threads, and test workers already share the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def quiet_optuna() -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)


def make_tiny_task() -> Task:
    """Digits cut to 400 training and 120 validation images, two epochs per trial."""
    task = get_task("digits").build(epochs=2)
    task.train = tuple(t[:400] for t in task.train)
    task.valid = tuple(t[:120] for t in task.valid)
    return task


@pytest.fixture
def mnist1d_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """MNIST-1D generated here: the mnist1d package must be installed (a skip where it is not, such as
    on the GPU machine; a failure when CI=true), and any attempt to open a network connection fails."""
    if importlib.util.find_spec("mnist1d") is None:
        message = "the mnist1d package is not installed: pip install '.[tune]'"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture
def tiny_task() -> Task:
    """A fresh tiny digits task (see :func:`make_tiny_task`) that a test may change."""
    return make_tiny_task()


@pytest.fixture
def start_tune(tmp_path: Path) -> Callable[..., subprocess.Popen]:
    """Start ``fusedbn tune --no-progress ARGS`` in ``tmp_path`` (see conftest.start_fusedbn)."""

    def start(*args: str) -> subprocess.Popen:
        return start_fusedbn(tmp_path, "tune", "--no-progress", *args)

    return start


@pytest.fixture
def postgres_url() -> str:
    """The test PostgreSQL server's URL (from FUSEDBN_TEST_POSTGRES_URL): a failure in CI, else a skip."""
    url = os.environ.get("FUSEDBN_TEST_POSTGRES_URL")
    if not url:
        message = "FUSEDBN_TEST_POSTGRES_URL is not set; start a server with scripts/start-postgres.sh"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return url


@pytest.fixture(params=["sqlite", "journal", "postgresql"])
def study_at(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """(storage URL, study name) on each kind of shared storage: a SQLite file, a journal file, and the
    test PostgreSQL server (see :func:`postgres_url`) under a fresh name, whose studies are deleted after."""
    name = f"t-{uuid.uuid4().hex[:8]}"
    if request.param != "postgresql":
        yield f"{request.param}:///{tmp_path}/study.{request.param}", name
        return
    url = request.getfixturevalue("postgres_url")
    yield url, name
    for study in optuna.get_all_study_names(url):
        if study.startswith(name):
            optuna.delete_study(study_name=study, storage=url)


@pytest.fixture(scope="session")
def tiny_result(tmp_path_factory: pytest.TempPathFactory) -> TuningResult:
    """A finished two-stage study of ten trials per stage on the tiny task (tiers 1-2), run once."""
    folder = tmp_path_factory.mktemp("tiny")
    config = SearchConfig(
        study_name="tiny", storage=f"sqlite:///{folder}/tiny.db", trials=10, stages=2, progress=False
    )
    with fusedbn.use_backend("torch"):
        return tune(make_tiny_task(), default_space(), config)


@pytest.fixture(scope="session")
def tiny_summary(tiny_result: TuningResult) -> Summary:
    """The summary of :func:`tiny_result`, with few bootstrap resamples to keep the tests quick."""
    return summarize(tiny_result, resamples=6)
