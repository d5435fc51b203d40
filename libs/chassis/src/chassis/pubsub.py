"""Listening on Redis pub/sub channels for as long as a service runs: a lost connection is
retried with backoff and the channels subscribed again (pub/sub delivers at most once, so the
caller learns of each new subscription and can catch up on what it may have missed)."""

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from redis.asyncio import Redis

log = logging.getLogger("chassis.pubsub")


async def listen(redis: Redis, channels: list[str], on_message: Callable[[bytes, bytes], None],
                 *, on_subscribed: Callable[[bool], Awaitable[None]] | None = None,
                 name: str = "pub/sub") -> None:
    """Hand each message to `on_message(channel, data)` until cancelled; `on_subscribed`
    runs after each (re)subscription, with True the first time."""
    backoff, first = 0.2, True
    while True:
        pubsub = redis.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(*channels)
            if on_subscribed is not None:
                await on_subscribed(first)
            first, backoff = False, 0.2
            async for message in pubsub.listen():
                if message["type"] == "message":
                    on_message(message["channel"], message["data"])
        except asyncio.CancelledError:
            raise
        except Exception:
            log.warning("%s subscription lost; retrying in %.1fs", name, backoff, exc_info=True)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()
