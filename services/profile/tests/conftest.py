"""A profile service wired to a real moto (Cognito, SNS, SQS) and a fresh database per test."""

import uuid
from dataclasses import dataclass

import httpx
import pytest

from chassis.testing import EventTap, aws_client, subscribe_queue
from profile_svc.main import build_app
from profile_svc.settings import ProfileSettings


@pytest.fixture
def events_topic(moto_endpoint: str) -> tuple[str, EventTap]:
    sns, sqs = aws_client("sns", moto_endpoint), aws_client("sqs", moto_endpoint)
    name = f"profile-events-{uuid.uuid4().hex[:8]}"
    topic = sns.create_topic(Name=name)["TopicArn"]
    return topic, EventTap(sqs, subscribe_queue(sns, sqs, topic, f"tap-{name}"))


@pytest.fixture
def post_queue(moto_endpoint: str) -> tuple[str, str]:
    """The service's `profile-post` queue under a prefix of its own: (prefix, queue URL)."""
    prefix = f"t{uuid.uuid4().hex[:8]}-"
    sqs = aws_client("sqs", moto_endpoint)
    return prefix, sqs.create_queue(QueueName=f"{prefix}profile-post")["QueueUrl"]


@pytest.fixture
async def client(database_url, cognito, moto_endpoint, events_topic, redis_url, post_queue):
    settings = ProfileSettings(
        database_url=database_url, aws_endpoint_url=moto_endpoint, aws_access_key_id="testing",
        aws_secret_access_key="testing", events_topic_arn=events_topic[0],
        outbox_poll_interval_s=0.1, log_json=False, redis_url=redis_url,
        queue_prefix=post_queue[0], consumer_wait_time_s=1, **cognito.env())
    app = build_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://profile") as http:
            yield http


@pytest.fixture
def tap(events_topic) -> EventTap:
    return events_topic[1]


@dataclass
class Account:
    user_id: str
    username: str
    headers: dict[str, str]
    tokens: dict[str, str]


def unique(prefix: str = "u") -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


@pytest.fixture
def signup(client):
    """Sign up and log in a new user through the API."""

    async def make(prefix: str = "u", password: str = "correct horse 1") -> Account:
        username = unique(prefix)
        created = await client.post("/api/auth/signup", json={
            "username": username, "email": f"{username}@example.com", "password": password})
        assert created.status_code == 201, created.text
        login = await client.post("/api/auth/login",
                                  json={"username": username, "password": password})
        assert login.status_code == 200, login.text
        tokens = login.json()
        return Account(created.json()["user_id"], username,
                       {"Authorization": f"Bearer {tokens['access_token']}"}, tokens)

    return make
