"""The processes of one local stack: moto, redis, the services, the health app and nginx."""

import asyncio
import functools
import json
import logging
import os
import shutil
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from chassis.db import ensure_database
from chassis.ports import free_port_block

from .gateway import prepare_local
from .processes import Child, StartupFailed, answers_ok, stop, wait_until
from .provision import provision, service_env
from .serve import unix_socket_fits
from .topology import Topology
from .vapid import kept_vapid_keys

log = logging.getLogger("stack.launcher")
Addresses = dict[str, list[str]]  # service -> its processes' addresses
# moto stands in for SNS, SQS, S3 and Cognito, which on AWS do not share the services' CPU.
# When the machine is saturated it yields to the services: a flood of requests then finishes
# sooner and its events flow later (the follow flood: 607-764 -> 1,105-1,205 follows/s,
# alternating runs). With idle CPU a nice value changes nothing.
MOTO_NICE = 10
# A service with `events_process` (all but the call service) has its outbox
# relayed and its queues drained by a process of its own beside the replicas that serve
# requests, and that process yields the CPU as moto does: the event pipeline takes what
# requests leave, as on AWS it has CPU of its own (follows p99 36-39 -> 32-34 ms, posts p99
# 47-48 -> 39-44 ms; chat at 260 messages/s p99 67-101 -> 53-91 ms; alternating runs).
EVENTS_NICE = 10


