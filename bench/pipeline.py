"""`python -m bench.pipeline`: what a post costs in CPU, process by process, on the embedded stack.

The users of `python -m bench` follow one another (its follow scenario), and once every event
is through, 32 clients post for `--duration` seconds. From the flood's start until every
outbox and queue is empty again, each process's CPU time is read from /proc: divided by the
posts, it says where the event pipeline spends its time (relays, moto, consumers) beside the
requests themselves. With `--rate`, the clients post at that steady rate instead: fewer posts
then share each group commit, message and call. Embedded stack only: it reads the data
dir's outboxes and pid files.
"""

import argparse
import asyncio
import time
from pathlib import Path

from chassis.ports import free_port

from .chat_procs import cpu_seconds, stack_processes
from .drain import wait_drained
from .load import run_wrk
from .stack import embedded_stack, sign_up


def _cpu(data_dir: Path) -> dict[str, float]:
    return {name: cpu_seconds(pids) for name, pids in stack_processes(data_dir).items()}


def measure(base_url: str, data_dir: Path, *, users: int, duration_s: int,
            connections: int, rate: float) -> None:
    accounts = asyncio.run(sign_up(base_url, users))
    wait_drained(data_dir)
    follows = run_wrk("PUT /api/profiles/{id}/follow", base_url, accounts, "follow",
                      connections=connections, duration_s=duration_s, warmup_s=3)
    print(follows.line())
    drained = wait_drained(data_dir)
    print(f"{'every event through after':<34} {drained:.1f} s")
    before, started = _cpu(data_dir), time.monotonic()
    posts = run_wrk("POST /api/posts" + (f" at {rate:g}/s" if rate else ""), base_url,
                    accounts, "post", connections=connections, duration_s=duration_s,
                    rate=rate)
    during, flooded = _cpu(data_dir), time.monotonic()
    print(posts.line())
    drained = wait_drained(data_dir)
    after = _cpu(data_dir)
    print(f"{'every event through after':<34} {drained:.1f} s" if drained is not None
          else "not drained within 300 s")
    print(f"\n{'process':<20} {'CPU s, flood':>12} {'CPU s, after':>12} {'ms per post':>12}")
    rows = [(name, during[name] - before[name], after[name] - during[name])
            for name in after if name in before]
    rows.append(("all", sum(row[1] for row in rows), sum(row[2] for row in rows)))
    for name, flood, rest in sorted(rows, key=lambda row: -(row[1] + row[2])):
        per_post = 1000 * (flood + rest) / posts.requests
        print(f"{name:<20} {flood:>12.2f} {rest:>12.2f} {per_post:>12.2f}")
    print(f"({posts.requests} posts in {flooded - started:.1f} s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="a stack that already runs (with --data-dir)")
    parser.add_argument("--data-dir", type=Path, help="that stack's data dir")
    parser.add_argument("--replicas", default="profile=2,query=2,post=2")
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--duration", type=int, default=10, help="seconds of each flood")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rate", type=float, default=0,
                        help="posts per second (default: as fast as the clients go)")
    args = parser.parse_args()
    options = {"users": args.users, "duration_s": args.duration,
               "connections": args.connections, "rate": args.rate}
    if args.url:
        if args.data_dir is None:
            parser.error("--url needs --data-dir: the outboxes and pid files are read there")
        measure(args.url.rstrip("/"), args.data_dir, **options)
        return
    with embedded_stack(free_port(), args.replicas) as (base_url, data_dir):
        measure(base_url, data_dir, **options)


if __name__ == "__main__":
    main()
