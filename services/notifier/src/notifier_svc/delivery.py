"""Push delivery that does not get lost: due jobs are sent, retried with exponential backoff and
jitter (or the provider's Retry-After), pruned when the device is gone, and moved to the DLQ
with the reason when retries run out; `redrive` puts them back.

One replica dispatches at a time (a lease in the database), so a job is never sent twice at
once. Each provider (a Web Push service's host, APNs, FCM) has a circuit breaker: after a run
of failures its jobs wait while the others go on, so one slow provider stalls nobody else.
"""

import asyncio
import json
import logging
import random
import time
from datetime import timedelta
from typing import Any, Literal
from urllib.parse import urlsplit

import aiohttp
from botocore.exceptions import BotoCoreError, ClientError
from prometheus_client import Counter, Histogram
from sqlalchemy import bindparam, delete, select, update
from sqlalchemy.engine import Connection

from chassis.db import Database, utcnow
from chassis.outbox import Lease

from . import webpush
from .models import inboxes, metadata, notifications, preferences, push_jobs, subscriptions, users
from .settings import NotifierSettings

log = logging.getLogger("notifier.delivery")
PUSHES = Counter("notifier_pushes_total", "Push attempts by outcome", ["provider", "outcome"])
PUSH_LATENCY = Histogram("notifier_push_seconds", "Time of one push request", ["provider"])
VERBS = {"follow": "followed you", "mention": "mentioned you", "reply": "replied to you",
         "like": "liked your post", "chat_message": "sent you a message",
         "call": "is calling you"}

_DUE = (select(push_jobs.c.id, push_jobs.c.attempts, push_jobs.c.event_id,
               notifications.c.id.label("notification_id"), notifications.c.type,
               notifications.c.seq, notifications.c.actor_ids, notifications.c.actor_count,
               notifications.c.subject, inboxes.c.read_seq, subscriptions.c.kind,
               subscriptions.c.endpoint, subscriptions.c.p256dh, subscriptions.c.auth,
               subscriptions.c.endpoint_arn, subscriptions.c.id.label("subscription_id"),
               preferences.c.previews, users.c.username.label("actor_username"))
        .join(notifications, notifications.c.id == push_jobs.c.notification_id)
        .join(subscriptions, subscriptions.c.id == push_jobs.c.subscription_id)
        .join(inboxes, inboxes.c.user_id == notifications.c.user_id)
        .outerjoin(preferences, preferences.c.user_id == notifications.c.user_id)
        .outerjoin(users, users.c.user_id == notifications.c.actor_ids[0].as_string())
        .where(push_jobs.c.status == "pending", push_jobs.c.next_at <= bindparam("now"))
        .order_by(push_jobs.c.next_at).limit(bindparam("limit")))
_UPDATE_JOB = update(push_jobs).where(push_jobs.c.id == bindparam("job_id"))
DISPATCH_TICK_S = 0.005


class Breaker:
    """A circuit per provider: open after `failures` failures in a row, for `open_s`."""

    def __init__(self, failures: int, open_s: float) -> None:
        self._failures, self._open_s = failures, open_s
        self._count: dict[str, int] = {}
        self._open_until: dict[str, float] = {}

    def allows(self, provider: str) -> bool:
        return time.monotonic() >= self._open_until.get(provider, 0.0)

    def record(self, provider: str, ok: bool) -> None:
        if ok:
            self._count.pop(provider, None)
            return
        self._count[provider] = self._count.get(provider, 0) + 1
        if self._count[provider] >= self._failures:
            log.warning("push provider %s failing: circuit open for %.0fs", provider,
                        self._open_s)
            self._open_until[provider] = time.monotonic() + self._open_s
            self._count[provider] = 0


def backoff(attempts: int, base_s: float, max_s: float) -> float:
    """Exponential with full jitter: uniform in [0, min(max, base * 2^attempts)]."""
    return random.uniform(0, min(max_s, base_s * 2 ** attempts))


def payload_of(job: Any) -> dict[str, Any]:
    """What a device is sent: ids only, unless the user allows previews (then who and what,
    never a message's text)."""
    body = {"id": job.notification_id, "type": job.type, "seq": job.seq,
            "actor_id": job.actor_ids[0], "actor_count": job.actor_count,
            "subject": job.subject}
    if job.previews:
        who = job.actor_username or "someone"
        others = job.actor_count - 1
        if others > 0:
            who += f" and {others} other{'s' if others > 1 else ''}"
        missed = job.type == "call" and job.subject.get("missed")
        body["title"] = f"{who} {'called you (missed)' if missed else VERBS[job.type]}"
    return body


