"""Chat replicas as real uvicorn servers on one database and one redis-server, with moto for
Cognito, SNS and SQS; WebSocket clients with the `websockets` library.

Each test gets its own redis-server (so a test may restart it), its own topic and queues, and
replicas it starts with `replicas(n)`.
"""

import asyncio
import contextlib
import json
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import websockets
from jose import jwt

from chassis.events import new_event
from chassis.ports import free_port, wait_for_port
from chassis.testing import EventTap, LiveServer, aws_client, start_live, subscribe_queue
from chat_svc.commands import record_user
from chat_svc.main import PROFILE_QUEUE, build_app
from chat_svc.settings import ChatSettings
from profile_svc import events as profile_events


class RedisServer:
    """A private redis-server that a test may stop and start again on the same port."""

    def __init__(self) -> None:
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [shutil.which("redis-server") or "redis-server", "--port", str(self.port),
             "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(self.port)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)
            self.proc = None


@pytest.fixture
def redis_server():
    server = RedisServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def names() -> str:
    return f"t{uuid.uuid4().hex[:8]}-"


@pytest.fixture
def tap(moto_endpoint: str, names: str) -> tuple[str, EventTap]:
    sns, sqs = aws_client("sns", moto_endpoint), aws_client("sqs", moto_endpoint)
    topic = sns.create_topic(Name=f"{names}chat-events")["TopicArn"]
    return topic, EventTap(sqs, subscribe_queue(sns, sqs, topic, f"{names}tap"))


@pytest.fixture
def profile_queue(moto_endpoint: str, names: str) -> str:
    return aws_client("sqs", moto_endpoint).create_queue(
        QueueName=names + PROFILE_QUEUE)["QueueUrl"]


@pytest.fixture
def settings(database_url, cognito, moto_endpoint, tap, names, redis_server,
             profile_queue) -> ChatSettings:
    return ChatSettings(
        database_url=database_url, aws_endpoint_url=moto_endpoint, aws_access_key_id="testing",
        aws_secret_access_key="testing", events_topic_arn=tap[0], queue_prefix=names,
        redis_url=redis_server.url, consumer_wait_time_s=1, consumer_retry_base_s=0,
        outbox_poll_interval_s=0.1, log_json=False, presence_ttl_s=6, **cognito.env())


@dataclass
class Replica:
    app: Any
    live: LiveServer

    @property
    def port(self) -> int:
        return self.live.port

    @property
    def http(self) -> str:
        return self.live.url

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws/chat"

    @property
    def task(self) -> asyncio.Task:
        return self.live.task

    async def stop(self) -> None:
        await self.live.stop()


@pytest.fixture
async def replicas(settings) -> AsyncIterator[Any]:
    """`await replicas(n, **overrides)`: n chat replicas serving on real ports."""
    started: list[Replica] = []

    async def start(count: int = 1, **overrides: Any) -> list[Replica]:
        new = []
        for _ in range(count):
            app = build_app(settings.model_copy(update=overrides))
            new.append(Replica(app, await start_live(
                app, lifespan="on", ws_max_size=1 << 20, timeout_graceful_shutdown=2)))
        started.extend(new)
        return new

    yield start
    for replica in started:
        if not replica.task.done():
            await replica.stop()


@dataclass
class User:
    id: str
    username: str
    token: str
    headers: dict[str, str]


@pytest.fixture
def user(cognito, replicas):
    """A Cognito user the chat service knows (its `profile.created` applied)."""

    async def make(replica: Replica, prefix: str = "u") -> User:
        username = f"{prefix}_{uuid.uuid4().hex[:10]}"
        tokens = await asyncio.to_thread(cognito.tokens, username)
        token = tokens["AccessToken"]
        user_id = jwt.get_unverified_claims(token)["sub"]
        created = new_event(profile_events.ProfileCreated(
            user_id=user_id, username=username, display_name=username,
            created_at="2026-01-01T00:00:00Z"), producer="profile", subject=f"user:{user_id}",
            actor=user_id)
        await replica.app.state.db.run(lambda conn: record_user(conn, created))
        return User(user_id, username, token, {"Authorization": f"Bearer {token}"})

    return make


@dataclass
class Client:
    """A WebSocket client that keeps every frame it receives."""

    conn: Any
    frames: list[dict[str, Any]] = field(default_factory=list)
    reader: asyncio.Task | None = None
    closed: Any = None

    async def send(self, frame: dict[str, Any]) -> None:
        await self.conn.send(json.dumps(frame))

    async def _read(self) -> None:
        try:
            async for raw in self.conn:
                self.frames.append(json.loads(raw))
        except websockets.ConnectionClosed as closed:
            self.closed = closed
        else:
            self.closed = self.conn.close_code

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [f for f in self.frames if f["type"] == kind]

    async def wait_for(self, predicate, what: str, timeout_s: float = 10.0) -> None:
        deadline = asyncio.get_running_loop().time() + timeout_s
        while not predicate(self):
            if asyncio.get_running_loop().time() > deadline:
                pytest.fail(f"timed out waiting for {what}; frames: {self.frames[-5:]}")
            await asyncio.sleep(0.02)

    async def close(self) -> None:
        await self.conn.close()
        if self.reader:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await self.reader


@pytest.fixture
async def connect() -> AsyncIterator[Any]:
    """`await connect(replica, user)`: an authenticated client that got `ready`."""
    clients: list[Client] = []

    async def open_(replica: Replica, user: User | None = None, *, auth: bool = True,
                    **kwargs: Any) -> Client:
        conn = await websockets.connect(replica.ws, max_size=4 << 20, **kwargs)
        client = Client(conn)
        clients.append(client)
        if auth and user is not None:
            await client.send({"type": "auth", "token": user.token})
        client.reader = asyncio.create_task(client._read())
        if auth and user is not None:
            await client.wait_for(lambda c: c.of("ready") or c.closed, "ready")
        return client

    yield open_
    for client in clients:
        with contextlib.suppress(Exception):
            await client.close()


@pytest.fixture
def api():
    """An HTTP client for a replica, as a user."""

    def make(replica: Replica, user: User) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=replica.http, headers=user.headers, timeout=10)

    return make


def messages_in(client: Client, channel_id: str) -> list[dict[str, Any]]:
    """The message frames a client received for a channel, in arrival order."""
    return [f for f in client.of("message") if f["message"]["channel_id"] == channel_id]
