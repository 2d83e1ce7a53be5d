"""Study storage: RDBStorage with heartbeats and stale-trial retry, and password-free URLs."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable
from urllib.parse import quote

import optuna
import sqlalchemy
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, InterfaceError, OperationalError, SQLAlchemyError

from tuner.config import default
from tuner.errors import StorageError

DEFAULT_STORAGE = "sqlite:///tuner.db"
SUPPORTED_SCHEMES = ("sqlite", "postgresql")
# postgres:// (Heroku, many PaaS) and postgresql:// name no driver: both get psycopg 3.
POSTGRES_ALIASES = ("postgres", "postgresql")
# User attr of a queued retry: the number of the trial it retries (stale or handed back).
RETRY_OF_ATTR = "retry_of"


@dataclass(frozen=True)
class StorageSettings:
    """How workers share a study: the database URL and the heartbeat that detects dead workers."""

    url: str = DEFAULT_STORAGE
    # A study stores its own (tuner.config.StudyConfig, where the defaults are stated and why).
    heartbeat_interval: int = default("heartbeat_interval")
    grace_period: int = default("grace_period")
    max_retry: int = default("max_retry")
    connect_timeout: int = 10
    # Only reads (status, studies, best, export): a SQLite file this user may not write opens read-only.
    read_only: bool = False

    def __post_init__(self) -> None:
        if self.heartbeat_interval < 1:
            raise StorageError(f"--heartbeat-interval must be >= 1 second, got {self.heartbeat_interval}")
        if self.grace_period <= self.heartbeat_interval:
            raise StorageError(
                f"--grace-period must be longer than --heartbeat-interval ({self.heartbeat_interval}), "
                f"got {self.grace_period}"
            )
        if self.max_retry < 0:
            raise StorageError(f"--max-retry must be >= 0, got {self.max_retry}")


def mask_url(url: str) -> str:
    """The URL with any password replaced by ***, safe for logs, errors and status output."""
    try:
        parsed = make_url(url)
        # libpq/psycopg (and the mysql drivers) also take the password as a query
        # parameter (?password=...), which hide_password alone leaves in clear text.
        hidden = [key for key in parsed.query if key.lower() in ("password", "passwd")]
        parsed = parsed.update_query_dict({key: "MASKEDPASSWORD" for key in hidden})
        return parsed.render_as_string(hide_password=True).replace("MASKEDPASSWORD", "***")
    except (ArgumentError, ValueError):
        # Not parseable: hide anything between '://user:' and '@' by hand.
        masked = re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)
        return re.sub(r"([?&](?:password|passwd)=)[^&]*", r"\1***", masked, flags=re.IGNORECASE)


def sqlite_file(url: str) -> Path | None:
    """The database file of a SQLite URL; None for a server database or an in-memory one."""
    parsed = make_url(normalize_url(url))
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database)


def local_folder(url: str, suffix: str) -> str | None:
    """`tuner-<suffix>` beside a SQLite file tuner.db (absolute); None for a server database."""
    database = sqlite_file(url)
    return None if database is None else str(database.with_name(f"{database.stem}-{suffix}").resolve())


def normalize_url(url: str) -> str:
    """Check the URL's form; a bare postgresql:// gets the psycopg 3 driver named explicitly."""
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        raise StorageError(
            f"malformed storage URL {mask_url(url)!r}; expected e.g. sqlite:///tuner.db or "
            "postgresql+psycopg://user:password@host:5432/db"
        ) from None
    if parsed.drivername in POSTGRES_ALIASES:
        parsed = parsed.set(drivername="postgresql+psycopg")
    backend = parsed.get_backend_name()
    if backend == "mysql":
        # Not tested here, and Optuna's MySQL schema needs its own care (row locks, utf8mb4).
        raise StorageError(f"storage URL {mask_url(url)!r}: MySQL is not supported; use PostgreSQL "
                           "(postgresql://user:password@host/db) for many workers, or SQLite on one machine")
    if backend not in SUPPORTED_SCHEMES:
        raise StorageError(
            f"unsupported storage URL {mask_url(url)!r}: the scheme must be sqlite, postgresql or postgres"
        )
    if backend == "sqlite" and not parsed.database:
        raise StorageError(f"storage URL {mask_url(url)!r} names no database file (sqlite:///path/to/file.db)")
    return parsed.render_as_string(hide_password=False)


