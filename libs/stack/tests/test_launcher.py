"""The launcher with a stand-in service: it comes up, balances, supervises and stops cleanly."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import pytest

from stack.local import EVENTS_NICE
from stack.serve import unix_socket_fits
from stack.testing import running_stack

FAKE_SERVICE = '''
"""A chassis service that says which process answered."""
import os
from fastapi import APIRouter, Request
from sqlalchemy import MetaData
from chassis.app import ServiceSpec, create_app
from chassis.settings import ServiceSettings

router = APIRouter()

@router.get("/api/fake/whoami")
async def whoami(request: Request) -> dict:
    return {"pid": os.getpid(), "database": os.environ["DATABASE_URL"],
            "serve_only": request.app.state.settings.serve_only}

def build_app():
    return create_app(ServiceSettings(), ServiceSpec(name="fake", metadata=MetaData(),
                                                     routers=[router]))
'''

FAKE_TOPOLOGY = '''
from stack.topology import Service, Topology, UserPool

TOPOLOGY = Topology(services=(Service(name="fake", port=0, routes=("/api/fake/",),
                                      publishes=False),),
                    user_pool=UserPool(name="fake-users", client="fake-web"))
APART = Topology(services=(Service(name="fake", port=0, routes=("/api/fake/",),
                                   publishes=False, events_process=True),),
                 user_pool=UserPool(name="fake-users", client="fake-web"))
'''


@pytest.fixture
def fake_env(tmp_path: Path) -> dict[str, str]:
    """PYTHONPATH with a `fake` service and a topology that has only it."""
    code = tmp_path / "code"
    (code / "fake_svc").mkdir(parents=True)
    (code / "fake_svc" / "__init__.py").write_text("")
    (code / "fake_svc" / "main.py").write_text(textwrap.dedent(FAKE_SERVICE))
    (code / "fake_topology.py").write_text(textwrap.dedent(FAKE_TOPOLOGY))
    path = os.pathsep.join(filter(None, [str(code), os.environ.get("PYTHONPATH")]))
    return {"PYTHONPATH": path}


FAKE_ARGS = ("--topology", "fake_topology:TOPOLOGY")


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_replicas_share_the_traffic_and_sigterm_stops_everything(tmp_path: Path,
                                                                 fake_env: dict) -> None:
    data = tmp_path / "data"
    with running_stack(data, *FAKE_ARGS, "--replicas", "fake=2", env=fake_env) as stack:
        health = httpx.get(f"{stack.url}/api/health").json()
        answers = [httpx.get(f"{stack.url}/api/fake/whoami").json() for _ in range(6)]
        children = stack.child_pids()

        assert health == {"status": "ok", "services": {"fake": "ok"}}
        assert len({a["pid"] for a in answers}) == 2
        assert {a["database"] for a in answers} == {f"sqlite+aiosqlite:///{data / 'fake.db'}"}
        assert set(children) == {"moto", "redis", "fake", "fake-2", "health", "gateway"}
        # The gateway reaches the replicas over their Unix sockets.
        conf = (data / "nginx" / "nginx.conf").read_text()
        assert all(f"server unix:{data / 'run' / name}.sock " in conf
                   for name in ("fake", "fake-2"))

        assert stack.stop(signal.SIGTERM) == 0
    assert not any(alive(pid) for pid in children.values())
    assert (data / "moto.state").stat().st_size > 0
    assert list((data / "run").glob("*.pid")) == []
    assert list((data / "run").glob("*.sock")) == []
    assert {p.name for p in (data / "logs").iterdir()} >= {"moto.log", "fake.log", "gateway.log"}


def test_a_service_with_an_events_process_runs_it_apart_at_a_lower_priority(
        tmp_path: Path, fake_env: dict) -> None:
    with running_stack(tmp_path / "data", "--topology", "fake_topology:APART",
                       env=fake_env) as stack:
        health = httpx.get(f"{stack.url}/api/health").json()
        answers = [httpx.get(f"{stack.url}/api/fake/whoami").json() for _ in range(3)]
        children = stack.child_pids()

        assert health == {"status": "ok", "services": {"fake": "ok", "fake-events": "ok"}}
        # Requests reach the replica, which only serves them; the events process yields.
        assert {(a["pid"], a["serve_only"]) for a in answers} == {(children["fake"], True)}
        assert os.getpriority(os.PRIO_PROCESS, children["fake-events"]) == \
            os.getpriority(os.PRIO_PROCESS, children["fake"]) + EVENTS_NICE


def test_a_data_dir_too_deep_for_unix_sockets_is_reached_over_tcp(tmp_path: Path,
                                                                  fake_env: dict) -> None:
    data = tmp_path / ("d" * (110 - len(str(tmp_path)))) / "data"
    assert not unix_socket_fits(str(data / "run" / "fake.sock"))
    with running_stack(data, *FAKE_ARGS, env=fake_env) as stack:
        assert httpx.get(f"{stack.url}/api/fake/whoami").status_code == 200
        conf = (data / "nginx" / "nginx.conf").read_text()
        assert "server 127.0.0.1:" in conf and "unix:" not in conf


def test_a_child_that_dies_takes_the_stack_down_with_an_error(tmp_path: Path,
                                                              fake_env: dict) -> None:
    with running_stack(tmp_path / "data", *FAKE_ARGS, env=fake_env) as stack:
        children = stack.child_pids()
        os.kill(children["fake"], signal.SIGKILL)

        assert stack.proc.wait(timeout=60) == 1
    assert "fake exited with code -9" in stack.log()
    assert not any(alive(pid) for pid in children.values())


def test_a_killed_launcher_leaves_nothing_in_the_way_of_the_next(tmp_path: Path,
                                                                 fake_env: dict) -> None:
    data = tmp_path / "data"
    with running_stack(data, *FAKE_ARGS, env=fake_env) as first:
        orphans = first.child_pids()
        first.stop(signal.SIGKILL)  # its children run on, in their own sessions
    try:
        assert all(alive(pid) for pid in orphans.values())

        with running_stack(data, *FAKE_ARGS, env=fake_env) as second:
            assert httpx.get(f"{second.url}/api/fake/whoami").status_code == 200
            assert not any(alive(pid) for pid in orphans.values())
    finally:
        for pid in orphans.values():  # should the launcher fail to, leave no process behind
            if alive(pid):
                os.killpg(pid, signal.SIGKILL)


def test_missing_binaries_are_named_with_the_way_to_get_them(tmp_path: Path,
                                                             fake_env: dict) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "stack.launcher", "up", "--data-dir", str(tmp_path), *FAKE_ARGS],
        env={**os.environ, **fake_env, "PATH": str(tmp_path)}, capture_output=True, text=True,
        timeout=60)

    assert result.returncode == 1
    assert "redis-server" in result.stderr and "make up" in result.stderr


def test_a_second_launcher_on_the_same_data_dir_is_refused(tmp_path: Path,
                                                           fake_env: dict) -> None:
    with running_stack(tmp_path / "data", *FAKE_ARGS, env=fake_env):
        started = time.monotonic()
        result = subprocess.run(
            [sys.executable, "-m", "stack.launcher", "up", "--data-dir", str(tmp_path / "data"),
             *FAKE_ARGS], env={**os.environ, **fake_env}, capture_output=True, text=True,
            timeout=60)

        assert result.returncode == 1
        assert "already runs" in result.stderr
        assert time.monotonic() - started < 30
