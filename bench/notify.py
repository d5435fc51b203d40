"""`python -m bench.notify`: event-to-push latency of the notifier under a steady event rate.

The notifier runs as its own process (uvicorn --factory, SQLite, as the local stack runs it)
against a private moto server (`stack.motoserver`, its own process) and a private
redis-server. `--users` users, known to it from their `profile.created` events, each register
one Web Push subscription whose endpoint is a receiver in this process: it notes when each
push arrived and answers 201 after `--receiver-delay-ms`, to any number at once.

Then `call.ringing` events, each from a random user to one other, go to `notifier-call` at a
steady `--rate` for `--duration` seconds. A call never groups with another notification, so
each event makes exactly one notification and one push. Its call id is "run<n>:<ns>", the
event's number and the instant it fell due (it goes out in a batch of up to ten, as a relay
sends them); after the run each push is decrypted with its subscription's key to read the
call id back, which gives the latency and shows any push missing, doubled or sent to the
wrong device.

Target on 2 cores: event to push p50 <= 200 ms, p99 <= 1 s, nothing missing or doubled.
A line a second shows the call queue's depth, the push jobs pending and each process's share
of a core; at the end the latency is split where the notification row was written.
"""

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import sqlite3
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aioboto3
import http_ece
import httpx
from botocore.config import Config
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jose import jwt
from prometheus_client.parser import text_string_to_metric_families
from ulid import ULID

from chassis.db import utcnow
from chassis.events import Envelope, new_event
from chassis.ports import free_port
from chassis.testing import FAKE_AWS, REGION, CognitoPool, aws_client, live
from notifier_svc.settings import NotifierSettings
from notifier_svc.webpush import b64url_encode
from profile_svc.events import ProfileCreated
from stack.processes import Child, answers_ok, stop, wait_until
from stack.vapid import kept_vapid_keys

from .chat_procs import TICKS_PER_S, cpu_seconds

TARGET = "target p50 <= 200 ms, p99 <= 1 s"
QUEUES = ("notifier-profile", "notifier-call", "notifier-push-dlq")
CONSUMED = ("notifier-profile", "notifier-call")
PASSWORD = "Bench pass 1!"
IN_FLIGHT = 16  # send_message_batch calls at once
BATCH_TICK_S = 0.01
IDLE_S = 10.0  # after the last send, stop waiting once no push came for this long
WARM_UP = 50


# --- the servers --------------------------------------------------------------------------

@dataclass
class Stack:
    """moto, redis-server and the notifier, each its own process, with what reaches them."""

    moto_url: str
    notifier_url: str
    db_path: Path
    settings: NotifierSettings
    children: dict[str, Child]

    def pids(self) -> dict[str, list[int]]:
        """The processes' ids by role (the notifier's replicas together)."""
        found: dict[str, list[int]] = {}
        for name, child in self.children.items():
            if child.proc:
                found.setdefault(name.split("-")[0], []).append(child.proc.pid)
        return found

    def log_tail(self) -> str:
        child = self.children["notifier"]
        return f"{child.log_path}:\n{child.log_tail(20)}"


def _child(workdir: Path, name: str, argv: list[str], env: dict[str, str]) -> Child:
    child = Child(name, argv, env, workdir / f"{name}.log", workdir / f"{name}.pid")
    child.start()
    return child


def _environment(settings: NotifierSettings) -> dict[str, str]:
    """The settings given explicitly, as the environment the notifier process reads."""
    env = {}
    for name in settings.model_fields_set:
        value = getattr(settings, name)
        env[name.upper()] = (json.dumps(value) if isinstance(value, tuple | list | dict)
                             else str(value).lower() if isinstance(value, bool) else str(value))
    return env