class Dispatcher:
    def __init__(self, *, db: Database, http: aiohttp.ClientSession, sns: Any, sqs: Any,
                 settings: NotifierSettings, dlq_url: str | None) -> None:
        self.db = db
        self.http = http
        self.sns = sns
        self.sqs = sqs
        self.settings = settings
        self.dlq_url = dlq_url
        self.vapid = webpush.VapidKeys.load(settings.vapid_private_key) \
            if settings.vapid_private_key else None
        self.breaker = Breaker(settings.breaker_failures, settings.breaker_open_s)
        self._lease = Lease(db, metadata, "push-dispatcher")
        self._wake = asyncio.Event()
        self._sending: dict[int, asyncio.Task[None]] = {}  # job id -> its push under way
        self._pushing = 0  # of those, how many are still waiting for the provider

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        """Keep up to `push_concurrency` pushes under way, starting each due job as a slot
        frees (not in rounds that wait for their slowest push)."""
        try:
            while True:
                started = 0
                try:
                    if await self._lease.acquire():
                        started = await self.dispatch_due()
                except Exception:
                    log.exception("push dispatch failed; trying again")
                if started:
                    continue
                self._wake.clear()
                try:
                    async with asyncio.timeout(self.settings.push_poll_interval_s):
                        await self._wake.wait()
                except TimeoutError:
                    continue
                # Let the pushes that finish and the jobs that come meanwhile gather: one
                # query for them all rather than one each.
                await asyncio.sleep(DISPATCH_TICK_S)
        finally:
            if self._sending:
                await asyncio.wait(self._sending.values(), timeout=10)

    async def dispatch_due(self) -> int:
        """Start due jobs not already under way, as many as slots are free; how many."""
        free = self.settings.push_concurrency - self._pushing
        if free <= 0:
            return 0
        # Taken before the query: a job whose outcome is still being recorded may be read
        # as pending (its update commits after the query's snapshot), and must not go twice.
        under_way = set(self._sending)
        # A read: it does not wait for the writer (on SQLite, behind the consumers' groups).
        async with self.db.engine.connect() as conn:
            jobs = (await conn.execute(_DUE, {"now": utcnow(),
                                              "limit": free + len(under_way)})).all()
        fresh = [job for job in jobs if job.id not in under_way][:free]
        for job in fresh:
            self._pushing += 1
            task = asyncio.create_task(self._deliver(job))
            self._sending[job.id] = task
            task.add_done_callback(lambda _t, job_id=job.id: self._sending.pop(job_id, None))
        return len(fresh)

    async def _deliver(self, job: Any) -> None:
        """Push, free the slot, then record the outcome: the slot is not held while the
        write waits its turn, and the job stays under way until the write has committed."""
        try:
            outcome = await self._push(job)
        finally:
            self._pushing -= 1
            self.wake()
        await self._record(job, outcome)

    async def _push(self, job: Any) -> webpush.Outcome | Literal["read", "held"]:
        """The attempt's outcome, or why nothing was sent: read already, or held back while
        the provider's circuit is open."""
        if job.seq <= job.read_seq:
            return "read"
        provider = _provider(job)
        if not self.breaker.allows(provider):
            return "held"
        started = time.perf_counter()
        outcome = await (self._webpush(job) if job.kind == "webpush" else self._mobile(job))
        PUSH_LATENCY.labels(provider).observe(time.perf_counter() - started)
        PUSHES.labels(provider, outcome.kind).inc()
        self.breaker.record(provider, outcome.kind != "retry")
        return outcome

    async def _record(self, job: Any, outcome: webpush.Outcome | Literal["read", "held"]) -> None:
        if outcome == "read":
            await self._finish(job, "done", "read on another device before it was pushed")
        elif outcome == "held":
            await self._later(job, self.settings.breaker_open_s / 2, count=False)
        elif outcome.kind == "delivered":
            await self._finish(job, "done", None)
        elif outcome.kind == "gone":
            log.info("subscription %s is gone (%s); removing it", job.subscription_id,
                     outcome.reason)
            await self.db.run(lambda conn: _forget_device(conn, job.subscription_id))
        elif outcome.kind == "retry" and job.attempts + 1 < self.settings.push_max_attempts:
            await self._later(job, outcome.retry_after_s if outcome.retry_after_s is not None
                              else backoff(job.attempts, self.settings.push_backoff_base_s,
                                           self.settings.push_backoff_max_s),
                              reason=outcome.reason)
        else:
            await self._dead(job, outcome.reason)

    async def _webpush(self, job: Any) -> webpush.Outcome:
        if self.vapid is None:
            return webpush.Outcome(None, "failed", None, "no VAPID key configured")
        return await webpush.send(
            self.http, {"endpoint": job.endpoint, "p256dh": job.p256dh, "auth": job.auth},
            json.dumps(payload_of(job)).encode(), vapid=self.vapid,
            subject=self.settings.vapid_subject, ttl_s=self.settings.push_ttl_s,
            urgency="high" if job.type in ("call", "chat_message") else "normal",
            timeout_s=self.settings.push_timeout_s)

    async def _mobile(self, job: Any) -> webpush.Outcome:
        """APNs/FCM through the SNS platform endpoint the device registered."""
        data = payload_of(job)
        message = {"default": json.dumps(data),
                   "APNS": json.dumps({"aps": {"alert": data.get("title", ""),
                                               "content-available": 1}, "data": data}),
                   "APNS_SANDBOX": json.dumps({"aps": {"content-available": 1}, "data": data}),
                   "GCM": json.dumps({"data": data})}
        try:
            async with asyncio.timeout(self.settings.push_timeout_s):
                await self.sns.publish(TargetArn=job.endpoint_arn, MessageStructure="json",
                                       Message=json.dumps(message))
        except TimeoutError:
            return webpush.Outcome(None, "retry", None, "SNS did not answer in time")
        except ClientError as error:
            code = error.response["Error"]["Code"]
            status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in ("EndpointDisabled", "NotFound", "NotFoundException"):
                return webpush.Outcome(status, "gone", None, code)
            if code in ("Throttling", "ThrottlingException", "InternalError",
                        "InternalErrorException") or (status or 0) >= 500:
                return webpush.Outcome(status, "retry", None, code)
            return webpush.Outcome(status, "failed", None, f"{code}: {error}")
        except BotoCoreError as error:
            return webpush.Outcome(None, "retry", None, str(error))
        return webpush.Outcome(200, "delivered", None, "")

    async def _finish(self, job: Any, status: str, note: str | None) -> None:
        await self.db.run(lambda conn: conn.execute(_UPDATE_JOB, {
            "job_id": job.id, "status": status, "last_error": note}))

    async def _later(self, job: Any, delay_s: float, *, reason: str = "",
                     count: bool = True) -> None:
        next_at = utcnow() + timedelta(seconds=delay_s)
        await self.db.run(lambda conn: conn.execute(_UPDATE_JOB, {
            "job_id": job.id, "next_at": next_at, "last_error": reason or None,
            "attempts": job.attempts + (1 if count else 0)}))

    async def _dead(self, job: Any, reason: str) -> None:
        """Out of retries (or refused for good): failed, with the reason, in the DLQ."""
        log.warning("push job %s failed for good: %s", job.id, reason)
        await self.db.run(lambda conn: conn.execute(_UPDATE_JOB, {
            "job_id": job.id, "status": "failed", "attempts": job.attempts + 1,
            "last_error": reason}))
        if self.dlq_url:
            await self.sqs.send_message(QueueUrl=self.dlq_url, MessageBody=json.dumps({
                "job_id": job.id, "event_id": job.event_id, "reason": reason,
                "attempts": job.attempts + 1}))


