"""The stack's /api/health: ok only when every replica of every service is ready."""

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from fastapi.testclient import TestClient

from chassis.testing import free_port
from stack.health import HealthSettings, build_app


def readyz_server(status: int) -> ThreadingHTTPServer:
    class Ready(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(status if self.path == "/readyz" else 404)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Ready)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture
def replicas() -> Iterator[dict[str, str]]:
    """A ready replica, a replica that says it is not ready, and an address nobody serves."""
    ready, unready = readyz_server(200), readyz_server(503)
    yield {"ready": f"http://127.0.0.1:{ready.server_port}",
           "unready": f"http://127.0.0.1:{unready.server_port}",
           "dead": f"http://127.0.0.1:{free_port()}"}
    ready.shutdown()
    unready.shutdown()


def health(targets: dict[str, list[str]]):
    with TestClient(build_app(HealthSettings(health_targets=targets))) as client:
        return client.get("/api/health")


def test_ok_when_every_replica_is_ready(replicas: dict[str, str]) -> None:
    response = health({"profile": [replicas["ready"], replicas["ready"]],
                       "post": [replicas["ready"]]})

    assert response.status_code == 200
    assert response.json() == {"status": "ok", "services": {"profile": "ok", "post": "ok"}}


def test_one_unready_replica_makes_the_stack_unavailable(replicas: dict[str, str]) -> None:
    response = health({"profile": [replicas["ready"], replicas["unready"]],
                       "post": [replicas["ready"]], "chat": [replicas["dead"]]})

    assert response.status_code == 503
    assert response.headers["content-type"] == "application/problem+json"
    services = response.json()["services"]
    assert services["post"] == "ok"
    assert services["profile"] == f"{replicas['unready']}: 503"
    assert services["chat"].startswith(f"{replicas['dead']}: ConnectError")


def test_targets_come_from_the_environment(monkeypatch: pytest.MonkeyPatch,
                                           replicas: dict[str, str]) -> None:
    monkeypatch.setenv("HEALTH_TARGETS", f'{{"profile": ["{replicas["ready"]}"]}}')

    with TestClient(build_app()) as client:
        assert client.get("/api/health").json()["services"] == {"profile": "ok"}


def test_liveness_does_not_depend_on_the_services(replicas: dict[str, str]) -> None:
    with TestClient(build_app(HealthSettings(health_targets={"chat": [replicas["dead"]]}))) as c:
        assert c.get("/api/health").status_code == 503
        response = c.get("/healthz")

    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
