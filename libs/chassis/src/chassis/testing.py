"""Pytest fixtures that start real servers: moto, redis-server, SQLite and PostgreSQL.

Enable with `pytest_plugins = ["chassis.testing"]`. PostgreSQL comes from
ASYNCSNS_TEST_POSTGRES (default postgresql://postgres@127.0.0.1:5432/test) or, when that
does not answer, from a private cluster started with initdb; each test gets its own database.
ASYNCSNS_TEST_DATABASES=sqlite (or postgresql) narrows the backends a run covers.
"""

import asyncio
import contextlib
import gzip
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import create_engine

from .consumer import events_in
from .ports import free_port, wait_for_port

REGION = "us-east-1"
FAKE_AWS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}


def run_sync(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run a coroutine to completion from sync code, even inside a running loop's thread."""
    result: list[Any] = []
    error: list[BaseException] = []

    def target() -> None:
        try:
            result.append(asyncio.run(coro))
        except BaseException as exc:
            error.append(exc)

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]


# --- moto ---------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """A real moto server (SNS, SQS, S3, Cognito) on a free port."""
    import logging

    from moto.server import ThreadedMotoServer
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": REGION}.items():
        os.environ.setdefault(key, value)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    wait_for_port(port)
    yield f"http://127.0.0.1:{port}"
    server.stop()


def aws_client(service: str, endpoint: str) -> Any:
    return boto3.client(service, endpoint_url=endpoint, region_name=REGION, **FAKE_AWS)


@dataclass(frozen=True)
class CognitoPool:
    """A user pool and app client in moto, with what a service needs to verify its tokens."""

    endpoint: str
    pool_id: str
    client_id: str

    @property
    def issuer(self) -> str:
        return f"https://cognito-idp.{REGION}.amazonaws.com/{self.pool_id}"

    @property
    def jwks_url(self) -> str:
        return f"{self.endpoint}/{self.pool_id}/.well-known/jwks.json"

    def env(self) -> dict[str, str]:
        return {"cognito_issuer": self.issuer, "cognito_jwks_url": self.jwks_url,
                "cognito_client_id": self.client_id, "cognito_user_pool_id": self.pool_id}

    def tokens(self, username: str, password: str = "Passw0rd!x") -> dict[str, str]:
        """Create and confirm a user (if new) and log in: Access, Id and Refresh tokens."""
        idp = aws_client("cognito-idp", self.endpoint)
        try:
            idp.sign_up(ClientId=self.client_id, Username=username, Password=password,
                        UserAttributes=[{"Name": "email", "Value": f"{username}@example.com"}])
            idp.admin_confirm_sign_up(UserPoolId=self.pool_id, Username=username)
        except idp.exceptions.UsernameExistsException:
            pass
        result = idp.initiate_auth(ClientId=self.client_id, AuthFlow="USER_PASSWORD_AUTH",
                                   AuthParameters={"USERNAME": username, "PASSWORD": password})
        return result["AuthenticationResult"]


@pytest.fixture(scope="session")
def cognito(moto_endpoint: str) -> CognitoPool:
    idp = aws_client("cognito-idp", moto_endpoint)
    policy = {"MinimumLength": 8, "RequireLowercase": False, "RequireNumbers": False,
              "RequireUppercase": False, "RequireSymbols": False}
    pool_id = idp.create_user_pool(PoolName=f"test-{uuid.uuid4().hex[:8]}",
                                   Policies={"PasswordPolicy": policy})["UserPool"]["Id"]
    client_id = idp.create_user_pool_client(
        UserPoolId=pool_id, ClientName="test-web",
        ExplicitAuthFlows=["ALLOW_USER_PASSWORD_AUTH", "ALLOW_REFRESH_TOKEN_AUTH"],
    )["UserPoolClient"]["ClientId"]
    return CognitoPool(moto_endpoint, pool_id, client_id)


@pytest.fixture(scope="session")
def moto_signing_key() -> dict[str, Any]:
    """The private JWK moto signs every pool's tokens with, for forging tokens in tests."""
    import moto.cognitoidp

    path = Path(moto.cognitoidp.__file__).parent / "resources" / "jwks-private.json.gz"
    with gzip.open(path) as handle:
        return json.load(handle)


# --- redis --------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A private redis-server on a free port (REDIS_URL overrides)."""
    if os.environ.get("ASYNCSNS_TEST_REDIS_URL"):
        yield os.environ["ASYNCSNS_TEST_REDIS_URL"]
        return
    binary = shutil.which("redis-server")
    if not binary:
        pytest.fail("redis-server is not installed (make test installs it)")
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_port(port)
    yield f"redis://127.0.0.1:{port}/0"
    proc.terminate()
    proc.wait(timeout=10)


