"""Storage URLs, heartbeats and the failing of stale trials (fusedbn.tuning.storage)."""

import sys
import threading
import time
import uuid
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from fusedbn.tuning.storage import (
    FAILURE_ATTR,
    HEARTBEAT_ATTR,
    StorageError,
    display_url,
    fail_stale_trials,
    heartbeat,
    is_in_memory,
    open_storage,
)


@pytest.mark.parametrize("scheme", ["sqlite", "journal"])
def test_local_storages_hold_a_study(tmp_path: Path, scheme: str) -> None:
    url = f"{scheme}:///{tmp_path}/study.{scheme}"
    study = optuna.create_study(study_name="s", storage=open_storage(url))
    study.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=2)
    reopened = optuna.load_study(study_name="s", storage=open_storage(url))
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


def test_memory_storage_holds_a_study_in_this_process_only(tmp_path: Path) -> None:
    storage = open_storage("memory")
    assert is_in_memory(storage) and display_url("memory") == "memory"
    study = optuna.create_study(storage=storage, study_name="m")
    study.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=2)
    assert len(optuna.load_study(study_name="m", storage=storage).trials) == 2
    assert optuna.get_all_study_names(open_storage("memory")) == [], "each opening is a fresh store"
    assert not is_in_memory(open_storage(f"sqlite:///{tmp_path}/study.db"))


def test_heartbeat_updates_the_trial_while_it_runs() -> None:
    study = optuna.create_study()
    trial = study.ask()
    with heartbeat(trial, interval_s=0.05):
        first = study.trials[0].user_attrs[HEARTBEAT_ATTR]
        time.sleep(0.3)
        later = study.trials[0].user_attrs[HEARTBEAT_ATTR]
    assert later > first
    time.sleep(0.15)
    assert study.trials[0].user_attrs[HEARTBEAT_ATTR] == later, "the heartbeat outlived its block"


def test_only_trials_without_a_recent_heartbeat_are_failed() -> None:
    study = optuna.create_study()
    stale, fresh, never_beat = study.ask(), study.ask(), study.ask()
    stale.set_user_attr(HEARTBEAT_ATTR, time.time() - 100)
    fresh.set_user_attr(HEARTBEAT_ATTR, time.time())
    done = study.ask()
    study.tell(done, 1.0)
    assert fail_stale_trials(study, grace_s=10) == [stale.number]
    states = {t.number: t.state for t in study.trials}
    assert states == {
        stale.number: TrialState.FAIL,
        fresh.number: TrialState.RUNNING,
        never_beat.number: TrialState.RUNNING,  # started just now
        done.number: TrialState.COMPLETE,
    }
    assert "no heartbeat" in study.trials[stale.number].user_attrs[FAILURE_ATTR]
    assert fail_stale_trials(study, grace_s=10) == []


def test_postgresql_storage_holds_a_study(postgres_url: str) -> None:
    name = f"storage-test-{uuid.uuid4().hex[:8]}"
    study = optuna.create_study(study_name=name, storage=open_storage(postgres_url))
    study.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=2)
    reopened = optuna.load_study(study_name=name, storage=open_storage(postgres_url))
    assert [t.params for t in reopened.trials] == [t.params for t in study.trials]
    optuna.delete_study(study_name=name, storage=postgres_url)


def test_passwords_are_hidden_when_urls_are_shown() -> None:
    assert (
        display_url("postgresql+psycopg2://me:secret@db.example/tune")
        == "postgresql+psycopg2://me:***@db.example/tune"
    )
    assert display_url("sqlite:///runs/study.db") == "sqlite:///runs/study.db"
    with pytest.raises(StorageError) as error:
        open_storage("postgresql+psycopg2://me:secret@127.0.0.1:9/db")
    assert "secret" not in str(error.value)


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
