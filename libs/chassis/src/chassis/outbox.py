"""Transactional outbox: events are rows written with the change; the relay alone publishes them."""

import asyncio
import contextlib
import functools
import logging
import os
import socket
import sqlite3
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import MetaData, Table, and_, delete, func, insert, or_, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from .db import Database, utcnow
from .events import Envelope, routing_attributes
from .observability import OUTBOX_FAILURES, OUTBOX_LAG, OUTBOX_PENDING, OUTBOX_PUBLISHED

log = logging.getLogger("chassis.outbox")
SNS_BATCH = 10
LINGER_S = 0.02
WATCH_S = 0.02  # how often the lease holder looks for other replicas' commits (SQLite)
LEASE_CHECK_S = 0.5  # how often a relay without the lease looks whether it took it


def _row(envelope: Envelope) -> dict[str, Any]:
    return {"event_id": envelope.id, "event_type": envelope.type, "aggregate": envelope.subject,
            "payload": envelope.model_dump(mode="json"), "created_at": envelope.occurred_at,
            "attempts": 0}


async def add_event(session: AsyncSession, outbox: Table, envelope: Envelope) -> None:
    """Stage an event in the caller's transaction; it is published only if that commits."""
    await session.execute(insert(outbox), _row(envelope))
    session.info["outbox_dirty"] = True


def stage_event(conn: Connection, outbox: Table, envelope: Envelope) -> None:
    """`add_event` for a synchronous unit of work run by `Database.run`."""
    conn.execute(insert(outbox), _row(envelope))
    conn.info["outbox_dirty"] = True


class Lease:
    """A named lease in the service's own database, so one replica at a time runs a singleton."""

    def __init__(self, db: Database, metadata: MetaData, name: str, ttl_s: float = 10.0) -> None:
        self._db = db
        self._table = metadata.tables["leases"]
        self._name = name
        self._ttl = timedelta(seconds=ttl_s)
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"
        self._held_until: datetime | None = None

    async def acquire(self) -> bool:
        """Take or renew the lease; False while another holder's lease is live.

        A lease held with more than half its time left is kept without a write: the relay
        asks on every pass, and a write per pass would queue behind the service's writers.
        """
        now = utcnow()
        if self._held_until is not None and self._held_until - now > self._ttl / 2:
            return True
        self._held_until = None
        if await self._db.run(functools.partial(self._take, now=now)):
            self._held_until = now + self._ttl
            return True
        return False

    def _take(self, conn: Connection, *, now: datetime) -> bool:
        table = self._table
        taken = conn.execute(
            update(table)
            .where(table.c.name == self._name,
                   or_(table.c.holder == self.holder, table.c.expires_at < now))
            .values(holder=self.holder, expires_at=now + self._ttl)).rowcount == 1
        if taken:
            return True
        try:
            with conn.begin_nested():
                conn.execute(insert(table).values(
                    name=self._name, holder=self.holder, expires_at=now + self._ttl))
            return True
        except IntegrityError:
            return False

    @property
    def held(self) -> bool:
        """Whether this holder's lease is live, as far as it knows (no query)."""
        return self._held_until is not None and self._held_until > utcnow()

    async def release(self) -> None:
        table = self._table
        self._held_until = None
        await self._db.run(lambda conn: conn.execute(delete(table).where(
            table.c.name == self._name, table.c.holder == self.holder)))


