"""The database: one async engine, sessions behind a circuit breaker, SQLite or PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import structlog
from sqlalchemy import MetaData, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase

from aiguardian.core.breaker import BreakerState, CircuitBreaker, CircuitOpenError
from aiguardian.core.errors import DatabaseUnavailable, ValidationFailed
from aiguardian.settings import Settings

log = structlog.get_logger("aiguardian.db")

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class SQLiteInUseError(Exception):
    """A second process tried to serve the same SQLite file."""


# SQLite reports a wrong query as an OperationalError too; those say nothing about the database's health.
_QUERY_MISTAKES = ("no such table", "no such column", "syntax error", "has no column")


def is_connection_error(exc: BaseException) -> bool:
    """True when the failure says the database is unreachable, not that the query was wrong."""
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    if isinstance(exc, OperationalError) and any(m in str(exc.orig) for m in _QUERY_MISTAKES):
        return False
    return isinstance(exc, OperationalError | InterfaceError | PoolTimeoutError | OSError | TimeoutError)


# PostgreSQL refuses some text outright (a NUL character, say): the value is the client's fault, not ours.
_UNSTORABLE_TEXT = frozenset({"22021", "22P05"})  # character_not_in_repertoire, untranslatable_character


def is_unstorable_text(exc: BaseException) -> bool:
    return isinstance(exc, DBAPIError) and getattr(exc.orig, "sqlstate", None) in _UNSTORABLE_TEXT


class SQLiteProcessLock:
    """An exclusive lock file beside the SQLite database: one serving process per file.

    Held per process and counted, because the CLI claims the file before the server starts and the app
    claims it again in its lifespan; ``flock`` would otherwise see the second claim as a rival.
    """

    _held: dict[Path, tuple[int, int]] = {}

    def __init__(self, db_path: Path) -> None:
        self.path = db_path.resolve().with_name(db_path.name + ".lock")

    def acquire(self) -> None:
        held = self._held.get(self.path)
        if held is not None:
            self._held[self.path] = (held[0], held[1] + 1)
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise SQLiteInUseError(
                f"another AIGuardian process is already serving {self.path.with_suffix('')}; SQLite allows "
                "one process. Stop it, or use PostgreSQL (DATABASE_URL) and Redis (REDIS_URL) to run several."
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._held[self.path] = (fd, 1)

    def release(self) -> None:
        held = self._held.get(self.path)
        if held is None:
            return
        fd, count = held
        if count > 1:
            self._held[self.path] = (fd, count - 1)
            return
        del self._held[self.path]
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def sqlite_path(url: str) -> Path | None:
    parsed = make_url(url)
    if not parsed.drivername.startswith("sqlite") or not parsed.database or parsed.database == ":memory:":
        return None
    return Path(parsed.database)


def _create_engine(settings: Settings) -> AsyncEngine:
    url = settings.effective_database_url
    if settings.is_sqlite:
        path = sqlite_path(url)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(
            url,
            connect_args={"timeout": settings.sqlite_busy_timeout_ms / 1000},
            pool_size=settings.db_pool_size,
            max_overflow=settings.db_max_overflow,
            pool_timeout=settings.db_timeout_seconds,
        )
        busy_timeout = settings.sqlite_busy_timeout_ms

        @event.listens_for(engine.sync_engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout)}")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        return engine
    return create_async_engine(
        url,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_timeout=settings.db_timeout_seconds,
        pool_pre_ping=True,
        connect_args={
            "timeout": settings.db_timeout_seconds,
            "command_timeout": settings.db_timeout_seconds,
            "server_settings": {"application_name": "aiguardian"},
        },
    )


class Database:
    """Sessions go through :meth:`session` (reads) or :meth:`transaction` (writes).

    Both pass the circuit breaker: when the database is down, callers get ``DatabaseUnavailable`` (503) at
    once instead of queueing on a dead pool. On SQLite, writes are serialised in-process (one writer), so
    transactions never wait on SQLite's file lock.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.url = settings.effective_database_url
        self.is_sqlite = settings.is_sqlite
        self.backend = "sqlite" if self.is_sqlite else "postgresql"
        self.engine = _create_engine(settings)
        self.sessionmaker = async_sessionmaker(self.engine, expire_on_commit=False)
        self.breaker = CircuitBreaker(
            "database", settings.circuit_breaker_threshold, settings.circuit_breaker_reset_seconds
        )
        self._write_lock = asyncio.Lock() if self.is_sqlite else None
        self._process_lock: SQLiteProcessLock | None = None

    def claim_sqlite_file(self) -> None:
        """Refuse to serve a SQLite file that another process already serves."""
        path = sqlite_path(self.url)
        if path is not None and self._process_lock is None:
            lock = SQLiteProcessLock(path)
            lock.acquire()
            self._process_lock = lock

    async def close(self) -> None:
        await self.engine.dispose()
        if self._process_lock is not None:
            self._process_lock.release()
            self._process_lock = None

    @contextlib.asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        try:
            self.breaker.before_call()
        except CircuitOpenError as exc:
            raise DatabaseUnavailable() from exc
        failed = False
        try:
            async with self.sessionmaker() as session:
                yield session
        except Exception as exc:
            if is_connection_error(exc):
                failed = True
                self.breaker.record_failure(exc)
                log.warning(
                    "database call failed",
                    error=self.breaker.last_error,
                    breaker=self.breaker.state.value,
                    failures=self.breaker.consecutive_failures,
                )
                raise DatabaseUnavailable() from exc
            if is_unstorable_text(exc):
                raise ValidationFailed(
                    "a text value holds a character that cannot be stored (such as NUL)"
                ) from exc
            raise
        except BaseException:
            # Cancelled (say, a probe's or a caller's timeout) before the database answered: that says
            # nothing about it, so it must not count as a success (closing the breaker, clearing failures).
            failed = True
            self.breaker.release_probe()
            raise
        finally:
            if not failed:
                self.breaker.record_success()

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        """A write transaction, committed on success and rolled back on any error."""
        async with self._writer(), self.session() as session, session.begin():
            yield session

    @contextlib.asynccontextmanager
    async def _writer(self) -> AsyncIterator[None]:
        if self._write_lock is None:
            yield
            return
        async with self._write_lock:
            yield

    async def ping(self) -> float:
        """Round-trip a trivial query; return its latency in milliseconds."""
        started = time.perf_counter()
        async with self.session() as session:
            await session.execute(text("SELECT 1"))
        return (time.perf_counter() - started) * 1000

    def pool_stats(self) -> dict[str, int]:
        pool: Any = self.engine.pool
        stats = {"size": 0, "checked_out": 0, "overflow": 0}
        for key, attr in (("size", "size"), ("checked_out", "checkedout"), ("overflow", "overflow")):
            method = getattr(pool, attr, None)
            if callable(method):
                stats[key] = max(0, int(method()))  # SQLAlchemy counts overflow from -pool_size
        return stats

    @property
    def breaker_state(self) -> BreakerState:
        return self.breaker.state
