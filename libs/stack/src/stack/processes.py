"""Child processes of the launcher: started with a log and a pid file, stopped with a deadline."""

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

log = logging.getLogger("stack.launcher")


class StartupFailed(RuntimeError):
    """The stack could not come up; the message says which part and where its log is."""


@dataclass
class Child:
    """One process the launcher owns."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    pid_path: Path
    proc: subprocess.Popen | None = field(default=None, repr=False)

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as output:
            # Its own process group: a Ctrl-C in the terminal reaches the launcher only, which
            # then stops the children in order (moto last, so that it saves the final state).
            # Not its own session: Linux gives every session an equal share of the CPU
            # (autogroup), so a dozen processes in sessions of their own each got a twelfth
            # whatever they were doing, and a request waited behind idle-priority work. In
            # the launcher's session they share it thread by thread (follows through the
            # gateway +37-71 %, posts +16-113 % in alternating runs).
            self.proc = subprocess.Popen(self.argv, env=self.env, stdout=output,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         process_group=0)
        write_pid_file(self.pid_path, self.proc.pid, self.argv)

    def exit_code(self) -> int | None:
        return self.proc.poll() if self.proc else None

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def write_pid_file(path: Path, pid: int, argv: Sequence[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"pid": pid, "started": _start_time(pid), "argv": list(argv)}))


def _start_time(pid: int) -> str | None:
    """When the process started, in clock ticks since boot: with the pid, it names one process."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def recorded_process(path: Path) -> int | None:
    """The pid in a pid file if that very process still runs (pids get reused).

    The start time identifies it, not the command line: nginx and redis rewrite theirs.
    """
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    pid = record.get("pid")
    if not isinstance(pid, int) or not _alive(pid) or _start_time(pid) != record.get("started"):
        return None
    return pid


def reap_stale(run_dir: Path, keep: Path) -> None:
    """Stop what a launcher that died without cleaning up left running, and forget its pid files."""
    for pid_file in sorted(run_dir.glob("*.pid")):
        if pid_file == keep:
            continue
        pid = recorded_process(pid_file)
        if pid is not None:
            log.warning("stopping %s (pid %s) left over from an earlier run", pid_file.stem, pid)
            _terminate_group(pid, deadline_s=5)
        pid_file.unlink(missing_ok=True)


def _terminate_group(pid: int, deadline_s: float) -> None:
    with _gone():
        os.killpg(pid, signal.SIGTERM)
    end = time.monotonic() + deadline_s
    while time.monotonic() < end and _alive(pid):
        time.sleep(0.1)
    with _gone():
        os.killpg(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has exited already


def _gone() -> contextlib.AbstractContextManager[None]:
    """Ignore signalling a process (group) that has already gone."""
    return contextlib.suppress(ProcessLookupError, PermissionError)


def stop(children: Sequence[Child], deadline_s: float = 10.0) -> None:
    """SIGTERM to each leader, wait up to the deadline, then SIGKILL whole process groups."""
    running = [c for c in children if c.proc and c.proc.poll() is None]
    for child in running:
        with _gone():
            child.proc.send_signal(signal.SIGTERM)
    end = time.monotonic() + deadline_s
    for child in running:
        try:
            child.proc.wait(timeout=max(0.0, end - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop within %ss; killing it", child.name, deadline_s)
    for child in children:
        if child.proc:
            # Also reaps grandchildren (nginx workers) whose leader is gone.
            with _gone():
                os.killpg(child.proc.pid, signal.SIGKILL)
            child.proc.wait()
        child.pid_path.unlink(missing_ok=True)


def port_in_use(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def wait_until(ready: Callable[[], bool], what: str, deadline: float,
               watched: Sequence[Child]) -> None:
    """Poll until ready() holds; fail early, with its log, if a watched child exits."""
    while time.monotonic() < deadline:
        for child in watched:
            if child.exit_code() is not None:
                raise StartupFailed(f"{child.name} exited with code {child.exit_code()} while "
                                    f"waiting for {what}; {child.log_path}:\n{child.log_tail()}")
        if ready():
            return
        time.sleep(0.2)
    raise StartupFailed(f"timed out waiting for {what}")


def answers_ok(url: str) -> Callable[[], bool]:
    def check() -> bool:
        try:
            return httpx.get(url, timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    return check