def _provision(moto_url: str) -> CognitoPool:
    """The notifier's queues and a user pool."""
    sqs = aws_client("sqs", moto_url)
    for queue in QUEUES:
        sqs.create_queue(QueueName=queue)
    idp = aws_client("cognito-idp", moto_url)
    pool_id = idp.create_user_pool(PoolName="bench-notify")["UserPool"]["Id"]
    client_id = idp.create_user_pool_client(
        UserPoolId=pool_id, ClientName="bench",
        ExplicitAuthFlows=["ALLOW_USER_PASSWORD_AUTH", "ALLOW_REFRESH_TOKEN_AUTH"],
    )["UserPoolClient"]["ClientId"]
    return CognitoPool(moto_url, pool_id, client_id)


@contextlib.contextmanager
def servers(workdir: Path, overrides: dict[str, str], replicas: int = 1) -> Iterator[Stack]:
    """Start redis-server and moto, make the queues and a user pool, start the notifier's
    replicas on them (one SQLite file, as the launcher runs replicas); stop them all
    afterwards (the notifier first)."""
    if not shutil.which("redis-server"):
        raise SystemExit("redis-server is not installed: run `make deps`")
    children: dict[str, Child] = {}
    try:
        redis_port = free_port()
        children["redis"] = _child(workdir, "redis", [
            "redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no"], dict(os.environ))
        port_file = workdir / "moto.port"
        children["moto"] = _child(workdir, "moto", [
            sys.executable, "-m", "stack.motoserver", "--port", "0", "--port-file", str(port_file),
            "--state", str(workdir / "moto.state"), "--save-interval", "86400"], dict(os.environ))
        wait_until(port_file.exists, "moto's port", time.monotonic() + 60,
                   list(children.values()))
        moto_url = f"http://127.0.0.1:{port_file.read_text()}"
        pool = _provision(moto_url)
        private, public = kept_vapid_keys(workdir / "vapid.json")
        db_path = workdir / "notifier.db"
        settings = NotifierSettings(
            database_url=f"sqlite+aiosqlite:///{db_path}",
            redis_url=f"redis://127.0.0.1:{redis_port}/0", aws_endpoint_url=moto_url,
            aws_region=REGION, **FAKE_AWS, consume_queues=CONSUMED, **pool.env(),
            vapid_private_key=private, vapid_public_key=public,
            allow_private_push_endpoints=True, log_json=False, log_level="WARNING",
            **{name.lower(): value for name, value in overrides.items()})
        urls = []
        for replica in range(1, replicas + 1):
            name, port = "notifier" if replica == 1 else f"notifier-{replica}", free_port()
            children[name] = _child(workdir, name, [
                sys.executable, "-m", "uvicorn", "--factory", "notifier_svc.main:build_app",
                "--host", "127.0.0.1", "--port", str(port), "--no-access-log"],
                {**os.environ, **_environment(settings)})
            urls.append(f"http://127.0.0.1:{port}")
            wait_until(answers_ok(f"{urls[-1]}/readyz"), f"{name} to be ready",
                       time.monotonic() + 60, list(children.values()))
        yield Stack(moto_url, urls[0], db_path, settings, children)
    finally:
        stop([children.pop(n) for n in list(children) if n.startswith("notifier")])
        stop(list(children.values())[::-1], deadline_s=30)


# --- users and their browsers -------------------------------------------------------------

@dataclass
class Device:
    """A user and their browser's side of a Web Push subscription."""

    user_id: str
    username: str
    token: str
    key: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP256R1()))
    auth: bytes = field(default_factory=lambda: os.urandom(16))

    def subscription(self, endpoint: str) -> dict[str, Any]:
        public = self.key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
        return {"kind": "webpush", "endpoint": endpoint,
                "keys": {"p256dh": b64url_encode(public), "auth": b64url_encode(self.auth)}}

    def read(self, body: bytes) -> dict[str, Any]:
        return json.loads(http_ece.decrypt(body, private_key=self.key, auth_secret=self.auth,
                                           version="aes128gcm"))


