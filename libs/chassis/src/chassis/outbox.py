"""Transactional outbox: events are rows written with the change; the relay alone publishes them."""

import asyncio
import contextlib
import functools
import hashlib
import json
import logging
import os
import socket
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import MetaData, Table, and_, delete, func, insert, or_, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.dml import Insert

from .db import Database, utcnow
from .events import Envelope, routing_attributes
from .observability import OUTBOX_FAILURES, OUTBOX_LAG, OUTBOX_PENDING, OUTBOX_PUBLISHED

log = logging.getLogger("chassis.outbox")
SNS_BATCH = 10  # messages per PublishBatch call, the SNS most
# What one PublishBatch call may carry, all its messages together, is 256 KiB; this leaves
# room for their attributes.
CALL_MAX_BYTES = 240_000
MESSAGE_EVENTS = 50  # events one message carries at most
# A relay pass starts at most this often: under a burst the commits of that long gather
# and one SNS call carries them all, where a pass per commit would sign and send a request
# per event. At rest a commit is published at once (it used to wait 20 ms every time).
PACE_S = 0.05
WATCH_S = 0.02  # how often the lease holder looks for other replicas' commits (SQLite)
LEASE_CHECK_S = 0.5  # how often a relay without the lease looks whether it took it


def _row(envelope: Envelope) -> dict[str, Any]:
    return {"event_id": envelope.id, "event_type": envelope.type, "aggregate": envelope.subject,
            "payload": envelope.model_dump(mode="json"), "created_at": envelope.occurred_at,
            "attempts": 0}


@functools.cache
def _insert(outbox: Table) -> Insert:
    """The outbox's INSERT, built once per table: built per event, it took 13 of the 58 µs
    that staging an event cost."""
    return insert(outbox)


async def add_event(session: AsyncSession, outbox: Table, envelope: Envelope) -> None:
    """Stage an event in the caller's transaction; it is published only if that commits."""
    await session.execute(_insert(outbox), _row(envelope))
    session.info["outbox_dirty"] = True


