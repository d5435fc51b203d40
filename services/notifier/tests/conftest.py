"""A notifier wired to real moto (Cognito, SNS incl. platform applications, SQS), redis-server
and a fresh database per test; events arrive on its real queues, pushes go to a real local
HTTP receiver that the test scripts (answer 201, 500, 410 ...)."""

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from jose import jwt
from ulid import ULID

from chassis.db import utcnow
from chassis.events import Envelope, EventData, new_event
from chassis.testing import aws_client, live
from notifier_svc.main import build_app
from notifier_svc.settings import NotifierSettings
from profile_svc import events as profile_events
from stack.vapid import kept_vapid_keys

QUEUES = ("notifier-profile", "notifier-post", "notifier-chat", "notifier-call")


@dataclass
class Feed:
    """The notifier's queues, fed as SNS would with raw delivery."""

    sqs: Any
    urls: dict[str, str]

    def send(self, queue: str, data: EventData, *, producer: str, subject: str,
             actor: str) -> str:
        if hasattr(type(data), "__event_type__"):
            envelope = new_event(data, producer=producer, subject=subject, actor=actor)
        else:  # a type whose producer is yet to come (call.ringing): the envelope by hand
            envelope = Envelope(id=str(ULID()), type=data.event_type, version=1,
                                occurred_at=utcnow(), producer=producer, actor=actor,
                                subject=subject, data=data.model_dump(mode="json"))
        self.sqs.send_message(QueueUrl=self.urls[queue], MessageBody=envelope.model_dump_json())
        return envelope.model_dump_json()

    def resend(self, queue: str, body: str) -> None:
        self.sqs.send_message(QueueUrl=self.urls[queue], MessageBody=body)


@pytest.fixture
def feed(moto_endpoint: str, names: str) -> Feed:
    sqs = aws_client("sqs", moto_endpoint)
    urls = {q: sqs.create_queue(QueueName=names + q)["QueueUrl"]
            for q in (*QUEUES, "notifier-push-dlq")}
    return Feed(sqs, urls)


@pytest.fixture
def platforms(moto_endpoint: str, names: str) -> dict[str, str]:
    sns = aws_client("sns", moto_endpoint)
    return {kind: sns.create_platform_application(
        Name=f"{names}{kind}", Platform=platform,
        Attributes={"PlatformCredential": "x", "PlatformPrincipal": "x"},
    )["PlatformApplicationArn"] for kind, platform in (("apns", "APNS_SANDBOX"), ("fcm", "GCM"))}


@pytest.fixture
def settings(database_url, cognito, moto_endpoint, names, feed, redis_url, platforms,
             tmp_path) -> NotifierSettings:
    private, public = kept_vapid_keys(tmp_path / "vapid.json")
    return NotifierSettings(
        database_url=database_url, aws_endpoint_url=moto_endpoint, aws_access_key_id="testing",
        aws_secret_access_key="testing", queue_prefix=names, redis_url=redis_url,
        consumer_wait_time_s=1, consumer_retry_base_s=0, log_json=False,
        vapid_private_key=private, vapid_public_key=public, allow_private_push_endpoints=True,
        apns_platform_arn=platforms["apns"], fcm_platform_arn=platforms["fcm"],
        push_backoff_base_s=0.05, push_backoff_max_s=0.2, push_poll_interval_s=0.05,
        push_max_attempts=3, push_timeout_s=2, stream_keepalive_s=1, **cognito.env())


@pytest.fixture
async def app(settings):
    """The notifier on a real port (the SSE stream needs a real server to stream)."""
    app = build_app(settings)
    async with (live(app, timeout_graceful_shutdown=1) as server,
                httpx.AsyncClient(base_url=server.url, timeout=10) as http):
        app.state.test_client = http
        yield app


@pytest.fixture
def client(app):
    return app.state.test_client


@dataclass
class User:
    id: str
    username: str
    headers: dict[str, str]


@pytest.fixture
def user(cognito, feed):
    """A Cognito user the notifier knows (its `profile.created` sent through the queue)."""

    async def make(prefix: str = "u") -> User:
        username = f"{prefix}_{uuid.uuid4().hex[:8]}"
        tokens = await asyncio.to_thread(cognito.tokens, username)
        user_id = jwt.get_unverified_claims(tokens["AccessToken"])["sub"]
        feed.send("notifier-profile", profile_events.ProfileCreated(
            user_id=user_id, username=username, display_name=username.title(),
            created_at="2026-01-01T00:00:00Z"), producer="profile", subject=f"user:{user_id}",
            actor=user_id)
        return User(user_id, username, {"Authorization": f"Bearer {tokens['AccessToken']}"})

    return make


@dataclass
class Receiver:
    """A push service on loopback: answers with the scripted statuses (then 201) and keeps
    every request it got."""

    port: int
    script: list[int | tuple[int, dict[str, str]]] = field(default_factory=list)
    delay_s: float = 0.0  # a slow push service
    requests: list[dict[str, Any]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/push/{uuid.uuid4().hex}"

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        self.requests.append({"path": scope["path"], "body": body,
                              "headers": {k.decode(): v.decode() for k, v in scope["headers"]}})
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        answer = self.script.pop(0) if self.script else 201
        status, headers = answer if isinstance(answer, tuple) else (answer, {})
        await send({"type": "http.response.start", "status": status,
                    "headers": [(k.encode(), v.encode()) for k, v in headers.items()]})
        await send({"type": "http.response.body", "body": b""})


@contextlib.asynccontextmanager
async def receiving() -> AsyncIterator[Receiver]:
    receiver = Receiver(0)
    async with live(receiver, lifespan="off") as server:
        receiver.port = server.port
        yield receiver


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with receiving() as receiver:
        yield receiver
