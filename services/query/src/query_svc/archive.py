"""The event archive: every event, as JSON lines in S3 under year=/month=/day= partitions.

The archiver drains queues subscribed to every topic without a filter. It writes a batch as
one object and deletes the messages only after the write succeeded, so an event is never
acknowledged without being stored; a crash in between stores it twice, which replay
tolerates (it keys on the event id). A message that is not an event is left alone and ends
in the queue's DLQ.
"""

import asyncio
import logging
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Iterable
from typing import Any

import orjson
from pydantic import ValidationError

from chassis.consumer import events_in, unwrap
from chassis.events import Envelope
from chassis.observability import CONSUMED

log = logging.getLogger("query.archive")
PREFIX = "events/"


def object_key(envelope: Envelope, batch_id: str) -> str:
    """Where a batch starting with `envelope` goes: partitioned by the day it happened."""
    at = envelope.occurred_at
    return (f"{PREFIX}year={at:%Y}/month={at:%m}/day={at:%d}/"
            f"{envelope.id}-{batch_id}.jsonl")


def to_lines(envelopes: Iterable[Envelope]) -> bytes:
    return b"".join(orjson.dumps(e.model_dump(mode="json")) + b"\n" for e in envelopes)


class Archiver:
    """Moves events from one queue into the archive bucket in batches."""

    def __init__(self, *, service: str, name: str, queue_url: str, sqs: Any, s3: Any,
                 bucket: str, batch: int = 100, linger_s: float = 1.0,
                 wait_time_s: int = 20) -> None:
        self.service = service
        self.name = name
        self._queue = queue_url
        self._sqs = sqs
        self._s3 = s3
        self._bucket = bucket
        self._batch = batch
        self._linger = linger_s
        self._wait = wait_time_s

    async def run(self) -> None:
        while True:
            try:
                await self.archive_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("archiving from %s failed; retrying", self.name)
                await asyncio.sleep(2)

    async def archive_once(self) -> int:
        """Collect up to one batch, write it, delete it; returns how many events were
        archived. After a first receive that was not full the archiver lingers, then takes
        what came meanwhile in full receives: a trickle of events otherwise costs a receive
        call each (a call costs moto about a millisecond of CPU)."""
        first = min(10, self._batch)
        messages = await self._receive(self._wait, first)
        if messages and len(messages) < first:
            await asyncio.sleep(self._linger)
        while messages and len(messages) < self._batch:
            got = await self._receive(0, min(10, self._batch - len(messages)))
            if not got:
                break
            messages += got
        events, done = [], []
        for message in messages:
            try:
                events += [Envelope.model_validate(body)
                           for body in events_in(unwrap(message).body)]
                done.append(message)
            except (ValueError, ValidationError):
                log.warning("message %s on %s is not an event; leaving it for the DLQ",
                            message.get("MessageId"), self.name)
                CONSUMED.labels(self.service, self.name, "failed").inc()
        await self.write(events)
        for start in range(0, len(done), 10):
            chunk = done[start:start + 10]
            await self._sqs.delete_message_batch(QueueUrl=self._queue, Entries=[
                {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]}
                for i, m in enumerate(chunk)])
        CONSUMED.labels(self.service, self.name, "handled").inc(len(events))
        return len(events)

    async def _receive(self, wait_s: int, most: int) -> list[dict[str, Any]]:
        return (await self._sqs.receive_message(
            QueueUrl=self._queue, MaxNumberOfMessages=most,
            WaitTimeSeconds=wait_s)).get("Messages", [])

    async def write(self, events: list[Envelope]) -> None:
        """One object per day the events happened on."""
        by_day: dict[str, list[Envelope]] = defaultdict(list)
        for event in sorted(events, key=lambda e: e.id):
            by_day[f"{event.occurred_at:%Y-%m-%d}"].append(event)
        batch_id = uuid.uuid4().hex[:12]
        for day_events in by_day.values():
            await self._s3.put_object(Bucket=self._bucket,
                                      Key=object_key(day_events[0], batch_id),
                                      Body=to_lines(day_events),
                                      ContentType="application/x-ndjson")


async def read_archive(s3: Any, bucket: str, prefix: str = PREFIX) -> AsyncIterator[Envelope]:
    """Every archived event once, in id order (ids are time-ordered ULIDs)."""
    keys: list[str] = []
    paginator = s3.get_paginator("list_objects_v2")
    async for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
        keys += [item["Key"] for item in page.get("Contents", [])]
    seen: dict[str, Envelope] = {}
    for key in keys:
        body = await (await s3.get_object(Bucket=bucket, Key=key))["Body"].read()
        for line in body.splitlines():
            if line.strip():
                event = Envelope.model_validate(orjson.loads(line))
                seen.setdefault(event.id, event)
    for event_id in sorted(seen):
        yield seen[event_id]
