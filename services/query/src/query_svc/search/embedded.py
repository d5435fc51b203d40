"""EmbeddedSearch: the search engine in one SQLite file (FTS5), for one node and for tests.

sqlite3 blocks, so every statement runs on a worker thread: writes on the one writer
thread (one connection, WAL), reads on reader threads that each own a read-only
connection; WAL lets them read while the writer writes. One reader is the default: sqlite3
releases the GIL while SQLite works, so the reader and the event loop already use two
cores, while a second reader thread mostly waits — on the GIL and on the mutex that
SQLite's default build takes around every allocation for its memory statistics (on 2 cores,
32 concurrent searches ran ~1,000/s with p99 ~90 ms on two readers, ~1,500/s with p99
~30 ms on one). How a page of posts is ranked without scoring every match is in `walk`.
"""

import asyncio
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import timedelta
from typing import Any, TypeVar

from chassis.text import normalize_tag

from . import Hits, MessageDoc, MessageScope, PostDoc, UserDoc, Viewer
from . import cursor as cursors
from .analysis import index_tokens
from .fts import (
    DROP,
    KEY_BITS,
    SCHEMA,
    SCHEMA_VERSION,
    message_select,
    micros,
    post_key,
    post_plan,
    user_select,
)
from .query import parse_message_query, parse_post_query, parse_user_query
from .ranking import RECENCY_HALF_LIFE
from .walk import HitCounts, top_posts

T = TypeVar("T")
log = logging.getLogger("query_svc.search")

GROUP_MAX = 64  # index writes per group commit
_POST_KEY = (float, int, str)  # score, created_us, post_id
_USER_KEY = (int, int, str, str)  # tier, followers_count, username, user_id
_MESSAGE_KEY = (int,)  # row key


