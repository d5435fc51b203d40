"""Call replicas as real uvicorn servers on one database and one redis-server (moto for
Cognito, SNS and SQS), and a real coturn (Debian's turnserver).

coturn runs as deployed, with TURN REST API credentials (`--use-auth-secret`), but on loopback
only: relay addresses are 127.0.0.1, so loopback peers must be allowed.
"""

import secrets
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiortc import AudioStreamTrack, VideoStreamTrack

from call_svc.client import CallPeer
from call_svc.commands import record_user
from call_svc.main import CHAT_QUEUE, PROFILE_QUEUE, build_app
from call_svc.settings import CallSettings
from chassis.ports import free_port, free_port_block, wait_for_port
from chassis.testing import (
    EventTap,
    Replica,
    TestUser,
    WsClient,
    aws_client,
    event_tap,
    replica_set,
)
from profile_svc.testing import known_user
from stack.provision import let_the_gateway_read

RELAY_PORTS = 20  # allocations one test session holds at once, with room to spare


@dataclass(frozen=True)
class Coturn:
    """Where a running turnserver listens and the secret its credentials are signed with."""

    host: str
    port: int
    secret: str
    realm: str
    log: Path

    @property
    def url(self) -> str:
        return f"turn:{self.host}:{self.port}?transport=udp"


@pytest.fixture(scope="session")
def coturn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Coturn]:
    """A turnserver on a free port of 127.0.0.1 that accepts REST API credentials."""
    binary = shutil.which("turnserver")
    if not binary:
        pytest.skip("coturn is not installed (apt-get install coturn)")
    workdir = tmp_path_factory.mktemp("coturn")
    server = Coturn("127.0.0.1", free_port(), secrets.token_urlsafe(24), "asyncsns",
                    workdir / "turnserver.log")
    relay_low = free_port_block(RELAY_PORTS)
    command = [
        binary, "--listening-ip", server.host, "--listening-port", str(server.port),
        "--relay-ip", server.host, "--min-port", str(relay_low),
        "--max-port", str(relay_low + RELAY_PORTS - 1),
        "--use-auth-secret", f"--static-auth-secret={server.secret}", "--realm", server.realm,
        "--no-tls", "--no-dtls", "--no-cli", "--allow-loopback-peers",
        # Its defaults for these are under /var: keep everything in the temp dir.
        "--userdb", str(workdir / "turndb"), "--pidfile", str(workdir / "turnserver.pid"),
        "--log-file", "stdout", "--simple-log",
    ]
    with server.log.open("wb") as log:
        proc = subprocess.Popen(command, cwd=workdir, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_port(server.port, timeout=10)
    except TimeoutError:
        proc.kill()
        proc.wait()
        pytest.fail(f"turnserver did not start (exit {proc.returncode}):\n"
                    f"{server.log.read_text()}")
    yield server
    proc.terminate()
    proc.wait(timeout=10)


# --- call replicas --------------------------------------------------------------------------

@pytest.fixture
def tap(moto_endpoint: str, names: str) -> tuple[str, EventTap]:
    return event_tap(moto_endpoint, f"{names}call-events")


@pytest.fixture
def settings(database_url, cognito, moto_endpoint, tap, names, redis_server) -> CallSettings:
    sqs = aws_client("sqs", moto_endpoint)
    for queue in (PROFILE_QUEUE, CHAT_QUEUE):
        sqs.create_queue(QueueName=names + queue)
    s3 = aws_client("s3", moto_endpoint)
    for bucket in ("media", "uploads"):
        s3.create_bucket(Bucket=f"{names}{bucket}")
    let_the_gateway_read(s3, f"{names}media")  # players fetch the HLS as they would locally
    return CallSettings(
        database_url=database_url, aws_endpoint_url=moto_endpoint, aws_access_key_id="testing",
        aws_secret_access_key="testing", events_topic_arn=tap[0], queue_prefix=names,
        redis_url=redis_server.url, consumer_wait_time_s=1, consumer_retry_base_s=0,
        outbox_poll_interval_s=0.1, log_json=False, sweep_interval_s=0.2,
        media_bucket=f"{names}media", uploads_bucket=f"{names}uploads",
        media_base_url=f"{moto_endpoint}/{names}media/media", hls_segment_s=1.0, **cognito.env())


@pytest.fixture
async def replicas(settings) -> AsyncIterator[Any]:
    """`await replicas(n, **overrides)`: n call replicas serving on real ports, each
    subscribed to Redis."""
    async with replica_set(build_app, settings, lambda app: app.state.hub.ready.wait()) as start:
        yield start


def ws_url(replica: Replica, call_id: str) -> str:
    return replica.ws_url(f"/ws/calls/{call_id}")


async def start_call(api, replica: Replica, caller: TestUser, callees: list[TestUser],
                     **body: Any) -> dict[str, Any]:
    """`POST /api/calls` as `caller`; the 201 body."""
    async with api(replica, caller) as client:
        response = await client.post("/api/calls", json={
            "callee_ids": [u.id for u in callees], "media": "video"} | body)
    assert response.status_code == 201, response.text
    return response.json()


def peer(replica: Replica, started: dict[str, Any], user: TestUser,
         tracks: list[Any] | None = None) -> CallPeer:
    """An aiortc participant of the started call, signaling through `replica`."""
    return CallPeer(ws_url(replica, started["call_id"]), user.token,
                    ice_servers=started["ice_servers"],
                    tracks=[AudioStreamTrack(), VideoStreamTrack()] if tracks is None else tracks)


@pytest.fixture
def user(cognito):
    """A Cognito user the call service knows (its `profile.created` applied)."""

    async def make(replica: Replica, prefix: str = "u") -> TestUser:
        return await known_user(cognito, replica.app.state.db, record_user, prefix)

    return make


@pytest.fixture
def connect(ws_clients):
    """`await connect(replica, call_id, user)`: a signaling client that got `ready`."""

    async def open_(replica: Replica, call_id: str, user: TestUser | None, **kwargs: Any
                    ) -> WsClient:
        return await ws_clients(ws_url(replica, call_id), user.token if user else None, **kwargs)

    return open_
