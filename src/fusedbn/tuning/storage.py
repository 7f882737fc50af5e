"""Where studies live: opening a storage URL, and failing the trials that a stopped worker left RUNNING.

Storage URLs: ``sqlite:///path/study.db`` (``sqlite:////abs/path.db`` absolute; write-ahead log, so a power
cut can lose the last trials, which a resumed study runs again), ``journal:///path/study.log`` (several
workers on one machine), ``postgresql+psycopg2://user:password@host/db`` or another database URL (workers on
several machines) and ``memory`` (one process; nothing written). A RUNNING trial without a heartbeat for the
grace period is marked FAIL, so its budget runs again. Database storages use Optuna's heartbeat; Optuna's
journal storage has none (only ``RDBStorage`` implements one), so there the trial writes the user attribute
``heartbeat`` from a thread (the journal's workers share one machine, hence one clock). A failed trial can
take no user attribute, so a lost one has no ``failure``: :data:`LOST` is its reason.
"""

import inspect
import sqlite3
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import optuna
import sqlalchemy.engine
import sqlalchemy.exc
from optuna.exceptions import ExperimentalWarning, UpdateFinishedTrialError
from optuna.storages import BaseStorage, InMemoryStorage, JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState

MEMORY_URL = "memory"
HEARTBEAT_ATTR = "heartbeat"
FAILURE_ATTR = "failure"
LOST = "worker stopped: no heartbeat within the grace period"  # a FAIL trial without a failure attribute
BEATS_PER_GRACE = 5
SQLITE_TIMEOUT_S = 60
CONNECT_TIMEOUT_S = 10
TABLE_RACE_RETRIES = 3
POSTGRES_INSTALL = "pip install '.[postgres]' in a clone of fusedbn"

LostTrialCallback = Callable[[optuna.Study, FrozenTrial], None]
# Optuna 5 renamed RDBStorage's failed_trial_callback, deprecating the old name.
STALE_CALLBACK = next(
    name
    for name in ("heartbeat_stale_trial_callback", "failed_trial_callback")
    if name in inspect.signature(RDBStorage).parameters
)


class StorageError(RuntimeError):
    """A storage URL that cannot be opened."""


@dataclass(frozen=True)
class Heartbeat:
    """Running trials beat every :attr:`interval_s` seconds; one without a beat for ``grace_s`` seconds is
    lost, marked FAIL, and ``on_lost(study, trial)`` is told."""

    grace_s: int
    on_lost: LostTrialCallback

    @property
    def interval_s(self) -> int:
        """Seconds between two heartbeats of a running trial."""
        return max(1, self.grace_s // BEATS_PER_GRACE)


def _local_path(url: str, scheme: str) -> Path:
    """The file named by ``<scheme>:///relative`` or ``<scheme>:////absolute``; its folder must exist."""
    prefix = f"{scheme}:///"
    if not url.startswith(prefix) or url == prefix:
        raise StorageError(f"cannot open storage {url!r}: expected {prefix}<file path>")
    path = Path(url[len(prefix) :])
    if not path.parent.is_dir():
        raise StorageError(f"cannot open storage {url!r}: folder {str(path.parent)!r} does not exist")
    return path


def open_storage(url: str, heartbeat: Heartbeat | None = None) -> BaseStorage:
    """Open the Optuna storage at ``url``, a database storage with Optuna's ``heartbeat`` when given;
    raises :class:`StorageError`."""
    if url == MEMORY_URL:
        return InMemoryStorage()
    try:
        if url.startswith("journal:"):
            return JournalStorage(JournalFileBackend(str(_local_path(url, "journal"))))
        engine: dict[str, object] = {}
        if url.startswith("sqlite:"):
            engine = {"creator": partial(_sqlite_connection, _local_path(url, "sqlite"))}
        elif url.startswith("postgresql"):
            engine = {"connect_args": {"connect_timeout": CONNECT_TIMEOUT_S}}
        return _rdb_storage(url, engine, heartbeat)
    except (sqlalchemy.exc.SQLAlchemyError, ImportError, OSError, ValueError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        if isinstance(error, ImportError):  # the database's driver
            reason = f"its database driver does not import ({reason}); for PostgreSQL: {POSTGRES_INSTALL}"
        raise StorageError(f"cannot open storage {display_url(url)!r}: {reason}") from error


def display_url(url: str) -> str:
    """``url`` with any password replaced by ``***``, for printing and for the summary file."""
    if url.startswith("journal:") or url == MEMORY_URL:
        return url
    try:
        return sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)
    except sqlalchemy.exc.ArgumentError:
        return url


def _sqlite_connection(path: Path) -> sqlite3.Connection:
    """A connection to the SQLite file at ``path``: write-ahead log, commits not waiting for the disk."""
    connection = sqlite3.connect(path, timeout=SQLITE_TIMEOUT_S, check_same_thread=False)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=NORMAL")
    return connection


def _rdb_storage(url: str, engine: dict[str, object], heartbeat: Heartbeat | None) -> RDBStorage:
    """Open a database storage, trying again when a concurrent worker was creating its tables: the
    tables exist already, or SQLite refused the lock at once (two connections that both read before
    writing would wait on each other, so SQLite's busy timeout does not wait for them)."""
    beats = {}
    if heartbeat is not None:
        beats = {
            "heartbeat_interval": heartbeat.interval_s,
            "grace_period": heartbeat.grace_s,
            STALE_CALLBACK: heartbeat.on_lost,
        }
    retries = 0
    while True:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ExperimentalWarning)  # heartbeat_interval is "experimental"
                return RDBStorage(url, engine_kwargs=engine, **beats)
        except sqlalchemy.exc.SQLAlchemyError as error:
            lost_race = isinstance(error, sqlalchemy.exc.IntegrityError) or any(
                text in str(error) for text in ("already exists", "database is locked")
            )
            if not lost_race or retries == TABLE_RACE_RETRIES:
                raise
            retries += 1
            time.sleep(0.2 * retries)


@contextmanager
def beating(storage: BaseStorage, trial: optuna.Trial, heartbeat: Heartbeat) -> Iterator[None]:
    """A block during which ``trial`` beats: on a journal storage by recording its heartbeat now and every
    ``heartbeat.interval_s`` seconds; elsewhere Optuna beats, or nothing needs to (memory)."""
    if not isinstance(storage, JournalStorage):
        yield
        return
    trial.set_user_attr(HEARTBEAT_ATTR, time.time())
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(heartbeat.interval_s):
            trial.set_user_attr(HEARTBEAT_ATTR, time.time())

    thread = threading.Thread(target=beat, name=f"heartbeat-trial-{trial.number}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def fail_lost_trials(study: optuna.Study, storage: BaseStorage, heartbeat: Heartbeat) -> None:
    """Mark FAIL every RUNNING trial of ``study`` (kept in ``storage``) without a heartbeat for the grace
    period, telling ``heartbeat.on_lost`` about each."""
    if isinstance(storage, RDBStorage):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)  # tells on_lost, the storage's callback
    if not isinstance(storage, JournalStorage):
        return
    now = time.time()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if now - trial.user_attrs.get(HEARTBEAT_ATTR, trial.datetime_start.timestamp()) <= heartbeat.grace_s:
            continue
        try:
            lost = study.tell(trial.number, state=TrialState.FAIL)
        except (UpdateFinishedTrialError, ValueError):  # another worker failed it first
            continue
        heartbeat.on_lost(study, lost)
