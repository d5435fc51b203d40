"""Start the embedded stack for a benchmark, or use one that already runs."""

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx


def wait_healthy(base_url: str, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{base_url}/api/health", timeout=2).status_code == 200:
                return
        time.sleep(0.5)
    raise TimeoutError(f"{base_url} did not become healthy")


@contextlib.contextmanager
def embedded_stack(port: int, replicas: str | None) -> Iterator[tuple[str, Path]]:
    """Run `python -m stack.launcher up` in a fresh data dir; stop it and remove the data
    dir afterwards (a post flood leaves 150 MB there), unless ASYNCSNS_BENCH_KEEP=1 asks to
    keep it for a look at the databases. Yields the gateway's URL and the data dir."""
    data_dir = tempfile.mkdtemp(prefix="asyncsns-bench-")
    command = [sys.executable, "-m", "stack.launcher", "up", "--port", str(port),
               "--data-dir", data_dir]
    for replica in (replicas or "").replace(",", " ").split():
        command += ["--replicas", replica]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(base_url)
        yield base_url, Path(data_dir)
    finally:
        # SIGTERM, not SIGINT: a bench started in the background of a script inherits
        # SIGINT ignored, and so would the launcher, which then never stopped its children.
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
        if os.environ.get("ASYNCSNS_BENCH_KEEP") == "1":
            print(f"(data dir kept: {data_dir})", file=sys.stderr)
        else:
            shutil.rmtree(data_dir, ignore_errors=True)


async def sign_up(base_url: str, count: int, *, prefix: str = "bench",
                  concurrency: int = 8) -> list[tuple[str, str]]:
    """Create `count` users through the gateway; returns (access_token, user_id) pairs."""
    run, limit = uuid.uuid4().hex[:6], asyncio.Semaphore(concurrency)

    async def one(http: httpx.AsyncClient, i: int) -> tuple[str, str]:
        username, password = f"{prefix}_{run}_{i}", "bench pass 1"
        async with limit:
            created = await http.post("/api/auth/signup", json={
                "username": username, "email": f"{username}@example.com", "password": password})
            created.raise_for_status()
            login = await http.post("/api/auth/login",
                                    json={"username": username, "password": password})
            login.raise_for_status()
        return login.json()["access_token"], created.json()["user_id"]

    async with httpx.AsyncClient(base_url=base_url, timeout=60) as http:
        return await asyncio.gather(*(one(http, i) for i in range(count)))
