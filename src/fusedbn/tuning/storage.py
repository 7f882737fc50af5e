"""Where studies live: opening a storage URL, and failing the trials that a dead worker left RUNNING.

Storage URLs:

- ``sqlite:///path/study.db`` (relative path; ``sqlite:////abs/path.db`` absolute): a local file, opened
  with a 60 s lock timeout so a few workers on one machine can share it.
- ``journal:///path/study.log`` (``journal:////abs/path.log`` absolute): Optuna's journal file storage,
  the recommended way for several worker processes on one machine.
- ``postgresql+psycopg2://user:password@host/db`` (or ``postgresql://``, ``mysql://``...): a database
  server, for workers on several machines.
- ``memory``: Optuna's in-memory storage, for a throwaway study in one process: nothing is written, the
  study cannot be resumed or shared, and trials record no heartbeat.

Cost: with SQLite, a trial's writes (its start, parameters, one report per epoch, the user attributes,
its end) each commit to the file: about 0.13 s per trial of 8 epochs on the digits task, against next to
nothing in memory. The search asks Optuna for no full garbage collection after each trial, which cost
another 0.3 s per trial here.

Each running trial records a heartbeat (the user attribute ``heartbeat``, a Unix time) every few
seconds. A RUNNING trial whose heartbeat is older than the grace period belongs to a worker that was
killed: :func:`fail_stale_trials` marks it FAIL, with the reason in the user attribute ``failure``, so that
its budget is run again. Workers on several machines need clocks that agree (NTP) to within the grace.
"""

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import optuna
import sqlalchemy.engine
import sqlalchemy.exc
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import BaseStorage, InMemoryStorage, JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

MEMORY_URL = "memory"
HEARTBEAT_ATTR = "heartbeat"
FAILURE_ATTR = "failure"
SQLITE_TIMEOUT_S = 60
CONNECT_TIMEOUT_S = 10
TABLE_RACE_RETRIES = 3
POSTGRES_INSTALL = "pip install '.[postgres]' in a clone of fusedbn"


class StorageError(RuntimeError):
    """A storage URL that cannot be opened."""


def _local_path(url: str, scheme: str) -> Path:
    """The file named by ``<scheme>:///relative`` or ``<scheme>:////absolute``; its folder must exist."""
    prefix = f"{scheme}:///"
    if not url.startswith(prefix) or url == prefix:
        raise StorageError(f"cannot open storage {url!r}: expected {prefix}<file path>")
    path = Path(url[len(prefix) :])
    if not path.parent.is_dir():
        raise StorageError(f"cannot open storage {url!r}: folder {str(path.parent)!r} does not exist")
    return path


def is_in_memory(storage: BaseStorage) -> bool:
    """Whether ``storage`` lives in this process only (no other worker can see its trials)."""
    return isinstance(storage, InMemoryStorage)


def open_storage(url: str) -> BaseStorage:
    """Open the Optuna storage at ``url`` (see the module docstring); raises :class:`StorageError`."""
    if url == MEMORY_URL:
        return InMemoryStorage()
    try:
        if url.startswith("journal:"):
            return JournalStorage(JournalFileBackend(str(_local_path(url, "journal"))))
        if url.startswith("sqlite:"):
            _local_path(url, "sqlite")
            connect_args: dict[str, int] = {"timeout": SQLITE_TIMEOUT_S}
        elif url.startswith("postgresql"):
            connect_args = {"connect_timeout": CONNECT_TIMEOUT_S}
        else:
            connect_args = {}
        return _rdb_storage(url, connect_args)
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


def _rdb_storage(url: str, connect_args: dict[str, int]) -> RDBStorage:
    """Open a database storage. Workers that open a new database at the same time race to create its
    tables; the losers get an integrity error or "already exists" and succeed on a second try."""
    retries = 0
    while True:
        try:
            return RDBStorage(url, engine_kwargs={"connect_args": connect_args})
        except sqlalchemy.exc.SQLAlchemyError as error:
            lost_race = isinstance(error, sqlalchemy.exc.IntegrityError) or "already exists" in str(error)
            if not lost_race or retries == TABLE_RACE_RETRIES:
                raise
            retries += 1
            time.sleep(0.2 * retries)


@contextmanager
def heartbeat(trial: optuna.Trial, interval_s: float) -> Iterator[None]:
    """Record a heartbeat on ``trial`` now and every ``interval_s`` seconds until the block ends."""
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


def fail_stale_trials(study: optuna.Study, grace_s: float) -> list[int]:
    """Mark FAIL every RUNNING trial whose last heartbeat is older than ``grace_s``; returns their numbers."""
    now = time.time()
    failed = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        last = trial.user_attrs.get(HEARTBEAT_ATTR, trial.datetime_start.timestamp())
        if now - last <= grace_s:
            continue
        # Optuna has no public call that writes a trial owned by another process: use the storage.
        storage, trial_id = study._storage, trial._trial_id
        try:
            storage.set_trial_user_attr(
                trial_id, FAILURE_ATTR, f"worker stopped: no heartbeat for {now - last:.0f} s"
            )
            storage.set_trial_state_values(trial_id, TrialState.FAIL)
        except UpdateFinishedTrialError:
            continue  # another worker failed it first
        failed.append(trial.number)
    return failed
