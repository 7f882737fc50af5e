"""Where studies live: opening a storage URL, and failing the trials that a stopped worker left RUNNING.

Storage URLs:

- ``sqlite:///path/study.db`` (relative path; ``sqlite:////abs/path.db`` absolute): a local file, opened
  with a 60 s lock timeout so a few workers on one machine can share it, in SQLite's write-ahead-log
  mode with ``synchronous=NORMAL``: a commit does not wait for the disk (SQLite's default waited about
  17 ms per commit on this project's machine, 0.3 s per trial of 8 epochs), and survives a killed
  process; a power cut can lose the last trials, which a resumed study runs again.
- ``journal:///path/study.log`` (``journal:////abs/path.log`` absolute): Optuna's journal file storage,
  the recommended way for several worker processes on one machine.
- ``postgresql+psycopg2://user:password@host/db`` (or ``postgresql://``, ``mysql://``...): a database
  server, for workers on several machines.
- ``memory``: Optuna's in-memory storage, for a throwaway study in one process: nothing is written, the
  study cannot be resumed or shared, and trials record no heartbeat.

Cost: a trial's writes (its start, parameters, one report per epoch, the user attributes, its end) each
commit to the storage. The search asks Optuna for no full garbage collection after each trial, which
cost another 0.3 s per trial here.

Lost trials (a :class:`Heartbeat`): a running trial records a heartbeat every ``grace_s / 5`` seconds (at
least every second), and a RUNNING trial without one for ``grace_s`` seconds belongs to a worker that
was killed: it is marked FAIL so that its budget runs again.

- Database storages use Optuna's own heartbeat: ``RDBStorage(heartbeat_interval, grace_period)``, beating
  from a thread while :meth:`optuna.Study.optimize` runs a trial, and ``optuna.storages.fail_stale_trials``.
  It counts whole seconds (hence an integer grace period) on the database server's clock, so workers on
  several machines need not agree on the time.
- Optuna's journal storage has no heartbeat (in Optuna 5.1 only ``RDBStorage`` implements one), so here
  the running trial writes its heartbeat itself, as the user attribute ``heartbeat`` (a Unix time), from a
  thread, and :func:`fail_lost_trials` fails a trial whose heartbeat is too old with ``Study.tell`` (a trial
  number is all the public API needs). The journal's workers share one machine, hence one clock.
- In-memory studies belong to one process: no other worker can leave a trial behind.

A trial that Optuna failed can no longer take user attributes, so a lost trial carries no ``failure``
attribute: :data:`LOST` is its reason.
"""

import inspect
import sqlite3
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
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
    lost, marked FAIL, and ``on_lost(study, trial)`` is told (see the module docstring)."""

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
    """Open the Optuna storage at ``url`` (see the module docstring), a database storage with Optuna's
    ``heartbeat`` when given; raises :class:`StorageError`."""
    if url == MEMORY_URL:
        return InMemoryStorage()
    try:
        if url.startswith("journal:"):
            return JournalStorage(JournalFileBackend(str(_local_path(url, "journal"))))
        if url.startswith("sqlite:"):
            engine: dict[str, object] = {"creator": partial(_sqlite_connection, _local_path(url, "sqlite"))}
        elif url.startswith("postgresql"):
            engine = {"connect_args": {"connect_timeout": CONNECT_TIMEOUT_S}}
        else:
            engine = {}
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
    """Open a database storage. Workers that open a new database at the same time race to create its
    tables; the losers get an integrity error or "already exists" and succeed on a second try."""
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
            lost_race = isinstance(error, sqlalchemy.exc.IntegrityError) or "already exists" in str(error)
            if not lost_race or retries == TABLE_RACE_RETRIES:
                raise
            retries += 1
            time.sleep(0.2 * retries)


def beating(storage: BaseStorage, trial: optuna.Trial, heartbeat: Heartbeat) -> AbstractContextManager[None]:
    """A block during which ``trial`` beats: on a journal storage, by recording its heartbeat now and
    every ``heartbeat.interval_s`` seconds until the block ends; elsewhere Optuna beats, or nothing needs
    to (memory)."""
    if isinstance(storage, JournalStorage):
        return _beating_attribute(trial, heartbeat.interval_s)
    return nullcontext()


@contextmanager
def _beating_attribute(trial: optuna.Trial, interval_s: float) -> Iterator[None]:
    trial.set_user_attr(HEARTBEAT_ATTR, time.time())
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(interval_s):
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