class RedisServer:
    """A private redis-server that a test may stop and start again on the same port."""

    def __init__(self) -> None:
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

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
def redis_server() -> Iterator[RedisServer]:
    """A redis-server of the test's own (which it may restart)."""
    server = RedisServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def names() -> str:
    """A prefix that keeps this test's topics, queues and buckets apart from every other's."""
    return f"t{uuid.uuid4().hex[:8]}-"


@dataclass
class TestUser:
    """A Cognito user with a real access token."""

    __test__ = False  # not a pytest test class despite the name
    id: str
    username: str
    tokens: dict[str, str]

    @property
    def token(self) -> str:
        return self.tokens["AccessToken"]

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


async def new_user(cognito: "CognitoPool", prefix: str = "u") -> TestUser:
    """A new user in the pool, logged in (its id is the token's `sub`)."""
    from jose import jwt

    username = f"{prefix}_{uuid.uuid4().hex[:10]}"
    tokens = await asyncio.to_thread(cognito.tokens, username)
    return TestUser(jwt.get_unverified_claims(tokens["AccessToken"])["sub"], username, tokens)


# --- databases ----------------------------------------------------------------------------

class PostgresServer:
    """An admin connection to a PostgreSQL server: the machine's, or a private one."""

    def __init__(self) -> None:
        self.dsn = os.environ.get("ASYNCSNS_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
        self._private: tuple[Path, str] | None = None

    def start(self) -> None:
        if self._answers(self.dsn):
            return
        self.dsn, self._private = _start_private_postgres()

    def stop(self) -> None:
        if self._private:
            data, runner = self._private
            subprocess.run([*runner.split(), "pg_ctl", "-D", str(data), "-m", "fast", "stop"],
                           capture_output=True, check=False)

    def _answers(self, dsn: str) -> bool:
        import asyncpg

        async def probe() -> None:
            conn = await asyncpg.connect(dsn, timeout=3)
            await conn.close()

        try:
            run_sync(probe())
            return True
        except Exception:
            return False

    def execute(self, sql: str) -> None:
        import asyncpg

        async def go() -> None:
            conn = await asyncpg.connect(self.dsn)
            try:
                await conn.execute(sql)
            finally:
                await conn.close()

        run_sync(go())

    def url_for(self, database: str) -> str:
        base = self.dsn.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://", 1)
        return f"{base}/{database}"


def _start_private_postgres() -> tuple[str, tuple[Path, str]]:
    bindirs = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
    bindir = bindirs[0] if bindirs else None
    if bindir is None:
        pytest.fail("no PostgreSQL server answers and none is installed (make test installs one)")
    data = Path(tempfile.mkdtemp(prefix="asyncsns-pg-"))
    runner = ""
    if os.geteuid() == 0:
        shutil.chown(data, "postgres", "postgres")
        runner = "runuser -u postgres --"
    env_path = f"{bindir}:{os.environ['PATH']}"
    port = free_port()
    cmd = runner.split()
    subprocess.run([*cmd, "env", f"PATH={env_path}", "initdb", "-D", str(data), "-U", "postgres",
                    "--auth=trust"], check=True, capture_output=True)
    subprocess.run([*cmd, "env", f"PATH={env_path}", "pg_ctl", "-D", str(data), "-w", "-o",
                    f"-p {port} -k {data} -c listen_addresses=127.0.0.1", "start",
                    "-l", str(data / "log")], check=True, capture_output=True)
    return (f"postgresql://postgres@127.0.0.1:{port}/postgres",
            (data, f"{runner} env PATH={env_path}".strip()))


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    server = PostgresServer()
    server.start()
    yield server
    server.stop()


def _backends() -> list[str]:
    chosen = os.environ.get("ASYNCSNS_TEST_DATABASES", "sqlite,postgresql")
    return [b.strip() for b in chosen.split(",") if b.strip()]


@pytest.fixture(params=_backends())
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database for one test, on each backend in turn."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'test.db'}"
        return
    server: PostgresServer = request.getfixturevalue("postgres_server")
    name = f"t_{uuid.uuid4().hex[:16]}"
    server.execute(f'CREATE DATABASE "{name}"')
    yield server.url_for(name)
    server.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# --- talking to a service in tests ---------------------------------------------------------

def subscribe_queue(sns: Any, sqs: Any, topic_arn: str, queue_name: str,
                    event_types: list[str] | None = None,
                    filter_policy: dict[str, list[str]] | None = None) -> str:
    """A queue on the topic with raw delivery (and a filter on event type, or the filter
    policy given, as deployed)."""
    url = sqs.create_queue(QueueName=queue_name)["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])
    attributes = {"RawMessageDelivery": "true"}
    if event_types:
        filter_policy = {"event_type": event_types}
    if filter_policy:
        attributes["FilterPolicy"] = json.dumps(filter_policy)
    sns.subscribe(TopicArn=topic_arn, Protocol="sqs",
                  Endpoint=arn["Attributes"]["QueueArn"], Attributes=attributes)
    return url


@dataclass
class EventTap:
    """A raw-delivery queue on a service's topic: what the service published."""

    sqs: Any
    url: str
    seen: list[dict[str, Any]] = field(default_factory=list)

    async def wait_for(self, event_type: str, where: Callable[[dict[str, Any]], bool] | None = None,
                       timeout_s: float = 10.0) -> dict[str, Any]:
        """The first event of `event_type` (matching `where`) published so far or soon."""
        deadline = time.monotonic() + timeout_s
        while True:
            for event in self.seen:
                if event["type"] == event_type and (where is None or where(event)):
                    return event
            if time.monotonic() > deadline:
                pytest.fail(f"no {event_type} event within {timeout_s:.0f}s; "
                            f"saw {[e['type'] for e in self.seen]}")
            self.seen += await asyncio.to_thread(self._drain, 1, 1.0)

    async def drain(self, expected: int, timeout_s: float = 10.0) -> list[dict[str, Any]]:
        """Collect at least `expected` events (the app's loop keeps running meanwhile)."""
        return await asyncio.to_thread(self._drain, expected, timeout_s)

    def _drain(self, expected: int, timeout_s: float) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout_s
        while len(events) < expected and time.monotonic() < deadline:
            got = self.sqs.receive_message(QueueUrl=self.url, MaxNumberOfMessages=10,
                                           WaitTimeSeconds=1).get("Messages", [])
            for message in got:
                events += events_in(json.loads(message["Body"]))
                self.sqs.delete_message(QueueUrl=self.url, ReceiptHandle=message["ReceiptHandle"])
        return events


def event_tap(moto_endpoint: str, topic_name: str) -> tuple[str, EventTap]:
    """A topic (created) and a tap on it: what a service publishes there."""
    sns, sqs = aws_client("sns", moto_endpoint), aws_client("sqs", moto_endpoint)
    topic = sns.create_topic(Name=topic_name)["TopicArn"]
    return topic, EventTap(sqs, subscribe_queue(sns, sqs, topic, f"{topic_name}-tap"))


@contextlib.asynccontextmanager
async def serve_in_process(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """Run the app's lifespan and talk to it in-process; a 500 comes back as a response."""
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://service") as client,
    ):
        yield client


@dataclass
class LiveServer:
    """An ASGI app served by uvicorn on a real loopback port, in this event loop: for what
    in-process transport cannot do (WebSockets, streaming responses, a peer's HTTP server)."""

    server: Any
    task: asyncio.Task[None]
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def stop(self) -> None:
        self.server.should_exit = True
        await self.task


async def start_live(asgi: Any, **config: Any) -> LiveServer:
    """Serve `asgi` on a free port (uvicorn.Config keywords in `config`) once it listens."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(asgi, host="127.0.0.1", port=port,
                                           log_level="warning", **config))
    task = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110 (uvicorn offers no event for it)
        if task.done():
            raise RuntimeError(f"the server on port {port} did not start")
        await asyncio.sleep(0.01)
    return LiveServer(server, task, port)


@contextlib.asynccontextmanager
async def live(asgi: Any, **config: Any) -> AsyncIterator[LiveServer]:
    """`start_live` for the block; stopped afterwards."""
    running = await start_live(asgi, **config)
    try:
        yield running
    finally:
        await running.stop()


@dataclass
class Replica:
    """One replica of a service's app, served on a real port."""

    app: Any
    live: LiveServer

    @property
    def port(self) -> int:
        return self.live.port

    @property
    def http(self) -> str:
        return self.live.url

    @property
    def task(self) -> asyncio.Task[None]:
        return self.live.task

    def ws_url(self, path: str) -> str:
        return f"ws://127.0.0.1:{self.port}{path}"

    async def stop(self) -> None:
        await self.live.stop()


@contextlib.asynccontextmanager
async def replica_set(build: Callable[[Any], Any], settings: Any,
                      ready: Callable[[Any], Awaitable[None]] | None = None,
                      ) -> AsyncIterator[Callable[..., Awaitable[list[Replica]]]]:
    """`await start(n, **overrides)` serves n apps built from `settings` (with overrides),
    each once `ready(app)` returns; all are stopped when the block ends."""
    started: list[Replica] = []

    async def start(count: int = 1, **overrides: Any) -> list[Replica]:
        new = []
        for _ in range(count):
            app = build(settings.model_copy(update=overrides))
            new.append(Replica(app, await start_live(
                app, lifespan="on", ws_max_size=1 << 20, timeout_graceful_shutdown=2)))
            if ready is not None:
                await asyncio.wait_for(ready(app), 10)
        started.extend(new)
        return new

    try:
        yield start
    finally:
        for replica in started:
            if not replica.task.done():
                await replica.stop()


def assert_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    """The response is an RFC 9457 problem with `status`; returns its body."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["status"] == status
    assert body["type"].startswith("https://") and body["title"] and body["detail"]
    return body


async def receive_messages(sqs: Any, queue_url: str, *, wait_s: int = 2,
                           delete: bool = True) -> list[dict[str, Any]]:
    """What is visible on the queue now, long polling up to `wait_s` for the first message."""
    messages: list[dict[str, Any]] = []
    while True:
        response = await sqs.receive_message(
            QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=0 if messages else wait_s,
            MessageAttributeNames=["All"], MessageSystemAttributeNames=["ApproximateReceiveCount"])
        batch = response.get("Messages", [])
        if not batch:
            return messages
        messages += batch
        if delete:
            for message in batch:
                await sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])


async def wait_until(condition: Callable[[], Awaitable[bool]], what: str,
                     timeout_s: float = 15.0) -> None:
    """Poll `condition` until it holds; fail the test naming `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not await condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s:.0f}s waiting until {what}")
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def running(*loops: Coroutine[Any, Any, Any]) -> AsyncIterator[None]:
    """Run background loops (a relay's or consumer's `run()`) for the block, then cancel them."""
    tasks = [asyncio.create_task(loop) for loop in loops]
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


@dataclass
class WsClient:
    """A WebSocket client (the `websockets` library) that keeps every JSON frame it receives."""

    conn: Any
    frames: list[dict[str, Any]] = field(default_factory=list)
    reader: asyncio.Task[None] | None = None
    closed: Any = None

    @classmethod
    async def open(cls, url: str, token: str | None = None, *, ready: str | None = "ready",
                   **kwargs: Any) -> "WsClient":
        """Connect; with a token, send the `auth` frame and wait for `ready` (or the close)."""
        import websockets

        client = cls(await websockets.connect(url, max_size=4 << 20, **kwargs))
        if token is not None:
            await client.send({"type": "auth", "token": token})
        client.reader = asyncio.create_task(client._read())
        if token is not None and ready:
            await client.wait_for(lambda c: c.of(ready) or c.closed, ready)
        return client

    async def send(self, frame: dict[str, Any]) -> None:
        await self.conn.send(json.dumps(frame))

    async def _read(self) -> None:
        import websockets

        try:
            async for raw in self.conn:
                self.frames.append(json.loads(raw))
        except websockets.ConnectionClosed as closed:
            self.closed = closed
        else:
            self.closed = self.conn.close_code

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [f for f in self.frames if f["type"] == kind]

    async def wait_for(self, predicate: Callable[["WsClient"], Any], what: str,
                       timeout_s: float = 10.0) -> None:
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
async def ws_clients() -> AsyncIterator[Callable[..., Awaitable[WsClient]]]:
    """`await ws_clients(url, token)`: a `WsClient`, closed when the test ends."""
    clients: list[WsClient] = []

    async def open_(url: str, token: str | None, **kwargs: Any) -> WsClient:
        client = await WsClient.open(url, token, **kwargs)
        clients.append(client)
        return client

    yield open_
    for client in clients:
        with contextlib.suppress(Exception):
            await client.close()


@pytest.fixture
def api() -> Callable[[Any, TestUser], httpx.AsyncClient]:
    """`api(server, user)`: an HTTP client for a served app (its `.http` base URL) as a user."""

    def make(server: Any, user: TestUser) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=server.http, headers=user.headers, timeout=10)

    return make


def sqlite_plan(metadata: Any, statement: Any, **values: Any) -> list[str]:
    """SQLite's plan for `statement` over empty tables of `metadata`, `values` bound: the
    plan a service's database gets, which keeps no statistics. One line per step
    (`SEARCH edges USING COVERING INDEX ...`, `SCAN media`, ...)."""
    engine = create_engine("sqlite://")
    try:
        metadata.create_all(engine)
        # IN lists as one parameter per value
        expanded = statement.compile(dialect=engine.dialect).construct_expanded_state(values)
        with engine.connect() as conn:
            plan = conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {expanded.statement}",
                                        expanded.positional_parameters).all()
    finally:
        engine.dispose()
    return [row[3] for row in plan]
