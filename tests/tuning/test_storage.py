"""Storage URLs, heartbeats and the failing of lost trials (fusedbn.tuning.storage), on real SQLite,
journal files and PostgreSQL."""

import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import pytest
import sqlalchemy
from optuna.storages import JournalStorage, RDBStorage
from optuna.trial import TrialState

from fusedbn.tuning.storage import (
    FAILURE_ATTR,
    HEARTBEAT_ATTR,
    Heartbeat,
    StorageError,
    beating,
    display_url,
    fail_lost_trials,
    open_storage,
)

GRACE_S = 2
# A worker killed in the middle of its trial, after its first heartbeats.
KILLED_WORKER = f"""
import os, sys, time
import optuna
from fusedbn.tuning.storage import Heartbeat, beating, open_storage
url, name = sys.argv[1:]
heartbeat = Heartbeat(grace_s={GRACE_S}, on_lost=print)
storage = open_storage(url, heartbeat)
study = optuna.load_study(study_name=name, storage=storage)

def objective(trial):
    with beating(storage, trial, heartbeat):
        time.sleep(1.5)
        trial.set_user_attr("last", "words")  # so that no write is cut short: none is due for 0.5 s
        os._exit(0)

study.optimize(objective, n_trials=1)
"""


def test_shared_storages_hold_a_study(study_at: tuple[str, str]) -> None:
    url, name = study_at
    study = optuna.create_study(study_name=name, storage=open_storage(url))
    study.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=2)
    reopened = optuna.load_study(study_name=name, storage=open_storage(url))
    assert [t.params for t in reopened.trials] == [t.params for t in study.trials]


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("sqlite:////no/such/folder/study.db", "folder '/no/such/folder' does not exist"),
        ("journal:////no/such/folder/study.log", "folder '/no/such/folder' does not exist"),
        ("journal:study.log", "expected journal:///"),
        ("postgresql+psycopg2://user:pw@127.0.0.1:9/db", "cannot open storage"),
        ("nosuchdb://host/db", "cannot open storage 'nosuchdb://host/db'"),
    ],
)
def test_unusable_urls_raise_a_storage_error_naming_the_url(url: str, message: str) -> None:
    with pytest.raises(StorageError, match=message):
        open_storage(url)


def test_a_missing_database_driver_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "psycopg2", None)  # as without the postgres extra
    with pytest.raises(StorageError) as refused:
        open_storage("postgresql+psycopg2://user:secret@127.0.0.1/db")
    message = str(refused.value)
    assert message.startswith("cannot open storage 'postgresql+psycopg2://user:***@127.0.0.1/db': its ")
    assert message.endswith("for PostgreSQL: pip install '.[postgres]' in a clone of fusedbn")


def test_sqlite_commits_do_not_wait_for_the_disk(tmp_path: Path) -> None:
    storage = open_storage(f"sqlite:///{tmp_path}/study.db")
    optuna.create_study(storage=storage).optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=1)
    with storage.engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL, not FULL (2)
    with sqlite3.connect(tmp_path / "study.db") as reader:  # write-ahead logging is kept in the file
        assert reader.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_memory_storage_holds_a_study_in_this_process_only() -> None:
    storage = open_storage("memory")
    assert display_url("memory") == "memory"
    study = optuna.create_study(storage=storage, study_name="m")
    study.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=2)
    assert len(optuna.load_study(study_name="m", storage=storage).trials) == 2
    assert optuna.get_all_study_names(open_storage("memory")) == [], "each opening is a fresh store"


def test_a_lost_trial_is_failed_and_told_and_a_live_one_keeps_running(study_at: tuple[str, str]) -> None:
    """A worker killed mid-trial leaves its trial RUNNING; while another trial runs here for more than
    twice the grace period, a third process's sweeps fail the lost trial once, and never the live one."""
    url, name = study_at
    lost: list[int] = []
    heartbeat = Heartbeat(grace_s=GRACE_S, on_lost=lambda study, trial: lost.append(trial.number))
    storage = open_storage(url, heartbeat)
    study = optuna.create_study(study_name=name, storage=storage)
    subprocess.run([sys.executable, "-c", KILLED_WORKER, url, name], check=True, timeout=120)
    (killed,) = study.get_trials()
    assert killed.state == TrialState.RUNNING

    sweeper_storage = open_storage(url, heartbeat)  # another worker, with its own connection
    sweeper = optuna.load_study(study_name=name, storage=sweeper_storage)

    def objective(trial: optuna.Trial) -> float:
        with beating(storage, trial, heartbeat):
            end = time.monotonic() + 2.5 * GRACE_S
            while time.monotonic() < end:
                fail_lost_trials(sweeper, sweeper_storage, heartbeat)
                time.sleep(0.2)
        return 1.0

    study.optimize(objective, n_trials=1)
    states = [trial.state for trial in study.get_trials()]
    assert states == [TrialState.FAIL, TrialState.COMPLETE]
    assert lost == [killed.number], "the lost trial is told once, the live one never"
    assert FAILURE_ATTR not in study.get_trials()[0].user_attrs, "a failed trial takes no attribute"


def test_a_journal_trial_records_its_heartbeat_until_its_block_ends(tmp_path: Path) -> None:
    storage = open_storage(f"journal:///{tmp_path}/study.log")
    assert isinstance(storage, JournalStorage)
    study = optuna.create_study(storage=storage)
    trial = study.ask()
    with beating(storage, trial, Heartbeat(grace_s=GRACE_S, on_lost=print)):
        first = study.trials[0].user_attrs[HEARTBEAT_ATTR]
        time.sleep(1.3)
        later = study.trials[0].user_attrs[HEARTBEAT_ATTR]
    assert later > first
    time.sleep(1.2)
    assert study.trials[0].user_attrs[HEARTBEAT_ATTR] == later, "the heartbeat outlived its block"


def test_passwords_are_hidden_when_urls_are_shown() -> None:
    assert (
        display_url("postgresql+psycopg2://me:secret@db.example/tune")
        == "postgresql+psycopg2://me:***@db.example/tune"
    )
    assert display_url("sqlite:///runs/study.db") == "sqlite:///runs/study.db"
    with pytest.raises(StorageError) as error:
        open_storage("postgresql+psycopg2://me:secret@127.0.0.1:9/db")
    assert "secret" not in str(error.value)


def test_opening_tries_again_when_sqlite_refuses_the_lock_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite answers "database is locked" without waiting when two connections creating the tables
    would wait on each other: the opening tries again (the test below meets it about once in 30 runs)."""
    refusals = []

    def refusing_once(*args: object, **kwargs: object) -> RDBStorage:
        if not refusals:
            refusals.append(1)
            locked = sqlite3.OperationalError("database is locked")
            raise sqlalchemy.exc.OperationalError("CREATE TABLE", {}, locked)
        return RDBStorage(*args, **kwargs)

    monkeypatch.setattr("fusedbn.tuning.storage.RDBStorage", refusing_once)
    storage = open_storage(f"sqlite:///{tmp_path}/new.db")
    assert refusals == [1] and optuna.get_all_study_names(storage) == []


def test_workers_opening_a_new_database_together_all_succeed(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/new.db"
    start = threading.Barrier(4)
    errors: list[Exception] = []

    def open_together() -> None:
        start.wait()
        try:
            open_storage(url)
        except StorageError as error:
            errors.append(error)

    threads = [threading.Thread(target=open_together) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
