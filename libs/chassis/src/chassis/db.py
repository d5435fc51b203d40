"""The service's own database: engine, sessions, UTC times, and the messaging tables."""

import asyncio
import contextlib
import contextvars
import fcntl
import functools
import os
import re
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Request
from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    event,
    text,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine, create_engine, make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.types import TypeDecorator

T = TypeVar("T")
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def dialect_insert(conn: Connection, table: Table) -> Any:
    """An INSERT with its dialect's ON CONFLICT clauses (`on_conflict_do_nothing` / `_update`),
    for the SQLite or PostgreSQL connection at hand."""
    return (postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert)(table)


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator):
    """A timezone-aware UTC datetime on every backend (SQLite drops the zone otherwise)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given; use UTC-aware datetimes")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def new_metadata() -> MetaData:
    """A service's metadata, with the outbox, inbox, idempotency and lease tables in it."""
    metadata = MetaData(naming_convention=NAMING)
    Table(
        "outbox", metadata,
        Column("seq", Integer().with_variant(BigInteger(), "postgresql"), primary_key=True,
               autoincrement=True),
        Column("event_id", String(26), nullable=False, unique=True),
        Column("event_type", String(100), nullable=False),
        Column("aggregate", String(200), nullable=False),
        Column("payload", JSON, nullable=False),
        Column("created_at", UTCDateTime, nullable=False),
        Column("published_at", UTCDateTime, nullable=True),
        Column("attempts", Integer, nullable=False, default=0),
        Index("ix_outbox_pending", "published_at", "seq"),
    )
    Table(
        "inbox", metadata,
        Column("consumer", String(100), primary_key=True),
        Column("event_id", String(64), primary_key=True),
        Column("event_type", String(100), nullable=False),
        Column("processed_at", UTCDateTime, nullable=False),
    )
    Table(
        "idempotency_keys", metadata,
        Column("scope", String(100), primary_key=True),
        Column("key", String(255), primary_key=True),
        Column("request_hash", String(64), nullable=False),
        Column("response", JSON, nullable=False),
        Column("created_at", UTCDateTime, nullable=False),
    )
    Table(
        "leases", metadata,
        Column("name", String(100), primary_key=True),
        Column("holder", String(100), nullable=False),
        Column("expires_at", UTCDateTime, nullable=False),
    )
    return metadata