@dataclass(frozen=True)
class Options:
    """What `asyncsns-stack up` was asked for."""

    host: str
    port: int
    data_dir: Path
    replicas: dict[str, int]
    base_port: int
    topology: Topology
    timeout_s: float
    database_url: str | None = None

    def database_for(self, service: str) -> str:
        """The service's database: a SQLite file in the data dir, or one on a given server."""
        if self.database_url:
            return self.database_url.format(service=service)
        return f"sqlite+aiosqlite:///{self.data_dir.resolve() / f'{service}.db'}"


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
        endpoint = f"http://127.0.0.1:{self._start_moto(deadline)}"
        redis_port = self._start_redis(deadline)
        outputs = provision(opts.topology, endpoint, opts.topology.region)
        (self.data / "outputs.json").write_text(json.dumps(outputs, indent=2))
        url = f"http://{'127.0.0.1' if opts.host in ('0.0.0.0', '') else opts.host}:{opts.port}"
        upstreams, workers, replicas = self._start_services(
            outputs, endpoint, f"redis://127.0.0.1:{redis_port}/0", url, deadline)
        health_port = free_port_block(1)
        health = self.child("health", _serve("stack.health:build_app", health_port), {
            "HEALTH_TARGETS": json.dumps({name: [f"http://{a}" for a in addresses]
                                         for name, addresses in {**upstreams, **workers}.items()})})
        gateway = self.child("gateway", prepare_local(
            self.data / "nginx", replicas, health_upstream=f"127.0.0.1:{health_port}",
            listen=f"{opts.host}:{opts.port}", topology=opts.topology,
            storage=endpoint.removeprefix("http://")))
        self.front = [health, gateway]
        for child in self.front:
            child.start()
        wait_until(answers_ok(f"{url}/api/health"), "GET /api/health", deadline, self.children)
        return url

    def _start_moto(self, deadline: float) -> int:
        port_file = self.data / "run" / "moto.port"
        port_file.unlink(missing_ok=True)
        moto = self.child("moto", [sys.executable, "-m", "stack.motoserver", "--port", "0",
                                   "--port-file", str(port_file),
                                   "--state", str(self.data / "moto.state"),
                                   "--nice", str(MOTO_NICE)],
                          {"MOTO_COGNITO_IDP_USER_POOL_ID_STRATEGY": "HASH"})
        self.infra.append(moto)
        moto.start()
        wait_until(port_file.exists, "moto", deadline, self.infra)
        return int(port_file.read_text())

    def _start_redis(self, deadline: float, attempts: int = 3) -> int:
        """redis-server on a free port, checked to be ours: another process may take the port."""
        (self.data / "redis").mkdir(parents=True, exist_ok=True)
        for _ in range(attempts):
            port = free_port_block(1)
            redis = self.child("redis", [shutil.which("redis-server") or "redis-server",
                                         "--port", str(port), "--bind", "127.0.0.1",
                                         "--dir", str(self.data / "redis"), "--save", "60 1",
                                         "--appendonly", "no", "--daemonize", "no"])
            redis.start()
            try:
                wait_until(lambda r=redis, p=port: redis_pid(p) == r.proc.pid, "redis",
                           deadline, [redis])
            except StartupFailed:
                stop([redis])
                continue
            self.infra.append(redis)
            return port
        raise StartupFailed(f"redis-server did not start; see {self.data / 'logs' / 'redis.log'}")

    def _start_services(self, outputs: dict, endpoint: str, redis_url: str, public_url: str,
                        deadline: float) -> tuple[Addresses, Addresses, Addresses]:
        """Every service's replicas, which serve requests, and its other processes: its
        workers and the one that relays its outbox and drains its queues. Returns their
        addresses: the replicas' TCP ports, the other processes' (for the health summary
        only), and the replicas as the gateway reaches them (their Unix sockets)."""
        opts, port = self.options, self.options.base_port
        upstreams: Addresses = {}
        gateway: Addresses = {}
        workers: Addresses = {}
        waves: list[list[tuple[Child, int]]] = [[], []]
        for service in opts.topology.services:
            db = opts.database_for(service.name)
            if not db.startswith("sqlite"):
                asyncio.run(ensure_database(db))
            search = f"sqlite:///{self.data / service.name}.search" if service.needs_search \
                else None
            env = functools.partial(
                service_env, outputs, service.name, database_url=db, redis_url=redis_url,
                endpoint_url=endpoint, topology=opts.topology, search_url=search,
                public_url=public_url, vapid=kept_vapid_keys(self.data / "vapid.json"))
            app = f"{service.name}_svc.main:build_app"
            for replica in range(opts.replicas.get(service.name, service.replicas)):
                port += 1
                name = service.name if replica == 0 else f"{service.name}-{replica + 1}"
                uds = str(self.data / "run" / f"{name}.sock")
                if not unix_socket_fits(uds):
                    uds = None  # a data directory this deep: the gateway uses TCP
                child = self.child(name, _serve(app, port, uds),
                                   env(serve_only=service.events_process))
                waves[min(replica, 1)].append((child, port))
                upstreams.setdefault(service.name, []).append(f"127.0.0.1:{port}")
                gateway.setdefault(service.name, []).append(
                    f"unix:{uds}" if uds else f"127.0.0.1:{port}")
            # A worker stages events in its service's outbox; where an events process relays
            # it at nice 10, the worker (at nice 0) is not to take the relay's lease.
            processes = [(w.name, w.app, env(worker=w.name, relays=not service.events_process), 0)
                         for w in service.workers]
            if service.events_process:
                processes.append((f"{service.name}-events", app, env(), EVENTS_NICE))
            for name, factory, environment, nice in processes:
                port += 1
                child = self.child(name, _serve(factory, port, nice=nice), environment)
                waves[1].append((child, port))
                workers[name] = [f"127.0.0.1:{port}"]
        # One replica per service first: it creates the shared SQLite tables alone.
        for wave in waves:
            for child, _ in wave:
                child.start()
                self.services.append(child)
            for child, child_port in wave:
                wait_until(answers_ok(f"http://127.0.0.1:{child_port}/readyz"),
                           f"{child.name} to be ready", deadline, self.children)
        return upstreams, workers, gateway

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


def redis_pid(port: int) -> int | None:
    """The process id the redis-server on this port reports, or None if none answers."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(b"INFO server\r\n")
            reply = b""
            while b"process_id:" not in reply or not reply.endswith(b"\r\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                reply += chunk
    except OSError:
        return None
    for line in reply.decode(errors="replace").splitlines():
        if line.startswith("process_id:"):
            return int(line.partition(":")[2])
    return None


def _serve(factory: str, port: int, uds: str | None = None, nice: int = 0) -> list[str]:
    """A service process: on `port`, and on the Unix socket `uds` (the gateway's way in)."""
    return [sys.executable, "-m", "stack.serve", factory, "--port", str(port),
            *(["--uds", uds] if uds else []), *(["--nice", str(nice)] if nice else [])]
