"""Starting the launcher from tests, as a user would, and stopping it again."""

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from chassis.ports import free_port_block


@dataclass
class RunningStack:
    """A launcher process that has answered GET /api/health with 200."""

    proc: subprocess.Popen
    url: str
    data_dir: Path
    output: Path

    def child_pids(self) -> dict[str, int]:
        """The pids of the launcher's children, from its pid files."""
        return {p.stem: json.loads(p.read_text())["pid"]
                for p in (self.data_dir / "run").glob("*.pid") if p.stem != "launcher"}

    def stop(self, signum: int = signal.SIGINT, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signum)
        return self.proc.wait(timeout=timeout)

    def log(self) -> str:
        return self.output.read_text(errors="replace")


@contextmanager
def running_stack(data_dir: Path, *args: str, env: dict[str, str] | None = None,
                  timeout: float = 120, ports: int = 24) -> Iterator[RunningStack]:
    """`asyncsns-stack up` on free ports; stopped with SIGTERM on the way out if still running."""
    # One block: the gateway on its first port, the service processes on the ones after it
    # (the whole topology has 17 of them), all checked to be free.
    port = free_port_block(ports)
    command = [sys.executable, "-m", "stack.launcher", "up", "--port", str(port),
               "--base-port", str(port), "--data-dir", str(data_dir),
               "--timeout", str(timeout), *args]
    data_dir.mkdir(parents=True, exist_ok=True)
    output = data_dir / f"launcher-{time.monotonic_ns()}.out"
    with output.open("wb") as sink:
        proc = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT,
                                env={**os.environ, **(env or {})})
    stack = RunningStack(proc, f"http://127.0.0.1:{port}", data_dir, output)
    try:
        wait_healthy(stack, timeout)
        yield stack
    finally:
        if proc.poll() is None:
            stack.stop(signal.SIGTERM)


def wait_healthy(stack: RunningStack, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if stack.proc.poll() is not None:
            raise RuntimeError(f"launcher exited with {stack.proc.returncode}:\n{stack.log()}")
        try:
            if httpx.get(f"{stack.url}/api/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"the stack did not become healthy in {timeout}s:\n{stack.log()}")
