"""`make up` without Docker: moto, redis, every service, the health app and nginx, supervised."""

import argparse
import importlib
import logging
import os
import shutil
import signal
import sys
from pathlib import Path

from .gateway import nginx_binary
from .local import Options, Stack
from .processes import StartupFailed, port_in_use, reap_stale, recorded_process, write_pid_file
from .topology import Topology

log = logging.getLogger("stack.launcher")


class Shutdown(Exception):
    """SIGTERM arrived: stop like Ctrl-C does."""


def preflight(options: Options) -> None:
    """Refuse early, saying why, instead of failing half-way through."""
    missing = [name for name in ("redis-server", "ffmpeg") if not shutil.which(name)]
    try:
        nginx_binary()
    except FileNotFoundError:
        missing.append("nginx")
    if missing:
        raise StartupFailed(f"{' and '.join(missing)} not installed: run `make up` (it installs "
                            f"them) or `apt-get install -y {' '.join(missing)}`")
    ports = [options.port] + list(range(options.base_port + 1, options.base_port + 1 + sum(
        options.replicas.get(s.name, s.replicas) + len(s.workers) + s.events_process
        for s in options.topology.services)))
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
    cmd.add_argument("--database-url", metavar="TEMPLATE",
                     help="e.g. postgresql+asyncpg://postgres@127.0.0.1:5432/{service} "
                          "(created if missing); default: a SQLite file per service")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per readiness poll
    topology = load_topology(args.topology)
    unknown = set(replicas := parse_replicas(args.replicas)) - {s.name for s in topology.services}
    if unknown:
        parser.error(f"--replicas names unknown services: {sorted(unknown)}")
    options = Options(host=args.host, port=args.port, data_dir=args.data_dir, replicas=replicas,
                      base_port=args.base_port, topology=topology, timeout_s=args.timeout,
                      database_url=args.database_url)
    sys.exit(up(options))


if __name__ == "__main__":
    main()