def stage_event(conn: Connection, outbox: Table, envelope: Envelope) -> None:
    """`add_event` for a synchronous unit of work run by `Database.run`."""
    conn.execute(_insert(outbox), _row(envelope))
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
        While a renewal is under way the lease is still held (its time has not run out):
        `held` said False there, the relay's watch then took that for a lost lease and
        looked again only after LEASE_CHECK_S, and other processes' events waited for the
        0.5 s poll.
        """
        now = utcnow()
        if self._held_until is not None and self._held_until - now > self._ttl / 2:
            return True
        try:
            taken = await self._db.run(functools.partial(self._take, now=now))
        except BaseException:
            self._held_until = None
            raise
        self._held_until = now + self._ttl if taken else None
        return taken

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
        self._doorbell = Doorbell(db.file) if db.file is not None else None
        self.healthy = True

    def wake(self) -> None:
        """Publish soon: called after a transaction that staged events commits. While
        another process's relay holds the lease, that one is rung instead (SQLite)."""
        if self._doorbell is None or self._lease.held:
            self._wake.set()
        else:
            self._doorbell.ring()

    async def run(self) -> None:
        """Loop until cancelled; errors back off and are retried, never dropped."""
        watcher = None
        if self._doorbell is not None:  # a SQLite file
            watcher = asyncio.create_task(self._watch(self._doorbell))
        elif self._db.dialect == "postgresql":
            watcher = asyncio.create_task(self._listen())
        try:
            await self._loop()
        finally:
            if watcher is not None:
                watcher.cancel()
                await asyncio.gather(watcher, return_exceptions=True)

    async def _watch(self, doorbell: "Doorbell") -> None:
        """While holding the lease, wake on commits of other processes (other replicas):
        their own relays cannot publish while this one holds the lease, and would otherwise
        wait for the next poll. Those that ring the doorbell wake it at once; the others'
        commits are seen within WATCH_S."""
        version = self._db.commit_version()
        assert version is not None
        seen: int | None = None
        try:
            while True:
                try:
                    now = version()
                except sqlite3.Error:
                    log.warning("could not read the database's commit version", exc_info=True)
                    await asyncio.sleep(self._poll)
                    continue
                held = self._lease.held
                if held:
                    doorbell.listen(self._wake.set)
                else:
                    doorbell.stop_listening()
                if held and seen is not None and now != seen:
                    self._wake.set()
                seen = now
                # Without the lease, another replica's relay is the one to wake.
                await asyncio.sleep(WATCH_S if held else LEASE_CHECK_S)
        finally:
            doorbell.close()

    async def _listen(self) -> None:
        """PostgreSQL: while holding the lease, wake on every commit that staged events,
        another process's included (`Database.listen_for_events`); without it a replica's
        events waited for the holder's next poll."""
        listener: Any = None
        try:
            while True:
                held = self._lease.held
                if held and (listener is None or listener.is_closed()):
                    try:
                        listener = await self._db.listen_for_events(self._wake.set)
                        self._wake.set()  # commits before it listened
                    except Exception:
                        log.warning("could not listen for commits; the relay polls",
                                    exc_info=True)
                elif not held and listener is not None:
                    await listener.close()
                    listener = None
                await asyncio.sleep(LEASE_CHECK_S)
        finally:
            if listener is not None:
                await listener.close()

    async def _loop(self) -> None:
        backoff = self._poll
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
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
                await asyncio.sleep(max(0.0, started + PACE_S - loop.time()))

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
        for call in _calls(rows):
            try:
                ok, bad = await self._publish_call(call)
            except Exception as exc:  # SNS unreachable or refusing: count the attempt all the same
                ok, bad, error = [], [p.row.seq for message in call for p in message], exc
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

    async def _publish_call(self, call: list[list["_Pending"]]) -> tuple[list[int], list[int]]:
        entries = [{"Id": str(i), "Message": _message_body(message),
                    "MessageAttributes": _attributes(message)}
                   for i, message in enumerate(call)]
        response = await self._sns.publish_batch(TopicArn=self._topic_arn,
                                                 PublishBatchRequestEntries=entries)

        def seqs(outcome: str) -> list[int]:
            return [p.row.seq for e in response.get(outcome, []) for p in call[int(e["Id"])]]

        return seqs("Successful"), seqs("Failed")

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


class Doorbell:
    """Wakes the relay of another process sharing a SQLite file: the processes that commit
    events but run no relay (a service's request replicas) or whose relay lacks the lease
    ring it after each such commit, and the relay holding the lease listens. A datagram to
    a Linux abstract Unix socket named after the database file: nothing to clean up,
    released with its process, and one listener at a time. Where it cannot be rung (no
    listener, not Linux) the relay's commit watch still sees the commit within WATCH_S."""

    def __init__(self, database_file: str) -> None:
        digest = hashlib.sha256(os.path.abspath(database_file).encode()).hexdigest()[:32]
        self._address = f"\0asyncsns-outbox-{digest}"
        self._sender: socket.socket | None = None
        self._listener: socket.socket | None = None

    def ring(self) -> None:
        """Wake the listening relay, if there is one; never blocks, never raises."""
        try:
            if self._sender is None:
                self._sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self._sender.setblocking(False)
            self._sender.sendto(b"!", self._address)
        except OSError:
            pass  # no relay listens, or its queue is full and it is awake already

    def listen(self, wake: Callable[[], None]) -> bool:
        """Call `wake` on every ring from now on; False while another process listens."""
        if self._listener is not None:
            return True
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        listener.setblocking(False)
        try:
            listener.bind(self._address)
        except OSError:
            listener.close()
            return False
        asyncio.get_running_loop().add_reader(listener.fileno(), self._drain, listener, wake)
        self._listener = listener
        return True

    @staticmethod
    def _drain(listener: socket.socket, wake: Callable[[], None]) -> None:
        with contextlib.suppress(BlockingIOError):
            while listener.recv(16):
                pass
        wake()

    def stop_listening(self) -> None:
        """The lease went to another relay: leave the doorbell to it."""
        if self._listener is not None:
            asyncio.get_running_loop().remove_reader(self._listener.fileno())
            self._listener.close()
            self._listener = None

    def close(self) -> None:
        self.stop_listening()
        if self._sender is not None:
            self._sender.close()
            self._sender = None


