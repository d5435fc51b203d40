"""`python -m bench`: the embedded stack's gateway under 32 concurrent clients.

Targets on 2 cores: >= 2,000 authenticated `GET /api/profiles/me` per second with p99 <= 25 ms,
>= 800 `PUT /api/profiles/{id}/follow` per second with p99 <= 50 ms (issue 2); >= 1,000
`POST /api/posts` per second with p99 <= 50 ms, >= 2,000 `GET /api/timelines/home` per second
with p99 <= 30 ms, and, under the post load, a post in a follower's home timeline within
300 ms and searchable within 500 ms at p99 (issue 3). The follow scenario runs before the
post scenario, so home timelines have something to fan out to. The post flood saturates the
machine; the steady scenario then posts at set rates (`--post-rates`) with the same lag probe,
to show what rate the event pipeline keeps pace with. Search over 100,000 posts is
`python -m bench.search`.
"""

import argparse
import asyncio
import functools
from pathlib import Path

from chassis.ports import free_port

from .drain import wait_drained
from .lag import measure, settle
from .load import run_wrk
from .stack import embedded_stack, sign_up

SCENARIOS = (
    ("post -> home timeline and search", "lag", ""),
    ("GET /api/profiles/me", "me", "target >= 2000/s, p99 <= 25 ms"),
    ("PUT /api/profiles/{id}/follow", "follow", "target >= 800/s, p99 <= 50 ms"),
    ("POST /api/posts", "post", "target >= 1000/s, p99 <= 50 ms"),
    ("POST /api/posts at {rate:g}/s", "steady", "set rate"),
    ("GET /api/timelines/home", "home", "target >= 2000/s, p99 <= 30 ms"),
)


async def _during(blocking, probe):
    """Run a blocking load (wrk) in a thread while the probe coroutine measures."""
    return await asyncio.gather(asyncio.to_thread(blocking), probe)


def _settle(base_url: str, users: list[tuple[str, str]], data_dir: Path | None) -> None:
    """Wait for a write scenario's events to be worked through before the next scenario,
    and say how long that took: on the embedded stack until every outbox and queue is
    empty, elsewhere until a new post reaches a follower's home timeline."""
    if data_dir is not None:
        drained = wait_drained(data_dir)
        label = "every event through after"
    else:
        drained = asyncio.run(settle(base_url, users[0], users[1]))
        label = "next post in a home timeline after"
    print(f"{label:<34} " + (f"{drained:.1f} s" if drained is not None else "more than 300 s"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="benchmark a stack that already runs (else start one)")
    parser.add_argument("--replicas", default="profile=2,query=2,post=2",
                        help="e.g. profile=2,query=2,post=2 (embedded only)")
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--duration", type=int, default=10, help="seconds per scenario")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=3,
                        help="seconds of the same load before each measured one, not counted")
    parser.add_argument("--post-rates", type=float, nargs="*", default=[250.0, 500.0],
                        help="posts per second of the steady scenario, one run each")
    parser.add_argument("--only", nargs="*",
                        help="scenarios to run: lag me follow post steady home")
    args = parser.parse_args()

    def scenarios(base_url: str, data_dir: Path | None = None) -> None:
        users = asyncio.run(sign_up(base_url, args.users))
        print(f"stack {base_url}, {len(users)} users, {args.connections} concurrent clients, "
              f"{args.duration} s each")
        _settle(base_url, users, data_dir)  # the sign-ups' events, before measuring anything
        for name, mode, target in SCENARIOS:
            if args.only and mode not in args.only:
                continue
            if mode in ("post", "steady"):
                # The lag probe runs during the write load, as the targets ask.
                for rate in (args.post_rates if mode == "steady" else [0]):
                    load = functools.partial(run_wrk, name.format(rate=rate), base_url,
                                             users[2:], "post", connections=args.connections,
                                             duration_s=args.duration, warmup_s=args.warmup,
                                             rate=rate)
                    result, lag = asyncio.run(_during(
                        load, measure(base_url, users[0], users[1], args.duration - 1)))
                    print(f"{result.line()}   ({target})")
                    for line in lag.lines(data_dir):
                        print(line)
                    _settle(base_url, users, data_dir)
                continue
            if mode == "lag":
                lag = asyncio.run(measure(base_url, users[0], users[1], args.duration))
                for line in lag.lines(data_dir, note="   (no other load)"):
                    print(line)
                continue
            # The lag probe's author and reader (the first two users) stay out of the follow
            # graph: the reader follows the author alone, so a probe's post is the newest in
            # the reader's home timeline. Following 30 flood authors too, the probe's post
            # came in together with newer ones and was off the first page at once: the probe
            # missed it, or saw it only when its batch was small.
            result = run_wrk(name, base_url, users[2:] if mode == "follow" else users, mode,
                             connections=args.connections, duration_s=args.duration,
                             warmup_s=args.warmup)
            print(f"{result.line()}   ({target})")
            if mode == "follow":
                _settle(base_url, users, data_dir)

    if args.url:
        scenarios(args.url.rstrip("/"))
    else:
        with embedded_stack(free_port(), args.replicas) as (base_url, data_dir):
            scenarios(base_url, data_dir)


if __name__ == "__main__":
    main()
