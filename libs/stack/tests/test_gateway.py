"""The rendered nginx config: valid, routing like the ALB, answering problem+json itself."""

import http.client
import json
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from chassis.testing import free_port, wait_for_port
from stack.gateway import nginx_binary, prepare_local, render_nginx_conf
from stack.topology import TOPOLOGY, Service, Topology, UserPool

TOPO = Topology(
    services=(Service(name="alpha", port=1, routes=("/api/alpha/", "/ws/alpha")),
              Service(name="beta", port=2, routes=("/api/beta/",))),
    user_pool=UserPool(name="u", client="c"),
)


STREAM_RELEASED = threading.Event()


class Echo(BaseHTTPRequestHandler):
    """Answers with its name, the path and the headers it received."""

    def do_GET(self) -> None:
        if self.path.startswith("/api/alpha/stream"):
            self._stream()
            return
        if self.path.startswith("/api/alpha/secret"):
            self._answer(401, {"status": 401, "length": len(self.headers["Authorization"])},
                         "application/problem+json")
            return
        self._answer(200, {"server": self.server.name, "path": self.path,
                           "headers": {k.lower(): v for k, v in self.headers.items()}})

    def _answer(self, status: int, body: dict, content_type: str = "application/json") -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _stream(self) -> None:
        """An event stream: one event now, the next once the test has seen the first."""
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("X-Accel-Buffering", "no")
        self.end_headers()
        self.wfile.write(b"data: first\n\n")
        self.wfile.flush()
        STREAM_RELEASED.wait(10)
        self.wfile.write(b"data: second\n\n")

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def echo_servers(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    monkeypatch.setattr(http.client, "_MAXLINE", 1 << 20)  # http.server's own limit is 64 KiB
    servers = []
    for name in ("one", "two", "health"):
        server = ThreadingHTTPServer(("127.0.0.1", 0), Echo)
        server.name = name
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
    yield [f"127.0.0.1:{s.server_port}" for s in servers]
    for server in servers:
        server.shutdown()


@pytest.fixture
def gateway(tmp_path: Path, echo_servers: list[str]) -> Iterator[str]:
    """nginx in the foreground: alpha has two replicas, beta's only replica is down."""
    port = free_port()
    command = prepare_local(tmp_path / "nginx", {"alpha": echo_servers[:2],
                                                 "beta": [f"127.0.0.1:{free_port()}"]},
                            health_upstream=echo_servers[2], listen=f"127.0.0.1:{port}",
                            topology=TOPO)
    proc = subprocess.Popen(command, stderr=subprocess.PIPE)
    try:
        wait_for_port(port)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def nginx_accepts(conf: Path, prefix: Path) -> subprocess.CompletedProcess:
    return subprocess.run([nginx_binary(), "-t", "-c", str(conf), "-p", str(prefix),
                           "-e", str(prefix / "error.log")], capture_output=True, text=True)


def test_rendered_config_passes_nginx_t(tmp_path: Path) -> None:
    conf = tmp_path / "nginx.conf"
    conf.write_text(render_nginx_conf(
        {"profile": ["127.0.0.1:8101", "127.0.0.1:8102"]}, health_upstream="127.0.0.1:8099",
        listen=f"127.0.0.1:{free_port()}", prefix_dir=str(tmp_path)))

    result = nginx_accepts(conf, tmp_path)

    assert result.returncode == 0, result.stderr
    # every upstream sends a request to the replica with the fewest in flight
    lines = [line.strip() for line in conf.read_text().splitlines()]
    upstreams = [i for i, line in enumerate(lines) if line.startswith("upstream ")]
    assert upstreams and all(lines[i + 1] == "least_conn;" for i in upstreams)


def test_container_config_leaves_process_settings_to_the_image() -> None:
    conf = render_nginx_conf({"profile": ["profile:8000"]}, health_upstream="health:8099",
                             listen="8080", prefix_dir=None)

    assert "daemon" not in conf and "pid " not in conf  # the image's CMD says daemon off
    assert "listen 8080;" in conf and "server profile:8000" in conf
    assert all(f"location {route} " in conf for route in TOPOLOGY.service("profile").routes)


def test_routes_keep_the_full_path_and_balance_over_replicas(gateway: str) -> None:
    answers = [httpx.get(f"{gateway}/api/alpha/things/1?x=2",
                         headers={"traceparent": "00-abc-def-01"}).json() for _ in range(4)]

    assert {a["server"] for a in answers} == {"one", "two"}
    assert {a["path"] for a in answers} == {"/api/alpha/things/1?x=2"}
    headers = answers[0]["headers"]
    assert headers["traceparent"] == "00-abc-def-01"
    assert headers["x-forwarded-for"] == "127.0.0.1"
    assert headers["x-forwarded-proto"] == "http"


def test_a_stream_that_asks_not_to_be_buffered_arrives_as_it_is_written(gateway: str) -> None:
    """Responses are buffered at the gateway, except those marked `X-Accel-Buffering: no`."""
    STREAM_RELEASED.clear()
    with httpx.stream("GET", f"{gateway}/api/alpha/stream", timeout=5) as response:
        chunks = response.iter_bytes()
        first = next(chunks)
        STREAM_RELEASED.set()
        rest = b"".join(chunks)

    assert first == b"data: first\n\n"
    assert rest == b"data: second\n\n"


def test_health_goes_to_the_health_app(gateway: str) -> None:
    assert httpx.get(f"{gateway}/api/health").json()["server"] == "health"


def test_websocket_routes_ask_for_an_upgrade(gateway: str) -> None:
    headers = {"Upgrade": "websocket", "Connection": "Upgrade"}
    answer = httpx.get(f"{gateway}/ws/alpha", headers=headers).json()

    assert answer["headers"]["upgrade"] == "websocket"
    assert answer["headers"]["connection"].lower() == "upgrade"


@pytest.mark.parametrize(("path", "status"), [("/nowhere", 404), ("/api/gamma/x", 404),
                                              ("/api/beta/x", 502)])
def test_gateway_errors_are_problem_json(gateway: str, path: str, status: int) -> None:
    response = httpx.get(f"{gateway}{path}")

    assert response.status_code == status
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["status"] == status


def test_oversized_body_is_refused_as_problem_json(gateway: str) -> None:
    response = httpx.post(f"{gateway}/api/alpha/x", content=b"x" * (1024 * 1024 + 1))

    assert response.status_code == 413
    assert response.headers["content-type"] == "application/problem+json"


def test_a_250_kb_token_reaches_the_service(gateway: str) -> None:
    token = "a" * 250_000
    response = httpx.get(f"{gateway}/api/alpha/secret",
                         headers={"Authorization": f"Bearer {token}"})

    assert response.status_code == 401
    assert response.json()["length"] == len("Bearer ") + len(token)
