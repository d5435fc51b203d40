"""The service's own database: engine, sessions, UTC times, and the messaging tables."""

import asyncio
import contextlib
import contextvars
import dataclasses
import fcntl
import os
import re
import sqlite3
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
    inspect,
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
from sqlalchemy.schema import CreateIndex, DropIndex
from sqlalchemy.types import TypeDecorator

T = TypeVar("T")
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def _insert_for(dialect: str) -> Callable[[Table], Any]:
    """The dialect's `insert`, the one with its ON CONFLICT clauses."""
    return postgresql.insert if dialect == "postgresql" else sqlite.insert


def dialect_insert(conn: Connection, table: Table) -> Any:
    """An INSERT with its dialect's ON CONFLICT clauses (`on_conflict_do_nothing` / `_update`),
    for the SQLite or PostgreSQL connection at hand."""
    return _insert_for(conn.dialect.name)(table)


def per_dialect(build: Callable[[Callable[[Table], Any]], T]) -> Callable[[Connection], T]:
    """A statement with dialect-specific clauses, built once per dialect: `build` gets the
    dialect's `insert`. Building and cache-keying a statement on every call cost a hot
    consumer more CPU than running it."""
    built: dict[str, T] = {}

    def for_connection(conn: Connection) -> T:
        name = conn.dialect.name
        if name not in built:
            built[name] = build(_insert_for(name))
        return built[name]

    return for_connection


class DriverStatement:
    """A hot statement run once per row as its dialect's SQL, straight through the driver.

    SQLAlchemy turns each row's parameters into the driver's through Python code of its own:
    for a post fanned out to a hundred-odd timelines that cost more CPU than SQLite's
    inserting the rows. Here the statement is compiled once per dialect and the rows go to
    the driver's executemany as they are, in the statement's positional order (both
    dialects in use take positional parameters). So only for columns whose values need no
    conversion on the way in (strings, integers); `order` is checked against the compiled
    statement."""

    def __init__(self, build: Callable[[Callable[[Table], Any]], Any],
                 order: tuple[str, ...]) -> None:
        self._statement = per_dialect(build)
        self._order = order
        self._sql: dict[str, str] = {}

    def many(self, conn: Connection, rows: list[tuple[Any, ...]]) -> None:
        if not rows:
            return
        sql = self._sql.get(conn.dialect.name)
        if sql is None:
            compiled = self._statement(conn).compile(dialect=conn.dialect)
            if tuple(compiled.positiontup or ()) != self._order:
                raise ValueError(f"{compiled.positiontup} are not in the order {self._order}")
            sql = self._sql[conn.dialect.name] = str(compiled)
        conn.exec_driver_sql(sql, rows)