def engine_kwargs(url: str, connect_timeout: int) -> dict:
    backend = make_url(url).get_backend_name()
    if backend == "sqlite":
        # Several worker processes share one SQLite file: wait for the write lock rather
        # than failing at once with "database is locked".
        return {"connect_args": {"timeout": 60}}
    return {"pool_pre_ping": True, "pool_size": 2, "max_overflow": 2, "pool_recycle": 1800,
            "connect_args": {"connect_timeout": connect_timeout}}


# Storage calls a worker makes while training; each is safe to repeat after a dropped connection.
RETRIED_METHODS = (
    "create_new_trial", "set_trial_param", "set_trial_state_values", "set_trial_intermediate_value",
    "set_trial_user_attr", "set_trial_system_attr", "get_trial", "get_all_trials", "get_n_trials",
    "get_best_trial", "get_trial_id_from_study_id_trial_number", "get_trial_user_attrs",
    "get_trial_system_attrs", "get_study_id_from_name", "get_study_name_from_id",
    "get_study_directions", "get_study_user_attrs", "get_study_system_attrs", "get_all_studies",
    "set_study_user_attr", "set_study_system_attr", "record_heartbeat", "_get_stale_trial_ids",
)


def is_connection_error(exc: BaseException) -> bool:
    """A lost or refused database connection (restart, failover, network), not a bad query."""
    cause = exc
    if isinstance(exc, optuna.exceptions.StorageInternalError) and exc.__cause__ is not None:
        cause = exc.__cause__
    if isinstance(cause, DBAPIError) and cause.connection_invalidated:
        return True
    return isinstance(cause, (OperationalError, InterfaceError))


def retrying(method: Callable, name: str) -> Callable:
    @functools.wraps(method)
    def wrapper(self: "ResilientRDBStorage", *args: Any, **kwargs: Any) -> Any:
        delay, deadline, failed = 0.5, time.monotonic() + self.retry_seconds, False
        while True:
            try:
                return method(self, *args, **kwargs)
            except optuna.exceptions.UpdateFinishedTrialError:
                # After a dropped connection the trial may be finished by our own attempt
                # (it committed, the reply was lost) or by another worker (ours never
                # committed). Only the first is a success: read which one it was.
                if failed and name == "set_trial_state_values" and wrote(self, *args, **kwargs):
                    return True
                raise
            except (SQLAlchemyError, optuna.exceptions.StorageInternalError) as exc:
                if not is_connection_error(exc) or time.monotonic() + delay > deadline:
                    raise
                failed = True
                logging.getLogger("tuner.service._storage").warning(
                    "storage unreachable during %s (%s); retrying in %.1fs", name,
                    short_reason(exc.__cause__ or exc), delay)  # the driver's error, not Optuna's wrapper
                time.sleep(delay)
                delay = min(delay * 2, 10.0)

    return wrapper


def wrote(storage: RDBStorage, trial_id: int, state: TrialState, values: Any = None) -> bool:
    """Whether the trial holds the state (and values) a state change meant to write.

    A FAIL written by another worker's stale-trial check cannot be told apart from our
    own, so a FAIL always reads as ours: then two workers may both queue a retry of the
    trial, and RetryStaleTrial and duplicate_retry() make that retry happen once.
    """
    trial = storage.get_trial(trial_id)
    if trial.state != state:
        return False
    return values is None or list(trial.values or []) == list(values)


class RetryStaleTrial:
    """Queues the retry of a trial whose worker died, at most once per failed trial.

    Optuna's RetryHeartbeatStaleTrialCallback runs in whichever worker failed the stale
    trial. After a reconnect two workers can both believe they did (see wrote()), and each
    queued a retry: the trial trained twice, taking two slots of the budget. This callback
    marks every retry with the trial it retries (`retry_of`), queues none if one exists,
    and duplicate_retry() catches the one left by two callbacks that ran at the same time.
    It keeps Optuna's retry attrs (failed_trial, retry_history) and its max_retry count.
    """

    def __init__(self, max_retry: int | None) -> None:
        self.max_retry = max_retry

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        history = [*trial.system_attrs.get("retry_history", []), trial.number]
        if self.max_retry is not None and len(history) > self.max_retry:
            return
        if any(t.user_attrs.get(RETRY_OF_ATTR) == trial.number for t in study.get_trials(deepcopy=False)):
            return  # another worker failed this trial too and queued its retry already
        study.add_trial(optuna.trial.create_trial(
            state=TrialState.WAITING, params=trial.params, distributions=trial.distributions,
            user_attrs={**trial.user_attrs, RETRY_OF_ATTR: trial.number},
            system_attrs={"failed_trial": trial.number, **trial.system_attrs, "retry_history": history},
        ))