class OutboxRelay:
    """Publishes pending rows to the service's SNS topic in order, marking each when SNS took it.

    A row whose publish fails stays pending, and so does every later row of the same aggregate,
    so per-aggregate order holds across SNS outages.
    """

    def __init__(self, *, service: str, db: Database, metadata: MetaData, sns: Any,
                 topic_arn: str, poll_interval_s: float = 0.5, batch_size: int = 100) -> None:
        self._service = service
        self._db = db
        self._outbox = metadata.tables["outbox"]
        self._lease = Lease(db, metadata, f"outbox-relay:{service}")
        self._sns = sns
        self._topic_arn = topic_arn
        self._poll = poll_interval_s
        self._batch = batch_size
        self._wake = asyncio.Event()
        self.healthy = True

    def wake(self) -> None:
        """Publish soon: called after a transaction that staged events commits."""
        self._wake.set()

    async def run(self) -> None:
        """Loop until cancelled; errors back off and are retried, never dropped."""
        version = self._db.commit_version()
        watcher = asyncio.create_task(self._watch(version)) if version else None
        try:
            await self._loop()
        finally:
            if watcher is not None:
                watcher.cancel()
                await asyncio.gather(watcher, return_exceptions=True)

    async def _watch(self, version: Callable[[], int]) -> None:
        """While holding the lease, wake on commits of other processes (other replicas):
        their own relays cannot publish while this one holds the lease, and would otherwise
        wait for the next poll."""
        seen: int | None = None
        while True:
            try:
                now = version()
            except sqlite3.Error:
                log.warning("could not read the database's commit version", exc_info=True)
                await asyncio.sleep(self._poll)
                continue
            held = self._lease.held
            if held and seen is not None and now != seen:
                self._wake.set()
            seen = now
            # Without the lease, another replica's relay is the one to wake.
            await asyncio.sleep(WATCH_S if held else LEASE_CHECK_S)

    async def _loop(self) -> None:
        backoff = self._poll
        while True:
            try:
                published = await self.publish_pending() if await self._lease.acquire() else 0
                self.healthy = True
                backoff = self._poll
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("outbox relay pass failed; retrying in %.1fs", backoff)
                OUTBOX_FAILURES.labels(self._service).inc()
                self.healthy = False
                published = 0
                backoff = min(backoff * 2, 30.0)
            if published < self._batch:
                self._wake.clear()
                # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a
                # cancellation that lands as the wake-up does, and shutdown then hangs.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(backoff):
                        await self._wake.wait()
                # Let the commits of a burst gather: one SNS call then carries many events,
                # where waking on each commit would sign and send one request per event.
                await asyncio.sleep(LINGER_S)

    async def publish_pending(self) -> int:
        """One pass: publish up to a batch of pending rows; returns how many were published."""
        table = self._outbox
        async with self._db.sessions() as session:
            rows = (await session.execute(
                select(table.c.seq, table.c.event_id, table.c.event_type, table.c.aggregate,
                       table.c.payload, table.c.created_at)
                .where(table.c.published_at.is_(None))
                .order_by(table.c.seq).limit(self._batch))).all()
            await self._record_lag(session)
        if not rows:
            return 0
        done: list[int] = []
        failed: list[int] = []
        error: Exception | None = None
        for chunk in _chunks(rows):
            try:
                ok, bad = await self._publish_chunk(chunk)
            except Exception as exc:  # SNS unreachable or refusing: count the attempt all the same
                ok, bad, error = [], [r.seq for r in chunk], exc
            done += ok
            failed += bad
            if bad:
                break
        def mark(conn: Connection) -> None:
            if done:
                conn.execute(update(table).where(table.c.seq.in_(done))
                             .values(published_at=utcnow()))
            if failed:
                conn.execute(update(table).where(table.c.seq.in_(failed))
                             .values(attempts=table.c.attempts + 1))

        await self._db.run(mark)
        OUTBOX_PUBLISHED.labels(self._service).inc(len(done))
        if failed:
            OUTBOX_FAILURES.labels(self._service).inc(len(failed))
            raise RuntimeError(f"{len(failed)} outbox events not accepted by SNS") from error
        return len(done)

    async def _publish_chunk(self, chunk: list[Any]) -> tuple[list[int], list[int]]:
        entries = [{
            "Id": str(r.seq),
            "Message": Envelope.model_validate(r.payload).model_dump_json(),
            "MessageAttributes": _attributes(r.payload),
        } for r in chunk]
        response = await self._sns.publish_batch(TopicArn=self._topic_arn,
                                                 PublishBatchRequestEntries=entries)
        ok = [int(e["Id"]) for e in response.get("Successful", [])]
        bad = [int(e["Id"]) for e in response.get("Failed", [])]
        return ok, bad

    async def _record_lag(self, session: AsyncSession) -> None:
        table = self._outbox
        count, oldest = (await session.execute(
            select(func.count(), func.min(table.c.created_at))
            .where(table.c.published_at.is_(None)))).one()
        OUTBOX_PENDING.labels(self._service).set(count)
        OUTBOX_LAG.labels(self._service).set(
            (utcnow() - oldest).total_seconds() if oldest else 0.0)

    async def purge_published(self, older_than: timedelta) -> int:
        """Delete rows published longer ago than `older_than` (the archive keeps history)."""
        table = self._outbox
        async with self._db.transaction() as session:
            result = await session.execute(delete(table).where(and_(
                table.c.published_at.is_not(None), table.c.published_at < utcnow() - older_than)))
            return result.rowcount or 0


def _chunks(rows: list[Any]) -> list[list[Any]]:
    """Split rows into SNS batches holding each aggregate at most once, in order.

    Entries of one batch call may be published in any order, so an aggregate's next event
    goes in a later call; a failed call stops the pass before anything behind it is sent.
    """
    chunks: list[list[Any]] = []
    pending = list(rows)
    while pending:
        chunk: list[Any] = []
        seen: set[str] = set()
        rest: list[Any] = []
        for row in pending:
            if row.aggregate in seen or len(chunk) == SNS_BATCH:
                rest.append(row)
            else:
                chunk.append(row)
                seen.add(row.aggregate)
        chunks.append(chunk)
        pending = rest
    return chunks


def _attributes(payload: dict[str, Any]) -> dict[str, Any]:
    attributes = {
        "event_type": {"DataType": "String", "StringValue": payload["type"]},
        "producer": {"DataType": "String", "StringValue": payload["producer"]},
    }
    extra = {**(payload.get("trace") or {}), **routing_attributes(payload["type"], payload["data"])}
    for key, value in extra.items():
        attributes[key] = {"DataType": "String", "StringValue": value}
    return attributes
