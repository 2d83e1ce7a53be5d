"""Study storage: RDBStorage with heartbeats and stale-trial retry, and password-free URLs."""

from __future__ import annotations

import re
from dataclasses import dataclass

import optuna
import sqlalchemy
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, OperationalError, SQLAlchemyError

from tuner.errors import StorageError

DEFAULT_STORAGE = "sqlite:///tuner.db"
SUPPORTED_SCHEMES = ("sqlite", "postgresql", "mysql")


@dataclass(frozen=True)
class StorageSettings:
    """How workers share a study: the database URL and the heartbeat that detects dead workers."""

    url: str = DEFAULT_STORAGE
    # Trials take minutes: a heartbeat every 30 s, and a trial whose worker has been
    # silent for 2 minutes is declared dead and retried.
    heartbeat_interval: int = 30
    grace_period: int = 120
    max_retry: int = 3
    connect_timeout: int = 10

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
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        # Not parseable: hide anything between '://user:' and '@' by hand.
        return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)


def normalize_url(url: str) -> str:
    """Check the URL's form; a bare postgresql:// gets the psycopg 3 driver named explicitly."""
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        raise StorageError(
            f"malformed storage URL {mask_url(url)!r}; expected e.g. sqlite:///tuner.db or "
            "postgresql+psycopg://user:password@host:5432/db"
        ) from None
    backend = parsed.get_backend_name()
    if backend not in SUPPORTED_SCHEMES:
        raise StorageError(
            f"unsupported storage URL {mask_url(url)!r}: the scheme must be sqlite, postgresql+psycopg or mysql"
        )
    if backend == "postgresql" and parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    if backend == "sqlite" and not parsed.database:
        raise StorageError(f"storage URL {mask_url(url)!r} names no database file (sqlite:///path/to/file.db)")
    return parsed.render_as_string(hide_password=False)


def engine_kwargs(url: str, connect_timeout: int) -> dict:
    backend = make_url(url).get_backend_name()
    if backend == "sqlite":
        # Several worker processes share one SQLite file: wait for the write lock rather
        # than failing at once with "database is locked".
        return {"connect_args": {"timeout": 60}}
    kwargs: dict = {"pool_pre_ping": True, "pool_size": 2, "max_overflow": 2, "pool_recycle": 1800}
    if backend == "postgresql":
        kwargs["connect_args"] = {"connect_timeout": connect_timeout}
    elif backend == "mysql":
        kwargs["connect_args"] = {"connect_timeout": connect_timeout}
    return kwargs


def open_storage(settings: StorageSettings, *, heartbeat: bool = True) -> RDBStorage:
    """Connect to the storage, creating its tables if needed; a clear StorageError otherwise."""
    url = normalize_url(settings.url)
    options: dict = {}
    if heartbeat:
        options = {
            "heartbeat_interval": settings.heartbeat_interval,
            "grace_period": settings.grace_period,
            "heartbeat_stale_trial_callback": RetryHeartbeatStaleTrialCallback(max_retry=settings.max_retry),
        }
    try:
        return RDBStorage(url, engine_kwargs=engine_kwargs(url, settings.connect_timeout), **options)
    except (OperationalError, SQLAlchemyError, ImportError) as exc:
        raise StorageError(f"cannot open storage {mask_url(url)}: {short_reason(exc)}") from None


def short_reason(exc: BaseException) -> str:
    """The first line of a database error, without SQLAlchemy's background link."""
    original = getattr(exc, "orig", None) or exc
    text = str(original).strip().splitlines()[0] if str(original).strip() else type(original).__name__
    return text


def study_names(storage: RDBStorage) -> list[str]:
    return [s.study_name for s in optuna.get_all_study_summaries(storage=storage, include_best_trial=False)]


def ping(storage: RDBStorage) -> None:
    try:
        with storage.engine.connect() as connection:
            connection.execute(sqlalchemy.text("SELECT 1"))
    except SQLAlchemyError as exc:
        raise StorageError(f"cannot reach storage {mask_url(storage.url)}: {short_reason(exc)}") from None
