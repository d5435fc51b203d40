"""A post service wired to a real moto (Cognito, SNS, SQS, S3) and a fresh database per test.

Besides the app, each test gets a tap on the post topic (what the service published), a
profile topic feeding the service's post-graph queue (to deliver graph events the way the
profile service would), its own uploads and media buckets with the uploads queue S3 notifies,
and real Cognito users.
"""

import asyncio
import uuid
from dataclasses import dataclass
from typing import Any

import pytest
from jose import jwt
from sqlalchemy import select

from chassis.events import Envelope
from chassis.testing import (
    EventTap,
    aws_client,
    serve_in_process,
    subscribe_queue,
    wait_until,
)
from post_svc import media_worker
from post_svc.main import GRAPH_QUEUE, build_app
from post_svc.models import Base
from post_svc.settings import PostSettings

MEDIA_BASE_URL = "http://gateway.test/media"
FACTS = {"width": 4, "height": 3, "variants": {"large": f"{MEDIA_BASE_URL}/x"}}


def by_seq(events: list[dict]) -> list[dict]:
    """Events about one post in the order of its `seq` (SQS may deliver them in any order)."""
    return sorted(events, key=lambda e: e["data"]["seq"])


@dataclass
class GraphFeed:
    """The profile topic as the post service's post-graph queue hears it."""

    sns: Any
    sqs: Any
    topic_arn: str
    queue_url: str

    async def publish(self, envelope: Envelope) -> None:
        """Publish as the profile service's outbox relay does (event type as an attribute)."""
        await asyncio.to_thread(
            self.sns.publish, TopicArn=self.topic_arn, Message=envelope.model_dump_json(),
            MessageAttributes={"event_type": {"DataType": "String",
                                              "StringValue": envelope.type}})

    async def settled(self) -> bool:
        """Every message on the queue was handled and deleted (none waiting or in flight)."""
        attributes = (await asyncio.to_thread(
            self.sqs.get_queue_attributes, QueueUrl=self.queue_url,
            AttributeNames=["ApproximateNumberOfMessages",
                            "ApproximateNumberOfMessagesNotVisible"]))["Attributes"]
        return sum(int(v) for v in attributes.values()) == 0


@pytest.fixture
def tap(moto_endpoint: str, names: str) -> tuple[str, EventTap]:
    sns, sqs = aws_client("sns", moto_endpoint), aws_client("sqs", moto_endpoint)
    topic = sns.create_topic(Name=f"{names}post-events")["TopicArn"]
    return topic, EventTap(sqs, subscribe_queue(sns, sqs, topic, f"{names}tap"))


@pytest.fixture
def graph(moto_endpoint: str, names: str) -> GraphFeed:
    sns, sqs = aws_client("sns", moto_endpoint), aws_client("sqs", moto_endpoint)
    topic = sns.create_topic(Name=f"{names}profile-events")["TopicArn"]
    url = subscribe_queue(sns, sqs, topic, names + GRAPH_QUEUE,
                          ["graph.blocked", "graph.unblocked", "graph.followed",
                           "graph.unfollowed"])
    return GraphFeed(sns, sqs, topic, url)


@dataclass
class Storage:
    """This test's buckets, and the uploads queue S3 tells about new originals."""

    s3: Any
    uploads: str
    media: str
    queue_url: str


@pytest.fixture
def storage(moto_endpoint: str, names: str) -> Storage:
    s3, sqs = aws_client("s3", moto_endpoint), aws_client("sqs", moto_endpoint)
    uploads, media = f"{names}uploads", f"{names}media"
    for bucket in (uploads, media):
        s3.create_bucket(Bucket=bucket)
    url = sqs.create_queue(QueueName=names + media_worker.UPLOADS_QUEUE)["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])
    s3.put_bucket_notification_configuration(Bucket=uploads, NotificationConfiguration={
        "QueueConfigurations": [{"QueueArn": arn["Attributes"]["QueueArn"],
                                 "Events": ["s3:ObjectCreated:*"]}]})
    return Storage(s3, uploads, media, url)


@pytest.fixture
def settings(database_url, cognito, moto_endpoint, tap, graph, names, storage) -> PostSettings:
    return PostSettings(
        database_url=database_url, aws_endpoint_url=moto_endpoint, aws_access_key_id="testing",
        aws_secret_access_key="testing", events_topic_arn=tap[0], queue_prefix=names,
        consumer_wait_time_s=1, consumer_retry_base_s=0, outbox_poll_interval_s=0.1,
        uploads_bucket=storage.uploads, media_bucket=storage.media,
        media_base_url=MEDIA_BASE_URL, log_json=False, **cognito.env())


@pytest.fixture
def app(settings):
    return build_app(settings)


@pytest.fixture
async def client(app, rows):
    async with serve_in_process(app) as http:
        yield http
        # Stop only once the relay has published what the test wrote. On Python 3.11 the
        # relay's idle `asyncio.wait_for` swallows a cancellation that arrives just as a
        # commit wakes it, and the app's shutdown then waits for the relay forever.
        await wait_until(lambda: _all_published(rows), "the relay published every event")


async def _all_published(rows) -> bool:
    return all(row["published_at"] is not None for row in await rows("outbox"))


@pytest.fixture
def events(tap) -> EventTap:
    return tap[1]


@pytest.fixture
def rows(app):
    """Read a table of the running service's own database (what the API does not show)."""

    async def read(table_name: str, **where: Any) -> list[dict[str, Any]]:
        table = Base.metadata.tables[table_name]
        query = select(table).where(*(table.c[k] == v for k, v in where.items()))
        async with app.state.db.sessions() as session:
            return [dict(row._mapping) for row in (await session.execute(query)).all()]

    return read


@dataclass
class User:
    id: str
    username: str
    headers: dict[str, str]
    tokens: dict[str, str]


@pytest.fixture
def user(cognito):
    """A new Cognito user with a real access token."""

    async def make(prefix: str = "u") -> User:
        username = f"{prefix}_{uuid.uuid4().hex[:10]}"
        tokens = await asyncio.to_thread(cognito.tokens, username)
        claims = jwt.get_unverified_claims(tokens["AccessToken"])
        return User(claims["sub"], username,
                    {"Authorization": f"Bearer {tokens['AccessToken']}"}, tokens)

    return make


@pytest.fixture
def post(client):
    """Publish a post through the API and return its body."""

    async def make(author: User, text: str = "hello", **fields: Any) -> dict[str, Any]:
        response = await client.post("/api/posts", json={"text": text} | fields,
                                     headers=author.headers)
        assert response.status_code == 201, response.text
        return response.json()

    return make



@pytest.fixture
def ready_media(client, app):
    """Uploads of `author` settled ready the way the worker's last step settles them, for
    tests about posts rather than processing (test_media runs the worker itself)."""

    async def make(author: User, count: int = 1, kind: str = "image") -> list[str]:
        content_type = {"image": "image/jpeg", "video": "video/mp4", "audio": "audio/mpeg"}[kind]
        ids = []
        for _ in range(count):
            response = await client.post("/api/media", headers=author.headers,
                                         json={"content_type": content_type, "size": 1000})
            assert response.status_code == 201, response.text
            media_id = response.json()["media_id"]
            await app.state.db.run(lambda conn, m=media_id: (
                media_worker.begin(conn, m), media_worker.settle(conn, m, facts=FACTS)))
            ids.append(media_id)
        return ids

    return make