class Database:
    """An async engine and its session factory, created in the service's lifespan."""

    def __init__(self, url: str, *, echo: bool = False) -> None:
        parsed = make_url(url)
        self.dialect = parsed.get_backend_name()
        kwargs: dict[str, Any] = {"echo": echo}
        if self.dialect == "sqlite":
            if parsed.database and parsed.database != ":memory:":
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            kwargs["connect_args"] = {"timeout": 30}
        else:
            # No pre-ping: it costs a round trip per transaction; a connection found dead is
            # invalidated on its first error and the pool replaces it.
            kwargs.update(pool_size=10, max_overflow=20, pool_recycle=1800)
        self.engine: AsyncEngine = create_async_engine(url, **kwargs)
        if self.dialect == "sqlite":
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False)
        self.on_events_committed: list[Callable[[], None]] = []
        # SQLite has one writer at a time; queueing writers here is far cheaper than letting
        # them meet in SQLite's busy handler, which sleeps up to 100 ms per retry.
        self._write_lock = asyncio.Lock() if self.dialect == "sqlite" else None
        self._sync_engine: Engine | None = None
        self._writer: ThreadPoolExecutor | None = None
        self._file_lock: WriterLock | None = None
        if self.dialect == "sqlite":
            self._sync_engine = create_engine(parsed.set(drivername="sqlite"),
                                              connect_args={"timeout": 30})
            event.listen(self._sync_engine, "connect", _sqlite_pragmas)
            self._writer = ThreadPoolExecutor(1, thread_name_prefix="sqlite-writer")
            if parsed.database and parsed.database != ":memory:":
                self._file_lock = WriterLock(f"{parsed.database}.writer-lock")

    async def create_all(self, metadata: MetaData) -> None:
        async with self.engine.begin() as conn:
            await conn.run_sync(metadata.create_all)

    async def ping(self) -> None:
        async with self.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        """A session whose work commits together at the end of the block, or not at all."""
        async with contextlib.AsyncExitStack() as stack:
            if self._write_lock is not None:
                await stack.enter_async_context(self._write_lock)
            if self._file_lock is not None:
                await asyncio.get_running_loop().run_in_executor(self._writer,
                                                                 self._file_lock.acquire)
                stack.callback(self._file_lock.release)
            session = await stack.enter_async_context(self.sessions())
            async with session.begin():
                yield session
            if session.info.pop("outbox_dirty", False):
                for hook in self.on_events_committed:
                    hook()

    async def run(self, unit: Callable[[Connection], T]) -> T:
        """Run a synchronous unit of work in one transaction; returns what it returns.

        On SQLite the whole unit runs on one writer thread: a single hand-off, where
        aiosqlite makes several per statement (a follow went from ~3.5 ms to ~0.5 ms).
        Elsewhere it runs over the async driver through `run_sync`.
        """
        if self._sync_engine is not None and self._write_lock is not None:
            async with self._write_lock:
                job = functools.partial(contextvars.copy_context().run, self._run_unit, unit)
                result, staged = await asyncio.get_running_loop().run_in_executor(
                    self._writer, job)
        else:
            try:
                async with self.engine.begin() as conn:
                    result, staged = await conn.run_sync(_in_transaction, unit)
            except Exception:
                # A cancellation that reaches the unit inside run_sync's greenlet comes out
                # as a driver error; the caller must still see it as a cancellation.
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise asyncio.CancelledError from None
                raise
        if staged:
            for hook in self.on_events_committed:
                hook()
        return result

    def _run_unit(self, unit: Callable[[Connection], T]) -> tuple[T, bool]:
        assert self._sync_engine is not None
        with self._file_lock or contextlib.nullcontext(), self._sync_engine.begin() as conn:
            return _in_transaction(conn, unit)

    async def dispose(self) -> None:
        await self.engine.dispose()
        if self._writer is not None:
            self._writer.shutdown(wait=True)
        if self._sync_engine is not None:
            self._sync_engine.dispose()
        if self._file_lock is not None:
            self._file_lock.close()


class WriterLock:
    """The writers of every process on one SQLite file, queued in the kernel.

    Replicas of a service share their SQLite file. Without this, a writer that finds another
    process's write under way waits in SQLite's busy handler, which sleeps 1, 2, 5, 10 ... up
    to 100 ms between tries whatever the other's write takes (about a millisecond): the tail
    of every write. An exclusive `flock` wakes the next writer as soon as the lock is let go.
    """

    def __init__(self, path: str) -> None:
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)

    def acquire(self) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_EX)

    def release(self) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_UN)

    def __enter__(self) -> None:
        self.acquire()

    def __exit__(self, *_exc: object) -> None:
        self.release()

    def close(self) -> None:
        os.close(self._fd)


def _in_transaction(conn: Connection, unit: Callable[[Connection], T]) -> tuple[T, bool]:
    """Run `unit`, reporting whether it staged outbox events (the flag lives on the pooled
    connection, so it is cleared even when the unit fails)."""
    try:
        return unit(conn), bool(conn.info.get("outbox_dirty"))
    finally:
        conn.info.pop("outbox_dirty", None)


async def ensure_database(url: str) -> None:
    """Create the PostgreSQL database that `url` names unless it exists (local stacks)."""
    import asyncpg

    parsed = make_url(url)
    name = parsed.database or ""
    if not re.fullmatch(r"[A-Za-z0-9_]+", name):
        raise ValueError(f"refusing to create database {name!r}")
    admin = parsed.set(drivername="postgresql", database="postgres")
    conn = await asyncpg.connect(admin.render_as_string(hide_password=False))
    try:
        if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


async def _database(request: Request) -> Database:
    # async: FastAPI runs a plain `def` dependency on a worker thread, a costly hop per request
    return request.app.state.db


DatabaseDep = Annotated[Database, Depends(_database)]