@dataclass(frozen=True)
class _Pending:
    """An outbox row on its way out: its JSON and the attributes its message is routed by."""

    row: Any
    body: str
    size: int  # of the body in bytes, as SNS counts it
    routing: tuple[tuple[str, str], ...]

    @classmethod
    def of(cls, row: Any) -> "_Pending":
        payload = row.payload
        routing = {"event_type": payload["type"], "producer": payload["producer"],
                   **routing_attributes(payload["type"], payload["data"])}
        # The row holds the envelope as JSON already (`Envelope.model_dump(mode="json")`).
        body = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
        return cls(row, body, len(body.encode()), tuple(sorted(routing.items())))


def _calls(rows: list[Any]) -> list[list[list[_Pending]]]:
    """Split rows into PublishBatch calls of up to ten messages; a message carries up to
    `MESSAGE_EVENTS` events of one routing (type and routing attributes) in outbox order.

    Messages of one call may be delivered in any order, so within a call an aggregate's
    events all go into one message. An event that cannot join its aggregate's message (it
    is routed otherwise, or the message or call is full) waits for a later call, and so do
    the aggregate's later events; a failed call stops the pass before anything behind it is
    sent. So per-aggregate order holds as it did with one event per message.
    """
    calls: list[list[list[_Pending]]] = []
    pending = [_Pending.of(row) for row in rows]
    while pending:
        call = _Call()
        rest = [item for item in pending if not call.add(item)]
        calls.append(call.messages)
        pending = rest
    return calls


class _Call:
    """The messages of one PublishBatch call, filled in outbox order."""

    def __init__(self) -> None:
        self.messages: list[list[_Pending]] = []
        self._open: dict[tuple[tuple[str, str], ...], int] = {}  # routing -> its last message
        self._placed: dict[str, int] = {}  # aggregate -> its message
        self._waiting: set[str] = set()  # aggregates with an event left for a later call
        self._size = 0

    def add(self, item: _Pending) -> bool:
        """Put the event into a message of this call; False if it must wait for another."""
        aggregate = item.row.aggregate
        index = self._slot(item)
        if index is None or (self._size and self._size + item.size > CALL_MAX_BYTES):
            self._waiting.add(aggregate)
            return False
        if index == len(self.messages):
            self.messages.append([])
            self._open[item.routing] = index
        self.messages[index].append(item)
        self._placed[aggregate] = index
        self._size += item.size
        return True

    def _slot(self, item: _Pending) -> int | None:
        aggregate = item.row.aggregate
        if aggregate in self._waiting:
            return None
        index = self._placed.get(aggregate, self._open.get(item.routing))
        if index is not None and (self.messages[index][0].routing == item.routing
                                  and len(self.messages[index]) < MESSAGE_EVENTS):
            return index
        if aggregate in self._placed or len(self.messages) == SNS_BATCH:
            return None
        return len(self.messages)


def _message_body(message: list[_Pending]) -> str:
    """One event as its envelope; several as a JSON array of envelopes (`events_in`)."""
    if len(message) == 1:
        return message[0].body
    return "[" + ",".join(p.body for p in message) + "]"


def _attributes(message: list[_Pending]) -> dict[str, Any]:
    """The message's routing attributes; a single event's trace context too (a batch's
    events each carry their own in the envelope)."""
    values = dict(message[0].routing)
    if len(message) == 1:
        values.update(message[0].row.payload.get("trace") or {})
    return {key: {"DataType": "String", "StringValue": value} for key, value in values.items()}
