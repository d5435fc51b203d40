"""`make up` without Docker: moto, redis, every service, the health app and nginx, supervised."""

import argparse
import importlib
import json
import logging
import os
import shutil
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .gateway import nginx_binary, prepare_local
from .processes import (
    Child,
    StartupFailed,
    answers_ok,
    free_port,
    listens,
    port_in_use,
    reap_stale,
    recorded_process,
    stop,
    wait_until,
    write_pid_file,
)
from .provision import provision, service_env
from .topology import Topology

log = logging.getLogger("stack.launcher")


class Shutdown(Exception):
    """SIGTERM arrived: stop like Ctrl-C does."""


@dataclass(frozen=True)
class Options:
    host: str
    port: int
    data_dir: Path
    replicas: dict[str, int]
    base_port: int
    topology: Topology
    timeout_s: float


class Stack:
    """The processes of one `up`, in the order they start (and stop in reverse)."""

    def __init__(self, options: Options) -> None:
        self.options = options
        self.data = options.data_dir.resolve()
        self.infra: list[Child] = []
        self.services: list[Child] = []
        self.front: list[Child] = []

    def child(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Child:
        return Child(name, argv, {**os.environ, **(env or {})}, self.data / "logs" / f"{name}.log",
                     self.data / "run" / f"{name}.pid")

    def up(self) -> str:
        """Start everything; returns the URL once /api/health says ok."""
        opts, deadline = self.options, time.monotonic() + self.options.timeout_s
        moto_port, redis_port = free_port(), free_port()
        endpoint = f"http://127.0.0.1:{moto_port}"
        moto = self.child("moto", [sys.executable, "-m", "stack.motoserver", "--port",
                                   str(moto_port), "--state", str(self.data / "moto.state")],
                          {"MOTO_COGNITO_IDP_USER_POOL_ID_STRATEGY": "HASH"})
        (self.data / "redis").mkdir(parents=True, exist_ok=True)
        redis = self.child("redis", [shutil.which("redis-server") or "redis-server",
                                     "--port", str(redis_port), "--bind", "127.0.0.1",
                                     "--dir", str(self.data / "redis"), "--save", "60 1",
                                     "--appendonly", "no", "--daemonize", "no"])
        self.infra = [moto, redis]
        for child in self.infra:
            child.start()
        wait_until(listens("127.0.0.1", moto_port), "moto", deadline, self.infra)
        wait_until(listens("127.0.0.1", redis_port), "redis", deadline, self.infra)
        outputs = provision(opts.topology, endpoint, opts.topology.region)
        (self.data / "outputs.json").write_text(json.dumps(outputs, indent=2))
        upstreams = self._start_services(outputs, endpoint, f"redis://127.0.0.1:{redis_port}/0",
                                         deadline)
        health_port = free_port()
        health = self.child("health", [*_uvicorn("stack.health:build_app", health_port)], {
            "HEALTH_TARGETS": json.dumps({name: [f"http://{a}" for a in addresses]
                                         for name, addresses in upstreams.items()})})
        gateway = self.child("gateway", prepare_local(
            self.data / "nginx", upstreams, health_upstream=f"127.0.0.1:{health_port}",
            listen=f"{opts.host}:{opts.port}", topology=opts.topology))
        self.front = [health, gateway]
        for child in self.front:
            child.start()
        url = f"http://{'127.0.0.1' if opts.host in ('0.0.0.0', '') else opts.host}:{opts.port}"
        wait_until(answers_ok(f"{url}/api/health"), "GET /api/health", deadline, self.children)
        return url

    def _start_services(self, outputs: dict, endpoint: str, redis_url: str,
                        deadline: float) -> dict[str, list[str]]:
        opts, port = self.options, self.options.base_port
        upstreams: dict[str, list[str]] = {}
        waves: list[list[tuple[Child, int]]] = [[], []]
        for service in opts.topology.services:
            db = f"sqlite+aiosqlite:///{self.data / f'{service.name}.db'}"
            env = service_env(outputs, service.name, database_url=db, redis_url=redis_url,
                              endpoint_url=endpoint, topology=opts.topology)
            for replica in range(opts.replicas.get(service.name, 1)):
                port += 1
                name = service.name if replica == 0 else f"{service.name}-{replica + 1}"
                child = self.child(name, _uvicorn(f"{service.name}_svc.main:build_app", port), env)
                waves[min(replica, 1)].append((child, port))
                upstreams.setdefault(service.name, []).append(f"127.0.0.1:{port}")
        # One replica per service first: it creates the shared SQLite tables alone.
        for wave in waves:
            for child, _ in wave:
                child.start()
                self.services.append(child)
            for child, child_port in wave:
                wait_until(answers_ok(f"http://127.0.0.1:{child_port}/readyz"),
                           f"{child.name} to be ready", deadline, self.children)
        return upstreams

    @property
    def children(self) -> list[Child]:
        return [*self.infra, *self.services, *self.front]

    def supervise(self) -> int:
        """Wait until a child exits (then stop everything: exit 1) or a signal (exit 0)."""
        while True:
            for child in self.children:
                code = child.exit_code()
                if code is not None:
                    log.error("%s exited with code %s; stopping the stack. %s:\n%s",
                              child.name, code, child.log_path, child.log_tail())
                    return 1
            time.sleep(0.5)

    def down(self) -> None:
        """Front first, so nothing new arrives; moto last, so it saves what services did."""
        for group in (self.front, self.services, [c for c in self.infra if c.name != "moto"],
                      [c for c in self.infra if c.name == "moto"]):
            stop(group, deadline_s=15.0)


def _uvicorn(factory: str, port: int) -> list[str]:
    return [sys.executable, "-m", "uvicorn", "--factory", factory, "--host", "127.0.0.1",
            "--port", str(port), "--no-access-log", "--timeout-graceful-shutdown", "5"]


def preflight(options: Options) -> None:
    """Refuse early, saying why, instead of failing half-way through."""
    missing = [name for name in ("redis-server",) if not shutil.which(name)]
    try:
        nginx_binary()
    except FileNotFoundError:
        missing.append("nginx")
    if missing:
        raise StartupFailed(f"{' and '.join(missing)} not installed: run `make up` (it installs "
                            f"them) or `apt-get install -y {' '.join(missing)}`")
    ports = [options.port] + list(range(options.base_port + 1, options.base_port + 1 + sum(
        options.replicas.get(s.name, 1) for s in options.topology.services)))
    busy = [p for p in ports if port_in_use(options.host if p == options.port else "127.0.0.1", p)]
    if busy:
        raise StartupFailed(f"ports in use: {busy}; stop what uses them or pick other ports "
                            "(--port, --base-port)")


def up(options: Options) -> int:
    """Run the stack in the foreground until Ctrl-C/SIGTERM (0) or a child's death (1)."""
    run_dir = options.data_dir.resolve() / "run"
    launcher_pid = run_dir / "launcher.pid"
    if (pid := recorded_process(launcher_pid)) is not None and pid != os.getpid():
        log.error("a launcher already runs on %s (pid %s)", options.data_dir, pid)
        return 1
    run_dir.mkdir(parents=True, exist_ok=True)
    write_pid_file(launcher_pid, os.getpid(), sys.argv)
    reap_stale(run_dir, keep=launcher_pid)
    stack = Stack(options)
    signal.signal(signal.SIGTERM, _raise_shutdown)
    try:
        preflight(options)
        url = stack.up()
        print(f"asyncsns is up: {url} (logs in {options.data_dir / 'logs'}; Ctrl-C stops it)",
              flush=True)
        return stack.supervise()
    except (KeyboardInterrupt, Shutdown):
        log.info("stopping")
        return 0
    except StartupFailed as exc:
        log.error("%s", exc)
        return 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut this short
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stack.down()
        launcher_pid.unlink(missing_ok=True)


def _raise_shutdown(*_: object) -> None:
    raise Shutdown


def load_topology(spec: str) -> Topology:
    """`module:attribute`, e.g. stack.topology:TOPOLOGY."""
    module, _, attribute = spec.partition(":")
    return getattr(importlib.import_module(module), attribute or "TOPOLOGY")


def parse_replicas(values: list[str]) -> dict[str, int]:
    replicas = {}
    for value in values:
        name, _, count = value.partition("=")
        if not count.isdigit() or int(count) < 1:
            raise argparse.ArgumentTypeError(f"--replicas wants NAME=N (N >= 1), not {value!r}")
        replicas[name] = int(count)
    return replicas


def main(argv: list[str] | None = None) -> None:
    """`asyncsns-stack up [--host H] [--port P] [--data-dir D] [--replicas NAME=N] ...`"""
    parser = argparse.ArgumentParser(prog="asyncsns-stack", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    cmd = commands.add_parser("up", help="start the stack in the foreground")
    cmd.add_argument("--host", default="127.0.0.1", help="where the gateway listens")
    cmd.add_argument("--port", type=int, default=8080)
    cmd.add_argument("--data-dir", type=Path, default=Path(".data"))
    cmd.add_argument("--replicas", action="append", default=[], metavar="NAME=N")
    cmd.add_argument("--base-port", type=int, default=8100,
                     help="services listen on the ports after this one")
    cmd.add_argument("--topology", default="stack.topology:TOPOLOGY", help=argparse.SUPPRESS)
    cmd.add_argument("--timeout", type=float, default=90.0, help="seconds to come up")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per readiness poll
    topology = load_topology(args.topology)
    unknown = set(replicas := parse_replicas(args.replicas)) - {s.name for s in topology.services}
    if unknown:
        parser.error(f"--replicas names unknown services: {sorted(unknown)}")
    options = Options(host=args.host, port=args.port, data_dir=args.data_dir, replicas=replicas,
                      base_port=args.base_port, topology=topology, timeout_s=args.timeout)
    sys.exit(up(options))


if __name__ == "__main__":
    main()