def _indexes_as_modelled(conn: Connection, metadata: MetaData) -> None:
    """Make each index the model has and the database lacks, and again each whose columns
    in the database differ from the model's (create_all makes a table's indexes only with
    the table)."""
    inspector = inspect(conn)
    for table in metadata.sorted_tables:
        made = {found["name"]: found["column_names"]
                for found in inspector.get_indexes(table.name)}
        for index in table.indexes:
            wanted = [column.name for column in index.columns]
            changed = (index.name in made and made[index.name] != wanted
                       and len(wanted) == len(index.expressions))  # expressions: not compared
            # IF (NOT) EXISTS: replicas starting together may both get here
            if changed:
                conn.execute(DropIndex(index, if_exists=True))
            if changed or index.name not in made:
                conn.execute(CreateIndex(index, if_not_exists=True))


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
        self._path: str | None = None
        self._queue: list[_Queued] = []
        self._committer: asyncio.Task[None] | None = None
        if self.dialect == "sqlite":
            self._sync_engine = create_engine(parsed.set(drivername="sqlite"),
                                              connect_args={"timeout": 30})
            event.listen(self._sync_engine, "connect", _sqlite_pragmas)
            # The driver's own transaction handling would let the first RELEASE SAVEPOINT
            # commit: transactions are begun here instead, taking the write lock at once.
            event.listen(self._sync_engine, "connect", _driver_leaves_transactions_alone)
            event.listen(self._sync_engine, "begin",
                         lambda conn: conn.exec_driver_sql("BEGIN IMMEDIATE"))
            self._writer = ThreadPoolExecutor(1, thread_name_prefix="sqlite-writer")
            if parsed.database and parsed.database != ":memory:":
                self._file_lock = WriterLock(f"{parsed.database}.writer-lock")
                self._path = parsed.database
        self._version_conn: sqlite3.Connection | None = None

    async def create_all(self, metadata: MetaData) -> None:
        """Create the tables that are missing and bring every table's indexes in line with
        the model: an index added later reaches a database made before it, and one whose
        columns changed is made again."""
        async with self.engine.begin() as conn:
            await conn.run_sync(metadata.create_all)
            await conn.run_sync(_indexes_as_modelled, metadata)

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
                if self.dialect == "postgresql" and session.info.get("outbox_dirty"):
                    await session.execute(_NOTIFY_EVENTS)
            if session.info.pop("outbox_dirty", False):
                self._events_committed()

    async def run(self, unit: Callable[[Connection], T]) -> T:
        """Run a synchronous unit of work in one transaction; returns what it returns.

        On SQLite units run on one writer thread, and the units that queue up while one
        group commits are committed together as the next group (group commit): each in its
        own savepoint, so one that fails leaves nothing behind and the others commit. One
        hand-off and one lock per group, where aiosqlite made several per statement (a
        follow went from ~3.5 ms to ~0.5 ms in process).
        Elsewhere a unit runs over the async driver through `run_sync`.
        """
        if self._writer is not None:
            return await self._run_grouped(unit)
        try:
            async with self.engine.begin() as conn:
                result, staged = await conn.run_sync(_in_transaction, unit)
                if staged and self.dialect == "postgresql":
                    await conn.execute(_NOTIFY_EVENTS)
        except Exception:
            # A cancellation that reaches the unit inside run_sync's greenlet comes out
            # as a driver error; the caller must still see it as a cancellation.
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise asyncio.CancelledError from None
            raise
        if staged:
            self._events_committed()
        return result

    async def _run_grouped(self, unit: Callable[[Connection], T]) -> T:
        queued = _Queued(unit, contextvars.copy_context(),
                         asyncio.get_running_loop().create_future())
        self._queue.append(queued)
        if self._committer is None or self._committer.done():
            self._committer = asyncio.create_task(self._commit_groups())
        # A caller cancelled before its group starts is left out of it; once it has started,
        # its unit commits (or not) with the group all the same.
        return await queued.future

    async def _commit_groups(self) -> None:
        assert self._write_lock is not None
        loop = asyncio.get_running_loop()
        while self._queue:
            group, self._queue = self._queue[:GROUP_MAX], self._queue[GROUP_MAX:]
            try:
                async with self._write_lock:
                    outcomes, staged = await loop.run_in_executor(
                        self._writer, self._commit_group, group)
            except BaseException as exc:
                for queued in group:
                    _settle(queued.future, exc)
                if isinstance(exc, Exception):
                    continue
                for queued in self._queue:
                    queued.future.cancel()
                raise
            for queued, outcome in zip(group, outcomes, strict=True):
                _settle(queued.future, outcome)
            if staged:
                self._events_committed()

    def _commit_group(self, group: list["_Queued"]) -> tuple[list[Any], bool]:
        """On the writer thread: one transaction; each unit's value or exception, and
        whether any unit that committed staged events.

        The units run one after the other without savepoints first (two statements less per
        unit, and nearly every group commits whole); if one fails, the transaction is rolled
        back and the group runs again with each unit in a savepoint of its own, so that the
        failing one leaves nothing behind and the others commit. A unit may therefore run
        twice; only the run that commits counts."""
        if len(group) > 1:
            try:
                return self._commit_units(group, savepoints=False)
            except _UnitFailed:
                pass
        return self._commit_units(group, savepoints=len(group) > 1)

    def _commit_units(self, group: list["_Queued"], *,
                      savepoints: bool) -> tuple[list[Any], bool]:
        assert self._sync_engine is not None
        outcomes: list[Any] = []
        staged = False
        with self._file_lock or contextlib.nullcontext(), self._sync_engine.begin() as conn:
            for queued in group:
                if queued.future.cancelled():
                    outcomes.append(None)
                    continue
                try:
                    with conn.begin_nested() if savepoints else contextlib.nullcontext():
                        value, dirty = queued.context.run(_in_transaction, conn, queued.unit)
                    outcomes.append(_Value(value))
                    staged = staged or dirty
                except Exception as exc:
                    if len(group) == 1:
                        raise
                    if not savepoints:
                        raise _UnitFailed from exc  # rolls the whole group back
                    outcomes.append(exc)
        return outcomes, staged

    @property
    def file(self) -> str | None:
        """The SQLite database file; None for other databases (and in-memory SQLite)."""
        return self._path

    def commit_version(self) -> Callable[[], int] | None:
        """On a SQLite file, a reading that changes whenever another connection commits to
        it, another process's included (`PRAGMA data_version`: a few microseconds, no table
        read); None on other databases."""
        if self._path is None:
            return None
        path = self._path

        def read() -> int:
            if self._version_conn is None:
                self._version_conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
            return self._version_conn.execute("PRAGMA data_version").fetchone()[0]

        return read

    async def listen_for_events(self, wake: Callable[[], None]) -> Any:
        """On PostgreSQL, call `wake` whenever a transaction that staged outbox events
        commits, in any process (each sends a NOTIFY on `EVENTS_CHANNEL` as it commits: it
        is delivered with the commit, and not at all on a rollback). Returns the listening
        asyncpg connection; close it to stop."""
        import asyncpg

        dsn = self.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        listener = await asyncpg.connect(dsn)
        try:
            await listener.add_listener(EVENTS_CHANNEL, lambda *_: wake())
        except BaseException:
            await listener.close()
            raise
        return listener

    def _events_committed(self) -> None:
        for hook in self.on_events_committed:
            hook()

    async def dispose(self) -> None:
        await self.engine.dispose()
        if self._writer is not None:
            self._writer.shutdown(wait=True)
        if self._sync_engine is not None:
            self._sync_engine.dispose()
        if self._file_lock is not None:
            self._file_lock.close()
        if self._version_conn is not None:
            self._version_conn.close()