def duplicate_retry(study: optuna.Study, trial: optuna.Trial) -> int | None:
    """The number of an earlier retry of the same trial when `trial` is a second one, else None.

    Two workers that queued a retry of one failed trial at the same moment leave two; the
    earlier (lower number) is the retry, and whichever worker pops the later one drops it,
    whatever the order the two are popped in.
    """
    parent = trial.user_attrs.get(RETRY_OF_ATTR)
    if parent is None:
        return None
    earlier = [t.number for t in study.get_trials(deepcopy=False)
               if t.user_attrs.get(RETRY_OF_ATTR) == parent and t.number < trial.number]
    return min(earlier) if earlier else None


class ResilientRDBStorage(RDBStorage):
    """RDBStorage that rides out a database restart: calls retry with backoff on lost connections.

    Without this, a PostgreSQL restart mid-trial would crash every worker (and the
    heartbeat thread would die silently, getting live trials declared stale).
    """

    retry_seconds: float = 120.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Per thread (the heartbeat has its own): whether a state change is in progress.
        self.changing_state = threading.local()
        super().__init__(*args, **kwargs)

    def start_heartbeat(self, settings: StorageSettings) -> None:
        """Turn on the heartbeat and stale-trial retry of `settings` in this open storage.

        A study being joined stores its heartbeat settings, which are read through a storage:
        opening a second one to use them cost a second engine and connection pool per worker.
        Optuna 5's RDBStorage.__init__ only stores these settings in these public attributes,
        which the heartbeat thread and fail_stale_trials read at each use (through
        get_heartbeat_interval, get_heartbeat_stale_trial_callback and _get_stale_trial_ids),
        so setting them as __init__ would is the same as passing them to it.
        """
        self.heartbeat_interval = settings.heartbeat_interval
        self.grace_period = settings.grace_period
        self.heartbeat_stale_trial_callback = RetryStaleTrial(max_retry=settings.max_retry)
        self.failed_trial_callback = self.heartbeat_stale_trial_callback

    def close(self) -> None:
        """Close this storage's pooled connections now.

        Optuna 5's RDBStorage has no __del__: an engine's connections stay open until the
        garbage collector reaches it, so a process that opens storages one after another (a
        notebook, a script driving the CLI in-process) piles them up until PostgreSQL refuses
        clients past max_connections (100 by default)."""
        self.remove_session()
        self.engine.dispose()

    def __enter__(self) -> ResilientRDBStorage:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def set_trial_state_values(self, trial_id: int, state: TrialState, values: Any = None) -> bool:
        # Popping a queued trial reads its state and writes RUNNING: one step (see lock_at_begin).
        self.changing_state.active = True
        try:
            return RDBStorage.set_trial_state_values(self, trial_id, state, values)
        finally:
            self.changing_state.active = False


for _name in RETRIED_METHODS:
    setattr(ResilientRDBStorage, _name, retrying(getattr(ResilientRDBStorage, _name), _name))


def open_storage(settings: StorageSettings, *, heartbeat: bool = True) -> ResilientRDBStorage:
    """Connect to the storage, creating its tables if needed (unless it only reads); a clear
    StorageError otherwise."""
    url = normalize_url(settings.url)
    database = sqlite_file(url)
    try:
        if settings.read_only:
            storage = ResilientRDBStorage(reading_url(url), engine_kwargs=engine_kwargs(url, settings.connect_timeout),
                                          skip_table_creation=True)
        else:
            use_write_ahead_log(url)
            storage = ResilientRDBStorage(url, engine_kwargs=engine_kwargs(url, settings.connect_timeout))
    except (OperationalError, SQLAlchemyError, ImportError) as exc:
        raise StorageError(f"cannot open storage {mask_url(url)}: {short_reason(exc)}") from None
    except optuna.exceptions.StorageInternalError as exc:
        # Optuna's wrapper around the driver's error (a first read that commits, as reading does)
        raise StorageError(f"cannot open storage {mask_url(url)}: {short_reason(exc.__cause__ or exc)}") from None
    except sqlite3.Error as exc:
        raise StorageError(f"cannot open storage {mask_url(url)}: {exc}") from None
    if database is not None:
        lock_at_begin(storage)
    if heartbeat:
        storage.start_heartbeat(settings)
    return storage