def _provider(job: Any) -> str:
    if job.kind == "webpush":
        return urlsplit(job.endpoint).netloc
    return job.kind


def _forget_device(conn: Connection, subscription_id: str) -> None:
    conn.execute(delete(push_jobs).where(push_jobs.c.subscription_id == subscription_id))
    conn.execute(delete(subscriptions).where(subscriptions.c.id == subscription_id))


async def redrive(db: Database, sqs: Any, dlq_url: str, limit: int = 10_000) -> int:
    """Put the jobs in the DLQ back to pending, for a fresh set of attempts; returns how many."""
    moved = 0
    while moved < limit:
        messages = (await sqs.receive_message(QueueUrl=dlq_url, MaxNumberOfMessages=10,
                                              WaitTimeSeconds=1)).get("Messages", [])
        if not messages:
            return moved
        ids = [json.loads(m["Body"])["job_id"] for m in messages]
        now = utcnow()
        await db.run(lambda conn, ids=ids, now=now: conn.execute(
            update(push_jobs).where(push_jobs.c.id.in_(ids), push_jobs.c.status == "failed")
            .values(status="pending", attempts=0, next_at=now, last_error=None)))
        for message in messages:
            await sqs.delete_message(QueueUrl=dlq_url, ReceiptHandle=message["ReceiptHandle"])
        moved += len(messages)
    return moved
