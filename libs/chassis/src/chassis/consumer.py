"""SQS consumer: long polls, handles each message once (inbox), deletes only after commit."""

import asyncio
import functools
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from opentelemetry import trace
from pydantic import ValidationError
from sqlalchemy import MetaData, Table, insert
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from .db import Database, per_dialect, utcnow
from .events import Envelope
from .observability import CONSUMED, CONSUMER_LAG, DLQ_DEPTH, QUEUE_DEPTH
from .tracing import span_from

log = logging.getLogger("chassis.consumer")

MAX_RECEIVES = 5
# Deletes wait this long for others to share their batch call (the slot is already free).
DELETE_LINGER_S = 0.05


class _Duplicate(Exception):
    pass


@dataclass(frozen=True)
class Apply:
    """A handler as a synchronous unit of work over a Core connection (`Database.run`: on
    SQLite one hand-off to the writer thread instead of one per statement).

    `before` runs first, outside the transaction, for side effects in other stores that are
    idempotent by version (a search index): if the unit then fails, the redelivery repeats
    them harmlessly. `after` runs once the unit committed, for best-effort work such as
    dropping cached views.
    """

    unit: Callable[[Connection, Envelope], None]
    before: Callable[[Envelope], Awaitable[None]] | None = None
    after: Callable[[Envelope], Awaitable[None]] | None = None


Handler = Callable[[AsyncSession, Envelope], Awaitable[None]] | Apply


@functools.cache
def _inbox_insert(inbox: Table) -> Callable[[Connection], Any]:
    """The inbox's INSERT ... ON CONFLICT DO NOTHING, built once per table and dialect."""
    return per_dialect(lambda insert_into: insert_into(inbox).on_conflict_do_nothing())


def record_in_inbox(conn: Connection, inbox: Table, consumer: str, envelope: Envelope) -> bool:
    """Insert the event's inbox row; False if this consumer has handled it already (one
    statement: the row is skipped on conflict, no savepoint around it)."""
    row = {"consumer": consumer, "event_id": envelope.id, "event_type": envelope.type,
           "processed_at": utcnow()}
    return conn.execute(_inbox_insert(inbox)(conn), row).rowcount == 1


async def apply_event(db: Database, inbox: Table, consumer: str, handler: Handler,
                      envelope: Envelope) -> bool:
    """Apply one event once: the inbox row and the handler's changes commit together.
    Returns False for a duplicate."""
    if isinstance(handler, Apply):
        if handler.before is not None:
            await handler.before(envelope)

        def unit(conn: Connection) -> bool:
            if not record_in_inbox(conn, inbox, consumer, envelope):
                return False
            handler.unit(conn, envelope)
            return True

        applied = await db.run(unit)
        if applied and handler.after is not None:
            await handler.after(envelope)
        return applied
    try:
        async with db.transaction() as session:
            try:
                await session.execute(insert(inbox).values(
                    consumer=consumer, event_id=envelope.id, event_type=envelope.type,
                    processed_at=utcnow()))
            except IntegrityError as exc:
                raise _Duplicate from exc
            await handler(session, envelope)
    except _Duplicate:
        return False
    return True


@dataclass(frozen=True)
class Delivery:
    """One received message, unwrapped from its SNS envelope if it has one: a JSON object,
    or a JSON array of event envelopes (a batch, as the outbox relay sends under load)."""

    body: dict[str, Any] | list[Any]
    attributes: dict[str, str]


def events_in(body: dict[str, Any] | list[Any]) -> list[Any]:
    """The event bodies a message carries: its one envelope, or each of a batch's in order."""
    return body if isinstance(body, list) else [body]


Decode = Callable[[Delivery], Envelope | None]


def envelope_of(delivery: Delivery) -> Envelope:
    """The default decoding: the message is one of our event envelopes."""
    try:
        return Envelope.model_validate(delivery.body)
    except ValidationError as exc:
        raise ValueError(f"not an event envelope: {exc.error_count()} errors") from exc


def unwrap(message: dict[str, Any]) -> Delivery:
    """Read raw delivery and SNS-envelope delivery alike; raises ValueError on garbage."""
    body = json.loads(message["Body"])
    _check_body(body, "message body")
    if isinstance(body, dict) and body.get("Type") == "Notification" and "Message" in body:
        attributes = {k: v.get("Value", "")
                      for k, v in (body.get("MessageAttributes") or {}).items()}
        inner = json.loads(body["Message"])
        _check_body(inner, "SNS message")
        return Delivery(inner, attributes)
    attributes = {k: v.get("StringValue", "")
                  for k, v in (message.get("MessageAttributes") or {}).items()}
    return Delivery(body, attributes)


def _check_body(body: Any, what: str) -> None:
    if not (isinstance(body, dict) or (isinstance(body, list) and body
                                       and all(isinstance(item, dict) for item in body))):
        raise ValueError(f"{what} is neither a JSON object nor an array of them")


