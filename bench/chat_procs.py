"""The processes of a stack that `python -m bench.chat` watches: resident memory and CPU time
from /proc, the chat replicas' ports, and what nginx logged about running out of connections."""

import json
import os
import re
from pathlib import Path

TICKS_PER_S = os.sysconf("SC_CLK_TCK")
CHAT_APP = "chat_svc.main:build_app"


def stack_processes(data_dir: Path | None) -> dict[str, list[int]]:
    """Name -> pids of a launcher's children (with their own children: nginx's workers).

    Without a data dir, only the chat replicas, found by their command line."""
    if data_dir is None or not (data_dir / "run").is_dir():
        return {f"chat-{i + 1}": [pid] for i, pid in enumerate(sorted(
            pid for pid, argv in _command_lines().items() if CHAT_APP in argv))}
    children = _children()
    found = {}
    for pid_file in sorted((data_dir / "run").glob("*.pid")):
        if pid_file.stem == "launcher":
            continue
        try:
            pid = json.loads(pid_file.read_text())["pid"]
        except (OSError, ValueError, KeyError):
            continue
        if Path(f"/proc/{pid}").exists():
            found[pid_file.stem] = [pid, *children.get(pid, [])]
    return found


def chat_ports(data_dir: Path | None) -> list[int]:
    """The ports the chat replicas listen on (from their uvicorn command lines)."""
    ports = []
    for name, pids in stack_processes(data_dir).items():
        if name == "chat" or name.startswith("chat-"):
            argv = _command_lines().get(pids[0], "").split("\0")
            if CHAT_APP in argv and "--port" in argv:
                ports.append(int(argv[argv.index("--port") + 1]))
    return ports


def rss_kib(pids: list[int]) -> int:
    """Resident memory of these processes together (VmRSS), in KiB."""
    total = 0
    for pid in pids:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        total += next((int(line.split()[1]) for line in status.splitlines()
                       if line.startswith("VmRSS:")), 0)
    return total


def cpu_seconds(pids: list[int]) -> float:
    """User plus system CPU time these processes have used so far."""
    ticks = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])
    return ticks / TICKS_PER_S


def gateway_limits(data_dir: Path | None) -> tuple[int, int] | None:
    """The gateway's (worker_processes, worker_connections), from its nginx.conf."""
    conf = data_dir / "nginx" / "nginx.conf" if data_dir else None
    if conf is None or not conf.exists():
        return None
    found = dict(re.findall(r"^\s*(worker_processes|worker_connections)\s+(\d+);",
                            conf.read_text(), re.M))
    if len(found) < 2:
        return None
    return int(found["worker_processes"]), int(found["worker_connections"])


def machine_busy_seconds() -> float:
    """CPU time every core of the machine has spent busy since boot (all processes)."""
    fields = [int(f) for f in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / TICKS_PER_S


def nginx_complaints(data_dir: Path | None) -> int:
    """How often the gateway logged that its worker_connections were not enough."""
    log = data_dir / "nginx" / "error.log" if data_dir else None
    if log is None or not log.exists():
        return 0
    return log.read_text(errors="replace").count("worker_connections are not enough")


def _command_lines() -> dict[int, str]:
    lines = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                lines[int(entry.name)] = (entry / "cmdline").read_text(errors="replace")
            except OSError:
                continue
    return lines


def _children() -> dict[int, list[int]]:
    by_parent: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            by_parent.setdefault(parent, []).append(int(entry.name))
    return by_parent
