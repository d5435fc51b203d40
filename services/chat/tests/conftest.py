"""Chat replicas as real uvicorn servers on one database and one redis-server, with moto for
Cognito, SNS and SQS; WebSocket clients with the `websockets` library.

Each test gets its own redis-server (so a test may restart it), its own topic and queues, and
replicas it starts with `replicas(n)`.
"""

from collections.abc import AsyncIterator
from typing import Any

import pytest

from chassis.testing import (
    EventTap,
    Replica,
    TestUser,
    WsClient,
    aws_client,
    event_tap,
    replica_set,
)
from chat_svc.commands import record_user
from chat_svc.main import PROFILE_QUEUE, build_app
from chat_svc.settings import ChatSettings
from profile_svc.testing import known_user


@pytest.fixture
def tap(moto_endpoint: str, names: str) -> tuple[str, EventTap]:
    return event_tap(moto_endpoint, f"{names}chat-events")


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


@pytest.fixture
async def replicas(settings) -> AsyncIterator[Any]:
    """`await replicas(n, **overrides)`: n chat replicas serving on real ports."""
    async with replica_set(build_app, settings) as start:
        yield start


@pytest.fixture
def user(cognito, replicas):
    """A Cognito user the chat service knows (its `profile.created` applied)."""

    async def make(replica: Replica, prefix: str = "u") -> TestUser:
        return await known_user(cognito, replica.app.state.db, record_user, prefix)

    return make


@pytest.fixture
def connect(ws_clients):
    """`await connect(replica, user)`: an authenticated client that got `ready`."""

    async def open_(replica: Replica, user: TestUser | None = None, *, auth: bool = True,
                    **kwargs: Any) -> WsClient:
        token = user.token if auth and user is not None else None
        return await ws_clients(replica.ws_url("/ws/chat"), token, **kwargs)

    return open_


def messages_in(client: WsClient, channel_id: str) -> list[dict[str, Any]]:
    """The message frames a client received for a channel, in arrival order."""
    return [f for f in client.of("message") if f["message"]["channel_id"] == channel_id]