async def sign_up(idp: Any, settings: NotifierSettings, count: int) -> list[Device]:
    """`count` confirmed Cognito users, logged in."""
    run, limit = ULID().hex[-6:], asyncio.Semaphore(8)

    async def one(i: int) -> Device:
        username = f"nb_{run}_{i}"
        async with limit:
            await idp.sign_up(ClientId=settings.cognito_client_id, Username=username,
                              Password=PASSWORD, UserAttributes=[
                                  {"Name": "email", "Value": f"{username}@example.com"}])
            await idp.admin_confirm_sign_up(UserPoolId=settings.cognito_user_pool_id,
                                            Username=username)
            tokens = (await idp.initiate_auth(
                ClientId=settings.cognito_client_id, AuthFlow="USER_PASSWORD_AUTH",
                AuthParameters={"USERNAME": username, "PASSWORD": PASSWORD},
            ))["AuthenticationResult"]
        token = tokens["AccessToken"]
        return Device(jwt.get_unverified_claims(token)["sub"], username, token)

    return await asyncio.gather(*(one(i) for i in range(count)))


async def introduce(sqs: Any, devices: list[Device]) -> None:
    """Each user's `profile.created` on the notifier's profile queue; returns once handled."""
    url = (await sqs.get_queue_url(QueueName="notifier-profile"))["QueueUrl"]
    for start in range(0, len(devices), 10):
        await sqs.send_message_batch(QueueUrl=url, Entries=[
            {"Id": str(n), "MessageBody": new_event(ProfileCreated(
                user_id=d.user_id, username=d.username, display_name=d.username,
                created_at=utcnow()), producer="profile", subject=f"user:{d.user_id}",
                actor=d.user_id).model_dump_json()}
            for n, d in enumerate(devices[start:start + 10])])
    while True:
        if sum(await queue_depth(sqs, url)) == 0:
            return
        await asyncio.sleep(0.2)


async def subscribe(base_url: str, devices: list[Device], receiver_url: str) -> None:
    """One Web Push subscription per user, its endpoint naming the user's index."""
    limit = asyncio.Semaphore(16)

    async def one(http: httpx.AsyncClient, i: int, device: Device) -> None:
        async with limit:
            response = await http.post(
                "/api/notifications/subscriptions", json=device.subscription(
                    f"{receiver_url}/push/{i}"),
                headers={"Authorization": f"Bearer {device.token}"})
        if response.status_code != 201:
            raise RuntimeError(f"subscribing failed: {response.status_code} {response.text}")

    async with httpx.AsyncClient(base_url=base_url, timeout=30) as http:
        await asyncio.gather(*(one(http, i, d) for i, d in enumerate(devices)))


