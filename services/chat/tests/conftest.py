"""Chat replicas as real uvicorn servers on one database and one redis-server, with moto for
Cognito, SNS and SQS; WebSocket clients with the `websockets` library.

Each test gets its own redis-server (so a test may restart it), its own topic and queues, and
replicas it starts with `replicas(n)`.
"""

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from jose import jwt

from chassis.events import new_event
from chassis.testing import (
    EventTap,
    LiveServer,
    WsClient,
    aws_client,
    start_live,
    subscribe_queue,
)
from chat_svc.commands import record_user
from chat_svc.main import PROFILE_QUEUE, build_app
from chat_svc.settings import ChatSettings
from profile_svc import events as profile_events


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


@pytest.fixture
async def connect() -> AsyncIterator[Any]:
    """`await connect(replica, user)`: an authenticated client that got `ready`."""
    clients: list[WsClient] = []

    async def open_(replica: Replica, user: User | None = None, *, auth: bool = True,
                    **kwargs: Any) -> WsClient:
        client = await WsClient.open(
            replica.ws, user.token if auth and user is not None else None, **kwargs)
        clients.append(client)
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


def messages_in(client: WsClient, channel_id: str) -> list[dict[str, Any]]:
    """The message frames a client received for a channel, in arrival order."""
    return [f for f in client.of("message") if f["message"]["channel_id"] == channel_id]
