"""Local ports: pick a free one, wait for one to answer (tests and the local launcher)."""

import random
import socket
import time


def free_port() -> int:
    """A port nothing listens on now (the kernel's choice)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, timeout: float = 15.0, host: str = "127.0.0.1") -> None:
    """Block until something accepts connections on `port`, or raise TimeoutError."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex((host, port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {host}:{port}")


def free_port_block(count: int, low: int = 20000, high: int = 32000) -> int:
    """A first port of `count` consecutive free ports, below the kernel's ephemeral range.

    Ports that a process will bind only later must not come from the ephemeral range
    (32768+), where any outgoing connection may take them meanwhile.
    """
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(low, high - count)
        if all(_bindable(base + n) for n in range(count)):
            return base
    raise RuntimeError(f"no {count} consecutive free ports in {low}-{high}")


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True