GROUP_MAX = 64  # units per group commit
# PostgreSQL: the channel a transaction that staged outbox events notifies as it commits.
EVENTS_CHANNEL = "asyncsns_outbox"
_NOTIFY_EVENTS = text(f"NOTIFY {EVENTS_CHANNEL}")
SQLITE_MMAP_BYTES = 1 << 30  # address space, not memory: the OS pages the file in
SQLITE_CACHE_KIB = 16 * 1024  # per connection, filled only as pages are used


class _UnitFailed(Exception):
    """A unit of a group run without savepoints failed: the group runs again with them."""


@dataclasses.dataclass(slots=True)
class _Queued:
    unit: Callable[[Connection], Any]
    context: contextvars.Context
    future: asyncio.Future[Any]


@dataclasses.dataclass(slots=True)
class _Value:
    value: Any


def _settle(future: asyncio.Future[Any], outcome: Any) -> None:
    """Resolve a queued unit's future with its value, or its exception (or cancellation)."""
    if future.done():
        return
    if isinstance(outcome, _Value):
        future.set_result(outcome.value)
    elif isinstance(outcome, asyncio.CancelledError):
        future.cancel()
    elif isinstance(outcome, BaseException):
        future.set_exception(outcome)


def _driver_leaves_transactions_alone(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.isolation_level = None


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
    # Pages are read through a memory map rather than a read call each, and a connection
    # keeps more of them: read models are written all over their indexes (a post goes to
    # every follower's timeline), and with the defaults most of a projection's time went to
    # reading pages back in.
    cursor.execute(f"PRAGMA mmap_size={SQLITE_MMAP_BYTES}")
    cursor.execute(f"PRAGMA cache_size=-{SQLITE_CACHE_KIB}")
    cursor.close()


async def _database(request: Request) -> Database:
    # async: FastAPI runs a plain `def` dependency on a worker thread, a costly hop per request
    return request.app.state.db


DatabaseDep = Annotated[Database, Depends(_database)]