def lock_at_begin(storage: ResilientRDBStorage) -> None:
    """Make a SQLite state change take the write lock when its transaction begins.

    Optuna reads a trial's state and then writes the new one, counting on SELECT ... FOR
    UPDATE, which SQLite ignores; and Python's sqlite3 only begins a transaction at the
    first write, so the read ran outside it. Two workers popping the same queued trial
    (a warm start, a retry, a hand-back) both saw it WAITING, both set it RUNNING and both
    trained it: about one pop in five was doubled with four processes. BEGIN IMMEDIATE
    makes the read and the write one atomic step; other writers wait on the lock (the 60 s
    busy timeout). Only state changes take it: taking it for every transaction serialised
    the workers' reads too and halved the throughput of four workers on one file.
    """
    @sqlalchemy.event.listens_for(storage.engine, "begin")
    def begin_immediate(connection) -> None:
        if getattr(storage.changing_state, "active", False):
            connection.exec_driver_sql("BEGIN IMMEDIATE")


def reading_url(url: str) -> str:
    """The URL a command that only reads opens: a SQLite file this user may not write, read-only.

    Opened as usual, such a file failed with "unable to open database file" (or "attempt to write
    a readonly database"): SQLite writes beside it, and Optuna would create missing tables. With
    mode=ro it writes nothing, but a file in WAL mode still needs its -shm index, which it cannot
    create in a folder it may not write: when no -wal file is there (no writer has the file open,
    for a writer keeps one while it has), immutable=1 reads the file as it is without that index.
    Where a writer has it open, its -wal and -shm are there, and mode=ro reads them as they change.
    """
    database = sqlite_file(url)
    if database is None or writable(database):
        return url
    options = "mode=ro" + ("" if database.with_name(database.name + "-wal").exists() else "&immutable=1")
    # Quoted twice: SQLAlchemy unquotes the URL's path once, SQLite the file: URI's (a space, # or ?).
    return f"sqlite:///file:{quote(quote(str(database.resolve())))}?{options}&uri=true"


def writable(database: Path) -> bool:
    """Whether this user may write the database file and create files beside it (-wal, -shm)."""
    return os.access(database, os.W_OK) and os.access(database.parent, os.W_OK | os.X_OK)


def use_write_ahead_log(url: str) -> None:
    """Put a SQLite file in write-ahead-log mode (a property of the file, kept from then on).

    In WAL mode readers never wait for a writer and a commit appends to the log instead of
    rewriting pages of the database, so the workers sharing one file spend far less time on
    its lock. Committed trials are as safe against a crashed process as before.
    """
    database = sqlite_file(url)
    if database is None:
        return
    with contextlib.closing(sqlite3.connect(database, timeout=60)) as connection:
        connection.execute("PRAGMA journal_mode=WAL")


def short_reason(exc: BaseException) -> str:
    """The first line of a database error, without SQLAlchemy's background link."""
    original = getattr(exc, "orig", None) or exc
    text = str(original).strip().splitlines()[0] if str(original).strip() else type(original).__name__
    return text


def storage_is_empty(settings: StorageSettings) -> bool:
    """True when the storage cannot hold a study yet (no SQLite file, or a server database
    without tables), so that a new study is validated before opening it creates anything."""
    url = normalize_url(settings.url)
    database = sqlite_file(url)
    if database is not None:
        return not database.exists()
    if make_url(url).get_backend_name() == "sqlite":
        return False  # in memory
    engine = sqlalchemy.create_engine(url, **engine_kwargs(url, settings.connect_timeout))
    try:
        return sqlalchemy.inspect(engine).get_table_names() == []
    except SQLAlchemyError as exc:
        raise StorageError(f"cannot open storage {mask_url(url)}: {short_reason(exc)}") from None
    finally:
        engine.dispose()


def ping(storage: RDBStorage) -> None:
    try:
        with storage.engine.connect() as connection:
            connection.execute(sqlalchemy.text("SELECT 1"))
    except SQLAlchemyError as exc:
        raise StorageError(f"cannot reach storage {mask_url(storage.url)}: {short_reason(exc)}") from None