class Consumer:
    """Handles the events of one queue with bounded concurrency.

    The event id goes into the inbox table in the same transaction as the handler's side
    effects, so a redelivered or duplicated message changes nothing. A failure makes the
    message visible again after an exponential backoff; SQS moves it to the DLQ after
    five receives.

    `decode` turns a message into the envelope to handle (or None to drop it): our events by
    default, or another producer's messages (S3 notifications) made into envelopes. A handler
    that runs for longer than half the queue's visibility timeout keeps its message hidden.
    """

    def __init__(self, *, service: str, name: str, queue_url: str, sqs: Any, db: Database,
                 metadata: MetaData, handlers: dict[str, Handler], wait_time_s: int = 20,
                 concurrency: int = 10, retry_base_s: int = 2, max_backoff_s: int = 900,
                 visibility_timeout_s: int = 30, decode: Decode = envelope_of) -> None:
        self.service = service
        self.name = name
        self.queue_url = queue_url
        self._sqs = sqs
        self._db = db
        self._inbox = metadata.tables["inbox"]
        self._handlers = handlers
        self._wait = wait_time_s
        self._sem = asyncio.Semaphore(concurrency)
        self._concurrency = concurrency
        self._retry_base = retry_base_s
        self._max_backoff = max_backoff_s
        self._visibility = visibility_timeout_s
        self._decode = decode
        self._in_flight: set[asyncio.Task[None]] = set()
        self._busy = 0  # received messages not yet applied
        self._freed = asyncio.Event()
        self._to_delete: list[tuple[dict[str, Any], asyncio.Future[None]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self.healthy = True

    async def run(self) -> None:
        """Receive and dispatch until cancelled; in-flight messages finish first.

        A receive asks for a batch once that many slots are free (up to ten, the SQS most),
        not for the one or two that free up as messages finish: fewer, fuller receives."""
        backoff = 1.0
        batch = max(1, min(10, self._concurrency // 2))
        try:
            while True:
                free = self._concurrency - self._busy
                if free < batch:
                    self._freed.clear()
                    await self._freed.wait()
                    continue
                try:
                    response = await self._sqs.receive_message(
                        QueueUrl=self.queue_url, MaxNumberOfMessages=min(10, free),
                        WaitTimeSeconds=self._wait, MessageAttributeNames=["All"],
                        MessageSystemAttributeNames=["ApproximateReceiveCount"])
                    self.healthy = True
                    backoff = 1.0
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("receive from %s failed; retrying in %.0fs", self.name, backoff)
                    self.healthy = False
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 30.0)
                    continue
                for message in response.get("Messages", []):
                    self._busy += 1
                    task = asyncio.create_task(self._take(message))
                    self._in_flight.add(task)
                    task.add_done_callback(self._in_flight.discard)
        finally:
            if self._in_flight:
                await asyncio.wait(self._in_flight, timeout=10)
            await self._flush_deletes()

    async def handle(self, message: dict[str, Any]) -> str:
        """Handle one message; returns the outcome (handled, duplicate, ignored, failed)."""
        outcome = await self._apply(message)
        await self._settle(message, outcome)
        return outcome

    async def _take(self, message: dict[str, Any]) -> None:
        """`handle` for a received message: its slot frees once the message is applied,
        while its delete waits to go out in a batch."""
        try:
            outcome = await self._apply(message)
        finally:
            self._busy -= 1
            self._freed.set()
        await self._settle(message, outcome)

    async def _apply(self, message: dict[str, Any]) -> str:
        """Apply the message's events; its outcome is the best of theirs (handled before
        duplicate before ignored), or failed if any failed."""
        async with self._sem:
            heartbeat = asyncio.create_task(self._keep_hidden(message))
            try:
                outcomes = await self._process(message)
            except Exception:
                log.exception("handling message %s from %s failed", message.get("MessageId"),
                              self.name)
                outcomes = ["failed"]
            finally:
                heartbeat.cancel()
            for outcome in outcomes:
                CONSUMED.labels(self.service, self.name, outcome).inc()
            if outcomes == ["failed"]:
                await self._retry_later(message)
                return "failed"
        return next(o for o in ("handled", "duplicate", "ignored") if o in outcomes)

    async def _settle(self, message: dict[str, Any], outcome: str) -> None:
        if outcome != "failed":
            await self._delete(message)

    async def _process(self, message: dict[str, Any]) -> list[str]:
        """Each event's outcome. A batch's aggregates are applied side by side (their units
        share group commits), each aggregate's events one after the other; if any fails,
        the message comes back and the events already applied are then duplicates."""
        delivery = unwrap(message)
        if isinstance(delivery.body, list):
            envelopes = [envelope_of(Delivery(body, delivery.attributes))
                         for body in delivery.body]
        else:
            envelope = self._decode(delivery)
            envelopes = [] if envelope is None else [envelope]
        if not envelopes:
            return ["ignored"]
        lanes: dict[str, list[Envelope]] = {}
        for envelope in envelopes:
            lanes.setdefault(envelope.subject, []).append(envelope)

        async def lane(events: list[Envelope]) -> list[str]:
            return [await self._process_one(e, delivery) for e in events]

        if len(lanes) == 1:
            return await lane(envelopes)
        results = await asyncio.gather(*map(lane, lanes.values()), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return [outcome for result in results for outcome in result]

    async def _process_one(self, envelope: Envelope, delivery: Delivery) -> str:
        handler = self._handlers.get(envelope.type)
        if handler is None:
            log.warning("no handler for %s on %s; dropping", envelope.type, self.name)
            return "ignored"
        carrier = envelope.trace or {k: v for k, v in delivery.attributes.items()
                                     if k in ("traceparent", "tracestate")}
        with span_from(carrier, f"consume {envelope.type}", trace.SpanKind.CONSUMER):
            if not await apply_event(self._db, self._inbox, self.name, handler, envelope):
                return "duplicate"
        CONSUMER_LAG.labels(self.service, self.name).observe(
            max(0.0, (utcnow() - envelope.occurred_at).total_seconds()))
        return "handled"

    async def _delete(self, message: dict[str, Any]) -> None:
        """Acknowledge a handled message; returns once it is deleted (or that failed). The
        deletes of messages handled within a few milliseconds go out as one batch call."""
        done = asyncio.get_running_loop().create_future()
        self._to_delete.append((message, done))
        if len(self._to_delete) >= 10:
            await self._flush_deletes()
        elif self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush_soon())
        await done

    async def _flush_soon(self) -> None:
        await asyncio.sleep(DELETE_LINGER_S)
        await self._flush_deletes()

    async def _flush_deletes(self) -> None:
        while self._to_delete:
            batch, self._to_delete = self._to_delete[:10], self._to_delete[10:]
            try:
                response = await self._sqs.delete_message_batch(
                    QueueUrl=self.queue_url,
                    Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]}
                             for i, (m, _) in enumerate(batch)])
                if response.get("Failed"):
                    log.warning("%d handled messages not deleted (%s); the inbox makes their "
                                "redelivery a no-op", len(response["Failed"]),
                                response["Failed"][0].get("Code"))
            except Exception:
                log.warning("could not delete handled messages; when they return the inbox "
                            "makes them no-ops", exc_info=True)
            for _, done in batch:
                if not done.done():
                    done.set_result(None)

    async def _keep_hidden(self, message: dict[str, Any]) -> None:
        """Extend the message's visibility while its handler runs (media transcoding takes
        minutes); if the process dies, the message is back within one timeout."""
        while True:
            await asyncio.sleep(self._visibility / 2)
            try:
                await self._sqs.change_message_visibility(
                    QueueUrl=self.queue_url, ReceiptHandle=message["ReceiptHandle"],
                    VisibilityTimeout=self._visibility)
            except Exception:
                log.warning("could not extend the visibility of message %s",
                            message.get("MessageId"), exc_info=True)

    async def _retry_later(self, message: dict[str, Any]) -> None:
        receives = int(message.get("Attributes", {}).get("ApproximateReceiveCount", "1"))
        delay = min(self._retry_base * 2 ** (receives - 1), self._max_backoff)
        try:
            await self._sqs.change_message_visibility(
                QueueUrl=self.queue_url, ReceiptHandle=message["ReceiptHandle"],
                VisibilityTimeout=int(delay))
        except Exception:
            log.exception("could not delay message %s; it returns after the visibility timeout",
                          message.get("MessageId"))

    async def sample_depths(self) -> None:
        """Record the queue's and its DLQ's depth as metrics."""
        attrs = (await self._sqs.get_queue_attributes(
            QueueUrl=self.queue_url, AttributeNames=["ApproximateNumberOfMessages", "RedrivePolicy"]
        ))["Attributes"]
        QUEUE_DEPTH.labels(self.service, self.name).set(
            int(attrs.get("ApproximateNumberOfMessages", 0)))
        policy = json.loads(attrs.get("RedrivePolicy", "{}"))
        dlq_arn = policy.get("deadLetterTargetArn")
        if dlq_arn:
            dlq_name = dlq_arn.rsplit(":", 1)[1]
            dlq_url = (await self._sqs.get_queue_url(QueueName=dlq_name))["QueueUrl"]
            dlq = (await self._sqs.get_queue_attributes(
                QueueUrl=dlq_url, AttributeNames=["ApproximateNumberOfMessages"]))["Attributes"]
            DLQ_DEPTH.labels(self.service, self.name).set(
                int(dlq.get("ApproximateNumberOfMessages", 0)))


async def redrive(sqs: Any, *, dlq_url: str, queue_url: str, limit: int = 10_000) -> int:
    """Move messages from a DLQ back to its queue; returns how many moved."""
    moved = 0
    deadline = time.monotonic() + 300
    while moved < limit and time.monotonic() < deadline:
        response = await sqs.receive_message(QueueUrl=dlq_url, MaxNumberOfMessages=10,
                                             WaitTimeSeconds=1, MessageAttributeNames=["All"])
        messages = response.get("Messages", [])
        if not messages:
            break
        for message in messages:
            await sqs.send_message(QueueUrl=queue_url, MessageBody=message["Body"],
                                   MessageAttributes=message.get("MessageAttributes", {}))
            await sqs.delete_message(QueueUrl=dlq_url, ReceiptHandle=message["ReceiptHandle"])
            moved += 1
    return moved
