"""Shared parts of the chassis tests: a test app, tracing capture, SNS/SQS wiring in moto."""

import json
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import aioboto3
import pytest
from botocore.config import Config
from fastapi import APIRouter
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from sqlalchemy import Column, Integer, MetaData, String, Table, func, select

from chassis.app import ServiceSpec, create_app
from chassis.consumer import Handler
from chassis.db import Database, new_metadata
from chassis.events import Envelope, EventData, event_type, new_event
from chassis.settings import ServiceSettings
from chassis.testing import (
    FAKE_AWS,
    REGION,
    CognitoPool,
    aws_client,
    free_port,
    serve_in_process,
)
from chassis.tracing import configure_tracing, export_spans

SERVICE = "chassis-tests"


@event_type("test.thing-happened", producer=SERVICE)
class ThingHappened(EventData):
    """A test event: the `n`th thing happened to an aggregate."""

    n: int
    note: str = ""


@pytest.fixture
def thing() -> Callable[..., Envelope]:
    """Make a `test.thing-happened` envelope (in the current trace, if any)."""

    def make(n: int, *, subject: str = "agg-1", note: str = "") -> Envelope:
        return new_event(ThingHappened(n=n, note=note), producer=SERVICE, subject=subject,
                         actor=None)

    return make


@pytest.fixture
def metadata() -> MetaData:
    """The chassis tables plus `effects`, where test handlers record what they did."""
    metadata = new_metadata()
    Table("effects", metadata,
          Column("id", Integer, primary_key=True, autoincrement=True),
          Column("event_id", String(26), nullable=False))
    return metadata


@pytest.fixture(scope="session", autouse=True)
def spans() -> InMemorySpanExporter:
    """Every finished span, kept in memory; installs the SDK provider as services do."""
    configure_tracing(SERVICE)
    exporter = InMemorySpanExporter()
    export_spans(SimpleSpanProcessor(exporter))
    return exporter


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    """A fresh SQLite database, for tests where the backend is not what is tested."""
    return f"sqlite+aiosqlite:///{tmp_path / 'app.db'}"


@dataclass
class FreshDatabase:
    """A fresh database with the chassis tables and `effects`."""

    database: Database
    metadata: MetaData

    def table(self, name: str) -> Table:
        return self.metadata.tables[name]

    async def count(self, name: str, *where: Any) -> int:
        """How many rows of table `name` match `where`."""
        async with self.database.sessions() as session:
            return (await session.execute(
                select(func.count()).select_from(self.table(name)).where(*where))).scalar_one()


@pytest.fixture
async def db(database_url: str, metadata: MetaData) -> AsyncIterator[FreshDatabase]:
    """A fresh database on each backend with the chassis tables and `effects` created."""
    database = Database(database_url)
    await database.create_all(metadata)
    yield FreshDatabase(database, metadata)
    await database.dispose()


@pytest.fixture
def serve(cognito: CognitoPool, sqlite_url: str, metadata: MetaData):
    """Start a test service (its routers, settings overrides) in-process; yields an httpx client.

    The service reads tokens of the moto `cognito` pool and keeps its tables in SQLite.
    """

    def start(*routers: APIRouter, consumers: dict[str, dict[str, Handler]] | None = None,
              **settings: Any):
        values = {"service_name": SERVICE, "database_url": sqlite_url, **cognito.env(), **settings}
        spec = ServiceSpec(name=SERVICE, metadata=metadata, routers=list(routers),
                           consumers=consumers or {})
        return serve_in_process(create_app(ServiceSettings(**values), spec))

    return start


# --- SNS / SQS in moto --------------------------------------------------------------------

@dataclass(frozen=True)
class Wiring:
    """A topic, a queue subscribed to it, and that queue's DLQ."""

    topic_arn: str
    queue_url: str
    dlq_url: str


@pytest.fixture
def wire(moto_endpoint: str) -> Callable[..., Wiring]:
    """Make a fresh topic → queue (visibility 1 s, DLQ after 5 receives) subscription."""

    def make(*, raw: bool = True) -> Wiring:
        sns, sqs = aws_client("sns", moto_endpoint), aws_client("sqs", moto_endpoint)
        name = f"t-{uuid.uuid4().hex[:10]}"
        topic_arn = sns.create_topic(Name=name)["TopicArn"]
        dlq_url = sqs.create_queue(QueueName=f"{name}-dlq")["QueueUrl"]
        dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])[
            "Attributes"]["QueueArn"]
        queue_url = sqs.create_queue(QueueName=name, Attributes={
            "VisibilityTimeout": "1",
            "RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": 5}),
        })["QueueUrl"]
        queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])[
            "Attributes"]["QueueArn"]
        sns.subscribe(TopicArn=topic_arn, Protocol="sqs", Endpoint=queue_arn,
                      Attributes={"RawMessageDelivery": "true" if raw else "false"})
        return Wiring(topic_arn, queue_url, dlq_url)

    return make


def _client(service: str, endpoint: str):
    return aioboto3.Session().client(
        service, endpoint_url=endpoint, region_name=REGION,
        config=Config(retries={"total_max_attempts": 1}, connect_timeout=1, read_timeout=5),
        **FAKE_AWS)


@pytest.fixture
async def sqs(moto_endpoint: str):
    async with _client("sqs", moto_endpoint) as client:
        yield client


@pytest.fixture
async def sns(moto_endpoint: str):
    async with _client("sns", moto_endpoint) as client:
        yield client


@pytest.fixture
async def dead_sns():
    """An SNS client pointed at a port nothing listens on."""
    async with _client("sns", f"http://127.0.0.1:{free_port()}") as client:
        yield client


@pytest.fixture
async def dead_sqs():
    """An SQS client pointed at a port nothing listens on."""
    async with _client("sqs", f"http://127.0.0.1:{free_port()}") as client:
        yield client