async def queue_depth(sqs: Any, url: str) -> tuple[int, int]:
    """(visible, in flight) messages on the queue."""
    attributes = (await sqs.get_queue_attributes(QueueUrl=url, AttributeNames=[
        "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]))["Attributes"]
    return (int(attributes["ApproximateNumberOfMessages"]),
            int(attributes["ApproximateNumberOfMessagesNotVisible"]))


# --- the push service and the load -------------------------------------------------------

class Receiver:
    """A push service on loopback: notes when each request arrived (its body read), then
    answers 201 after the delay, to every request at once."""

    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s
        self.got: list[tuple[int, str, bytes]] = []  # (arrived ns, path, body)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        self.got.append((time.time_ns(), scope["path"], body))
        await asyncio.sleep(self.delay_s)
        await send({"type": "http.response.start", "status": 201, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def until(self, expected: int, idle_s: float, limit_s: float) -> None:
        """Until `expected` pushes came (and a second more for doubles), none came for
        `idle_s`, or `limit_s` passed."""
        seen, last = len(self.got), time.monotonic()
        deadline = last + limit_s
        while (len(self.got) < expected and time.monotonic() - last < idle_s
               and time.monotonic() < deadline):
            await asyncio.sleep(0.1)
            if len(self.got) != seen:
                seen, last = len(self.got), time.monotonic()
        await asyncio.sleep(1)


@dataclass
class Sent:
    """The events sent so far: number -> (send time in ns, the callee's index)."""

    events: dict[int, tuple[int, int]] = field(default_factory=dict)
    errors: int = 0
    seconds: float = 0.0


async def publish(sqs: Any, devices: list[Device], sent: Sent, *, rate: float, count: int,
                  tag: str, rng: random.Random) -> None:
    """`count` call.ringing events at a steady `rate` a second, each to one callee; `sent`
    fills as they go. As an outbox relay does, the events due go out in batches of up to ten
    (SNS PublishBatch, SQS SendMessageBatch) every `BATCH_TICK_S`; each event's time is the
    instant it fell due, so waiting for its batch counts in its latency."""
    url = (await sqs.get_queue_url(QueueName="notifier-call"))["QueueUrl"]
    slots = asyncio.Semaphore(IN_FLIGHT)
    loop = asyncio.get_running_loop()
    began, began_ns = loop.time(), time.time_ns()

    def entry(i: int) -> dict[str, str]:
        callee = rng.randrange(len(devices))
        caller = devices[(callee + rng.randrange(1, len(devices))) % len(devices)]
        due_ns = began_ns + int(i / rate * 1e9)
        call_id = f"{tag}{i}:{due_ns}"
        sent.events[i] = (due_ns, callee)
        envelope = Envelope(
            id=str(ULID()), type="call.ringing", version=1, occurred_at=utcnow(),
            producer="call", actor=caller.user_id, subject=f"call:{call_id}",
            data={"call_id": call_id, "caller_id": caller.user_id,
                  "callee_ids": [devices[callee].user_id], "media": "audio"})
        return {"Id": str(i), "MessageBody": envelope.model_dump_json()}

    async def batch(entries: list[dict[str, str]]) -> None:
        try:
            answer = await sqs.send_message_batch(QueueUrl=url, Entries=entries)
            for failed in answer.get("Failed", []):
                sent.events.pop(int(failed["Id"]), None)
                sent.errors += 1
        finally:
            slots.release()

    tasks = []
    i = 0
    while i < count:
        due = min(count, int((loop.time() - began) * rate) + 1)
        while i < due:
            entries = [entry(n) for n in range(i, min(due, i + 10))]
            i += len(entries)
            await slots.acquire()
            tasks.append(asyncio.create_task(batch(entries)))
        await asyncio.sleep(BATCH_TICK_S)
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    for outcome in outcomes:
        if isinstance(outcome, Exception):
            sent.errors += 1
    sent.seconds = loop.time() - began


# --- watching it --------------------------------------------------------------------------

def machine_cpu() -> tuple[float, float]:
    """(busy, all) CPU seconds of the whole machine since boot, every core together."""
    ticks = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return (sum(ticks) - ticks[3] - ticks[4]) / TICKS_PER_S, sum(ticks) / TICKS_PER_S


def pending_jobs(db_path: Path) -> int:
    with contextlib.closing(sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)) as conn:
        return conn.execute("SELECT count(*) FROM push_jobs WHERE status = 'pending'"
                            ).fetchone()[0]


class Meter:
    """A line a second while the load runs, and what each process's CPU did in all, above
    what it uses when idle."""

    NAMES = ("notifier", "moto", "bench", "redis")

    def __init__(self, stack: Stack, sqs: Any, call_url: str,
                 progress: Callable[[], tuple[int, int]]) -> None:
        self.stack, self.sqs, self.call_url, self.progress = stack, sqs, call_url, progress
        self.pids = {**stack.pids(), "bench": [os.getpid()]}
        self.idle = dict.fromkeys(self.NAMES, 0.0)
        self.started, self.cpu, self.machine = time.monotonic(), self._cpu(), machine_cpu()
        self.most_queued = self.most_pending = 0

    def _cpu(self) -> dict[str, float]:
        return {name: cpu_seconds(self.pids[name]) for name in self.NAMES}

    async def measure_idle(self, seconds: float = 3.0) -> None:
        """Each process's share of a core with no load (long polls, timers)."""
        before, began = self._cpu(), time.monotonic()
        await asyncio.sleep(seconds)
        wall = time.monotonic() - began
        self.idle = {n: (c - before[n]) / wall for n, c in self._cpu().items()}
        self.started, self.cpu, self.machine = time.monotonic(), self._cpu(), machine_cpu()

    async def run(self) -> None:
        print("each second: events sent, pushes received, messages on notifier-call, push jobs "
              "due, CPU of each process (% of a core), the machine's busy share of all cores")
        print(f"{'s':>4} {'sent/s':>7} {'pushed/s':>8} {'queued':>7} {'in flight':>9} "
              f"{'jobs due':>8} " + " ".join(f"{n:>8}" for n in self.NAMES) + f" {'machine':>8}")
        then, cpu, machine, counts = time.monotonic(), self.cpu, self.machine, self.progress()
        while True:
            await asyncio.sleep(1)
            visible, in_flight = await queue_depth(self.sqs, self.call_url)
            pending = await asyncio.to_thread(pending_jobs, self.stack.db_path)
            now, cpu_now, machine_now, counts_now = (time.monotonic(), self._cpu(),
                                                     machine_cpu(), self.progress())
            wall = now - then
            self.most_queued = max(self.most_queued, visible + in_flight)
            self.most_pending = max(self.most_pending, pending)
            busy = (machine_now[0] - machine[0]) / max(machine_now[1] - machine[1], 1e-9)
            print(f"{now - self.started:>4.0f} {(counts_now[0] - counts[0]) / wall:>7.0f} "
                  f"{(counts_now[1] - counts[1]) / wall:>8.0f} {visible:>7} {in_flight:>9} "
                  f"{pending:>8} "
                  + " ".join(f"{100 * (cpu_now[n] - cpu[n]) / wall:>7.0f}%" for n in self.NAMES)
                  + f" {100 * busy:>7.0f}%", flush=True)
            then, cpu, machine, counts = now, cpu_now, machine_now, counts_now

    def summary(self, sent: int, pushed: int) -> list[str]:
        """CPU over the whole run: each process's share of a core, and per event."""
        wall = time.monotonic() - self.started
        used = {n: c - self.cpu[n] for n, c in self._cpu().items()}
        # The notifier's and redis's work is per push made, the load's and moto's per event
        # sent (moto does most of its work while the events are sent).
        per = {"notifier": ("push", pushed), "redis": ("push", pushed),
               "moto": ("event sent", sent), "bench": ("event sent", sent)}
        busy, total = (a - b for a, b in zip(machine_cpu(), self.machine, strict=True))
        others = max(0.0, busy - sum(used.values()))
        return [
            f"{'CPU over the run, % of a core':<34} "
            + "   ".join(f"{n} {100 * s / wall:.0f}%" for n, s in used.items())
            + "   (idle: " + " ".join(f"{100 * self.idle[n]:.0f}%" for n in self.NAMES) + ")",
            f"{'  the machine':<34} {100 * busy / total:.0f}% of its {os.cpu_count()} cores "
            f"busy, {100 * others / wall:.0f}% of a core of it other work than this benchmark",
            f"{'CPU above idle':<34} " + "   ".join(
                f"{n} {1000 * max(0.0, s - self.idle[n] * wall) / max(per[n][1], 1):.2f} ms"
                f" per {per[n][0]}" for n, s in used.items()),
            f"{'most waiting':<34} {self.most_queued} messages on notifier-call (visible + in "
            f"flight), {self.most_pending} push jobs due",
        ]


def histograms(text: str) -> dict[str, dict[str, float]]:
    """Prometheus histograms by name: sum, count and buckets, over all label values."""
    found: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(text):
        if family.type != "histogram":
            continue
        histogram = found.setdefault(family.name, {})
        for sample in family.samples:
            key = sample.labels.get("le") or sample.name.removeprefix(family.name)
            histogram[key] = histogram.get(key, 0.0) + sample.value
    return found


def notifier_lines(before: str, after: str, receiver_delay_ms: float) -> list[str]:
    """How late the notifier's event loop ran and how long a push request took, in the run."""
    was, now = histograms(before), histograms(after)

    def delta(name: str, key: str) -> float:
        return now.get(name, {}).get(key, 0.0) - was.get(name, {}).get(key, 0.0)

    ticks = delta("event_loop_lag_seconds", "_count")
    pushes = delta("notifier_push_seconds", "_count")
    if not ticks or not pushes:
        return []
    late = 1 - delta("event_loop_lag_seconds", "0.05") / ticks
    return [f"{'notifier event loop':<34} a 50 ms timer late by "
            f"{1000 * delta('event_loop_lag_seconds', '_sum') / ticks:.1f} ms on average, "
            f"{100 * late:.0f}% of them by more than 50 ms",
            f"{'notifier push request':<34} "
            f"{1000 * delta('notifier_push_seconds', '_sum') / pushes:.1f} ms on average "
            f"(the receiver's answer takes {receiver_delay_ms:g} ms of it)"]


# --- the result ---------------------------------------------------------------------------

def written_at(db_path: Path) -> dict[str, int]:
    """Call id -> when the notifier wrote its notification (ns since the epoch)."""
    with contextlib.closing(sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)) as conn:
        rows = conn.execute("SELECT json_extract(subject, '$.call_id'), created_at "
                            "FROM notifications WHERE type = 'call'").fetchall()
    return {call_id: int(datetime.fromisoformat(at).replace(tzinfo=UTC).timestamp() * 1e9)
            for call_id, at in rows}


def spread(name: str, ms: list[float], note: str = "") -> str:
    if not ms:
        return f"{name:<34} no samples"
    ordered = sorted(ms)
    p50, p99 = ordered[len(ordered) // 2], ordered[min(len(ordered) - 1, int(len(ordered) * .99))]
    return (f"{name:<34} samples {len(ordered):>6}   p50 {p50:>8.1f} ms   p99 {p99:>8.1f} ms   "
            f"max {ordered[-1]:>8.1f} ms" + (f"   ({note})" if note else ""))


def report(sent: Sent, got: list[tuple[int, str, bytes]], devices: list[Device],
           written: dict[str, int], args: argparse.Namespace) -> list[str]:
    """Match each push to its event by the call id inside it."""
    seen: Counter[int] = Counter()
    total_ms, queued_ms, pushed_ms = [], [], []
    wrong = unreadable = 0
    for arrived, path, body in got:
        device = int(path.rsplit("/", 1)[1])
        try:
            call_id = devices[device].read(body)["subject"]["call_id"]
        except Exception:
            unreadable += 1
            continue
        tag, _, send_ns = call_id.partition(":")
        if not tag.startswith("run"):
            continue  # a straggler from the warm-up
        number = int(tag.removeprefix("run"))
        seen[number] += 1
        if sent.events.get(number, (0, None))[1] != device:
            wrong += 1
        if seen[number] > 1:
            continue
        total_ms.append((arrived - int(send_ns)) / 1e6)
        if call_id in written:
            queued_ms.append((written[call_id] - int(send_ns)) / 1e6)
            pushed_ms.append((arrived - written[call_id]) / 1e6)
    first = min((ns for ns, _ in sent.events.values()), default=0)
    last = max((arrived for arrived, _, _ in got), default=first)
    window = [a for a, _, _ in got if a <= first + sent.seconds * 1e9]
    count, asked = len(sent.events), int(args.rate * args.duration)
    missing = count - len(set(seen) & set(sent.events))
    return [
        f"{'events sent':<34} {count:>6} in {sent.seconds:.1f} s ({args.rate:g}/s asked, "
        f"{count / max(sent.seconds, 1e-9):.0f}/s sent)   send errors {sent.errors}"
        + (f"   not sent in time {asked - count - sent.errors}" if count < asked else ""),
        f"{'pushes received':<34} {len(got):>6}   missing {missing}"
        + (f" (not there {args.drain_s:g} s after the last send)" if missing else "")
        + f"   doubled {sum(n - 1 for n in seen.values())}   wrong device {wrong}"
        f"   unreadable {unreadable}",
        f"{'throughput':<34} {len(window) / max(sent.seconds, 1e-9):>6.0f} pushes/s while "
        f"sending, {len(seen) / max((last - first) / 1e9, 1e-9):.0f}/s from first send to "
        f"last push ({(last - first) / 1e9:.1f} s)",
        spread("event -> push", total_ms, TARGET),
        spread("  event -> notification written", queued_ms, "SQS, consumer, SQLite"),
        spread("  notification -> push arrived", pushed_ms, "dispatcher, Web Push, HTTP"),
    ]


# --- the run ------------------------------------------------------------------------------

async def measure(stack: Stack, args: argparse.Namespace) -> None:
    session, rng = aioboto3.Session(), random.Random(args.seed)
    kwargs = {"endpoint_url": stack.moto_url, "region_name": REGION, **FAKE_AWS}
    receiver = Receiver(args.receiver_delay_ms / 1000)
    async with (
        session.client("sqs", config=Config(max_pool_connections=IN_FLIGHT), **kwargs) as sqs,
        session.client("cognito-idp", **kwargs) as idp,
        live(receiver, lifespan="off", access_log=False) as receiving,
        httpx.AsyncClient(base_url=stack.notifier_url, timeout=30) as http,
    ):
        began = time.monotonic()
        devices = await sign_up(idp, stack.settings, args.users)
        await introduce(sqs, devices)
        await subscribe(stack.notifier_url, devices, receiving.url)
        s = stack.settings
        print(f"notifier: {args.replicas} process(es) (uvicorn, SQLite; consumer_concurrency "
              f"{s.consumer_concurrency}, consumer_wait_time_s {s.consumer_wait_time_s}, "
              f"push_concurrency {s.push_concurrency}); moto (stack.motoserver) and "
              f"redis-server: own processes; load and push receiver: this process")
        print(f"{len(devices)} users with one Web Push subscription each, set up in "
              f"{time.monotonic() - began:.1f} s; the receiver answers 201 after "
              f"{args.receiver_delay_ms:g} ms")
        warm = min(WARM_UP, args.users)
        await publish(sqs, devices, Sent(), rate=50, count=warm, tag="warm", rng=rng)
        await receiver.until(warm, idle_s=30, limit_s=120)
        if not receiver.got:
            raise SystemExit(f"no push arrived in the warm-up; {stack.log_tail()}")
        receiver.got.clear()
        count = int(args.rate * args.duration)
        print(f"call.ringing, one callee each, on notifier-call: {args.rate:g}/s for "
              f"{args.duration:g} s ({count} events) after {warm} to warm up")
        sent = Sent()
        call_url = (await sqs.get_queue_url(QueueName="notifier-call"))["QueueUrl"]
        meter = Meter(stack, sqs, call_url, lambda: (len(sent.events), len(receiver.got)))
        await meter.measure_idle()
        metrics_before = (await http.get("/metrics")).text
        watching = asyncio.create_task(meter.run())
        await publish(sqs, devices, sent, rate=args.rate, count=count, tag="run", rng=rng)
        await receiver.until(len(sent.events), IDLE_S, args.drain_s)
        watching.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watching
        metrics_after = (await http.get("/metrics")).text
    lines = report(sent, receiver.got, devices, await asyncio.to_thread(
        written_at, stack.db_path), args)
    lines += meter.summary(len(sent.events), len(receiver.got))
    lines += notifier_lines(metrics_before, metrics_after, args.receiver_delay_ms)
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=500, help="events per second")
    parser.add_argument("--duration", type=float, default=20, help="seconds of load")
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--receiver-delay-ms", type=float, default=50)
    parser.add_argument("--drain-s", type=float, default=60,
                        help="after the last send, wait at most this long for the pushes")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--replicas", type=int, default=1, help="notifier processes")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="a notifier setting, e.g. PUSH_CONCURRENCY=64 (repeatable)")
    args = parser.parse_args()
    if args.users < 2:
        parser.error("--users: at least 2 (a call goes from one user to another)")
    overrides = dict(item.split("=", 1) for item in args.set)
    with tempfile.TemporaryDirectory(prefix="asyncsns-notify-") as workdir, \
            servers(Path(workdir), overrides, args.replicas) as stack:
        asyncio.run(measure(stack, args))


if __name__ == "__main__":
    main()