class _Workers:
    """Threads that each own one sqlite3 connection, opened on first use."""

    def __init__(self, threads: int, connect: Callable[[], sqlite3.Connection], name: str):
        self._connect = connect
        self._local = threading.local()
        self._opened: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix=name)

    async def run(self, work: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(
            self._pool, self._call, work, args)

    def _call(self, work: Callable[..., T], args: tuple[Any, ...]) -> T:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self._connect()
            with self._lock:
                self._opened.append(conn)
        return work(conn, *args)

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        for conn in self._opened:
            conn.close()


@contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """A transaction, or within a group's (`_run_group`) a savepoint of its own."""
    if conn.in_transaction:
        conn.execute("SAVEPOINT write")
        try:
            yield
        except BaseException:
            conn.execute("ROLLBACK TO write")
            conn.execute("RELEASE write")
            raise
        conn.execute("RELEASE write")
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


_Write = tuple[Callable[..., Any], tuple[Any, ...], "asyncio.Future[Any]"]


def _run_group(conn: sqlite3.Connection, group: list[_Write]) -> list[tuple[bool, Any]]:
    """On the writer thread: the writes of a group in one transaction, each in a savepoint,
    so that one failing leaves the others; each one's (ok, value or exception)."""
    outcomes: list[tuple[bool, Any]] = []
    with _transaction(conn):
        for work, args, _ in group:
            try:
                outcomes.append((True, work(conn, *args)))
            except Exception as exc:
                outcomes.append((False, exc))
    return outcomes


class EmbeddedSearch:
    """SQLite FTS5 behind the `SearchEngine` interface; `path` is a file (or ":memory:")."""

    def __init__(self, path: str, *, readers: int = 1,
                 half_life: timedelta = RECENCY_HALF_LIFE) -> None:
        self._path = path
        self._readers_count = readers
        self._half_life_us = half_life / timedelta(microseconds=1)
        self._hit_counts = HitCounts()
        self._writer: _Workers | None = None
        self._readers: _Workers | None = None
        self._queued: list[_Write] = []
        self._committer: asyncio.Task[None] | None = None

    def _connect(self, *, readonly: bool) -> sqlite3.Connection:
        conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA busy_timeout = 5000")
        conn.execute("PRAGMA cache_size = -65536")  # 64 MiB per connection
        conn.execute("PRAGMA mmap_size = 1073741824")
        if readonly:
            conn.execute("PRAGMA query_only = 1")
        else:
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")  # an index is rebuilt from events
        return conn

    async def start(self) -> None:
        self._writer = _Workers(1, lambda: self._connect(readonly=False), "search-write")
        await self._writer.run(_create_schema, self._path)
        if self._path == ":memory:" or self._path.startswith("file::memory:"):
            self._readers = self._writer  # one private database: its one connection reads too
        else:
            self._readers = _Workers(self._readers_count, lambda: self._connect(readonly=True),
                                     "search-read")

    async def close(self) -> None:
        for workers in {id(w): w for w in (self._readers, self._writer) if w}.values():
            await asyncio.to_thread(workers.close)
        self._writer = self._readers = None

    async def reset(self) -> None:
        await self._write(lambda conn: conn.executescript(DROP + SCHEMA))

    async def refresh(self) -> None:
        """Nothing to do: a committed write is visible to the next read."""

    async def _write(self, work: Callable[..., T], *args: Any) -> T:
        if self._writer is None:
            raise RuntimeError("EmbeddedSearch.start() was not awaited")
        return await self._writer.run(work, *args)

    async def _write_grouped(self, work: Callable[..., T], *args: Any) -> T:
        """`_write` for the index's writes, in group commits: those that arrive while one
        commits go together in the next (a commit costs more than a document's writes)."""
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queued.append((work, args, future))
        if self._committer is None or self._committer.done():
            self._committer = asyncio.create_task(self._commit_queued())
        return await future

    async def _commit_queued(self) -> None:
        while self._queued:
            group, self._queued = self._queued[:GROUP_MAX], self._queued[GROUP_MAX:]
            try:
                outcomes = await self._write(_run_group, group)
            except Exception as exc:
                outcomes = [(False, exc)] * len(group)
            except BaseException:  # cancelled (shutting down): nobody is left waiting
                for _, _, future in group + self._queued:
                    future.cancel()
                raise
            for (_, _, future), (ok, value) in zip(group, outcomes, strict=True):
                if future.done():
                    continue
                if ok:
                    future.set_result(value)
                else:
                    future.set_exception(value)

    async def _read(self, work: Callable[..., T], *args: Any) -> T:
        if self._readers is None:
            raise RuntimeError("EmbeddedSearch.start() was not awaited")
        return await self._readers.run(work, *args)

    # --- writes ---------------------------------------------------------------------------

    async def index_post(self, doc: PostDoc) -> None:
        await self._write_grouped(_index_post, doc)

    async def delete_post(self, post_id: str, version: int) -> None:
        await self._write_grouped(_delete_post, post_id, version)

    async def index_user(self, doc: UserDoc) -> None:
        await self._write_grouped(_index_user, doc)

    async def index_message(self, doc: MessageDoc) -> None:
        await self._write_grouped(_index_message, doc)

    # --- reads ----------------------------------------------------------------------------

    async def search_posts(self, q: str, viewer: Viewer, *, limit: int,
                           cursor: str | None) -> Hits:
        cursors.check_limit(limit)
        query = parse_post_query(q)
        position = cursors.decode("posts", q, cursor, _POST_KEY, anchored=True)
        anchor = position.anchor if position else time.time_ns() // 1000
        plan = post_plan(query, viewer, anchor_us=anchor, limit=limit + 1,
                         half_life_us=self._half_life_us,
                         after=position.key if position else None)
        rows = await self._read(top_posts, plan, limit + 1, anchor, self._half_life_us,
                                self._hit_counts)
        next_cursor = None
        if len(rows) > limit:
            rows = rows[:limit]
            last = rows[-1]
            next_cursor = cursors.encode("posts", q, cursors.Position(
                [last[1], last[2], last[0]], anchor))
        return Hits([row[0] for row in rows], next_cursor)

    async def search_users(self, q: str, viewer: Viewer, *, limit: int,
                           cursor: str | None) -> Hits:
        cursors.check_limit(limit)
        query = parse_user_query(q)
        position = cursors.decode("users", q, cursor, _USER_KEY, anchored=False)
        sql, params = user_select(query, viewer, limit=limit + 1,
                                  after=position.key if position else None)
        rows = await self._read(_fetch, sql, params)
        next_cursor = None
        if len(rows) > limit:
            rows = rows[:limit]
            last = rows[-1]
            next_cursor = cursors.encode("users", q, cursors.Position(
                [last[1], last[2], last[3], last[0]]))
        return Hits([row[0] for row in rows], next_cursor)

    async def search_messages(self, q: str, scope: MessageScope, *, limit: int,
                              cursor: str | None) -> Hits:
        cursors.check_limit(limit)
        query = parse_message_query(q)
        position = cursors.decode("messages", q, cursor, _MESSAGE_KEY, anchored=False)
        if not scope.channel_ids or scope.sender_ids == frozenset():
            return Hits([], None)
        sql, params = message_select(query, scope, limit=limit + 1,
                                     after=position.key[0] if position else None)
        rows = await self._read(_fetch, sql, params)
        next_cursor = None
        if len(rows) > limit:
            rows = rows[:limit]
            next_cursor = cursors.encode("messages", q, cursors.Position([rows[-1][1]]))
        return Hits([row[0] for row in rows], next_cursor)


# --- work done on the threads ---------------------------------------------------------------

def _create_schema(conn: sqlite3.Connection, path: str) -> None:
    """Create the tables; an index laid out by other code (row keys and counts the ranking
    walk relies on) is dropped, since reading it would rank wrongly: replay the events."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    tables = conn.execute("SELECT count(*) FROM sqlite_master WHERE type = 'table'").fetchone()[0]
    if tables and version != SCHEMA_VERSION:
        log.warning("search index %s has layout %s, not %s: rebuilt empty, replay events "
                    "to fill it", path, version, SCHEMA_VERSION)
        conn.executescript(DROP)
    conn.executescript(SCHEMA)


def _fetch(conn: sqlite3.Connection, sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
    return conn.execute(sql, params).fetchall()


def _stored(conn: sqlite3.Connection, table: str, key: str, value: str) -> tuple[int, int] | None:
    """(row id, version) of a stored document."""
    return conn.execute(f"SELECT id, version FROM {table} WHERE {key} = ?", (value,)).fetchone()


def _count_live(conn: sqlite3.Connection, change: int) -> None:
    """Keep the totals the ranking walk's bound relies on (see `walk`)."""
    conn.execute("UPDATE counts SET value = value + ? WHERE name = 'live_posts'", (change,))
    conn.execute("UPDATE counts SET value = value + 1 WHERE name = ?",
                 ("inserted" if change > 0 else "deleted",))


def _free_key(conn: sqlite3.Connection, table: str, created_us: int) -> int:
    """A row key in the document's millisecond bucket (a later one when it is full: a key may
    be later than its creation time, never earlier, which is all the ranking walk needs)."""
    key = post_key(created_us)
    while True:
        top = conn.execute(f"SELECT max(id) FROM {table} WHERE id >= ? AND id < ?",
                           (key, key + (1 << KEY_BITS))).fetchone()[0]
        if top is None:
            return key
        if top + 1 < key + (1 << KEY_BITS):
            return top + 1
        key += 1 << KEY_BITS


def _drop_text(conn: sqlite3.Connection, stored: tuple[int, int, int]) -> None:
    if not stored[2]:
        conn.execute("DELETE FROM post_text WHERE rowid = ?", (stored[0],))
        _count_live(conn, -1)


def _index_post(conn: sqlite3.Connection, doc: PostDoc) -> None:
    text = f"{doc.content_warning}\n{doc.text}" if doc.content_warning else doc.text
    tags = " ".join(dict.fromkeys(normalize_tag(t) for t in doc.hashtags))
    created_us = micros(doc.created_at)
    with _transaction(conn):
        stored = conn.execute("SELECT id, version, deleted FROM posts WHERE post_id = ?",
                              (doc.post_id,)).fetchone()
        if stored and stored[1] >= doc.version:
            return
        if stored:  # a new version gets a new row: its key must follow its creation time
            _drop_text(conn, stored)
            conn.execute("DELETE FROM posts WHERE id = ?", (stored[0],))
        key = _free_key(conn, "posts", created_us)
        conn.execute("""INSERT INTO posts (id, post_id, version, deleted, author_id, visibility,
                        mentions, has_media, created_us) VALUES (?, ?, ?, 0, ?, ?, ?, ?, ?)""",
                     (key, doc.post_id, doc.version, doc.author_id, doc.visibility,
                      json.dumps([m.lower() for m in doc.mentions]), int(doc.has_media),
                      created_us))
        conn.execute("INSERT INTO post_text (rowid, body, tags, author) VALUES (?, ?, ?, ?)",
                     (key, index_tokens(text), tags, doc.author_username.lower()))
        _count_live(conn, 1)


def _delete_post(conn: sqlite3.Connection, post_id: str, version: int) -> None:
    """Leave a tombstone with the version, so that an older write arriving late is ignored."""
    with _transaction(conn):
        stored = conn.execute("SELECT id, version, deleted FROM posts WHERE post_id = ?",
                              (post_id,)).fetchone()
        if stored and stored[1] >= version:
            return
        if stored:
            _drop_text(conn, stored)
            conn.execute("""UPDATE posts SET version = ?, deleted = 1, author_id = NULL,
                            visibility = NULL, mentions = NULL, has_media = NULL,
                            created_us = NULL WHERE id = ?""", (version, stored[0]))
        else:  # never seen: a key below every real one, out of the way of the ranking walk
            conn.execute("""INSERT INTO posts (id, post_id, version, deleted)
                            SELECT min(0, coalesce(min(id), 0)) - 1, ?, ?, 1 FROM posts""",
                         (post_id, version))


def _index_user(conn: sqlite3.Connection, doc: UserDoc) -> None:
    username = doc.username.lower()
    with _transaction(conn):
        stored = _stored(conn, "users", "user_id", doc.user_id)
        if stored and stored[1] >= doc.version:
            return
        if stored:
            row_id = stored[0]
            conn.execute("""UPDATE users SET version = ?, username = ?, followers_count = ?
                            WHERE id = ?""", (doc.version, username, doc.followers_count, row_id))
            conn.execute("DELETE FROM user_text WHERE rowid = ?", (row_id,))
        else:
            row_id = conn.execute("""INSERT INTO users (user_id, version, username,
                                     followers_count) VALUES (?, ?, ?, ?)""",
                                  (doc.user_id, doc.version, username,
                                   doc.followers_count)).lastrowid
        conn.execute("""INSERT INTO user_text (rowid, username, display_name, bio)
                        VALUES (?, ?, ?, ?)""",
                     (row_id, username, index_tokens(doc.display_name), index_tokens(doc.bio)))


def _index_message(conn: sqlite3.Connection, doc: MessageDoc) -> None:
    """Keep the newest version; a deleted message keeps its row (and version) without text.
    A message's creation time never changes, so its row key stays."""
    with _transaction(conn):
        stored = conn.execute("SELECT id, version, deleted FROM messages WHERE message_id = ?",
                              (doc.message_id,)).fetchone()
        if stored and stored[1] >= doc.version:
            return
        if stored:
            key = stored[0]
            if not stored[2]:
                conn.execute("DELETE FROM message_text WHERE rowid = ?", (key,))
            conn.execute("UPDATE messages SET version = ?, deleted = ? WHERE id = ?",
                         (doc.version, int(doc.deleted), key))
        else:
            created_us = micros(doc.created_at)
            key = _free_key(conn, "messages", created_us)
            conn.execute("""INSERT INTO messages (id, message_id, version, deleted, channel_id,
                            sender_id, created_us) VALUES (?, ?, ?, ?, ?, ?, ?)""",
                         (key, doc.message_id, doc.version, int(doc.deleted), doc.channel_id,
                          doc.sender_id, created_us))
        if not doc.deleted:
            conn.execute("INSERT INTO message_text (rowid, body, channel) VALUES (?, ?, ?)",
                         (key, index_tokens(doc.text), doc.channel_id))
