"""Fixed-window rate limits in Redis, shared by every replica; over the limit is a 429."""

import logging

from redis.asyncio import Redis
from redis.exceptions import RedisError

from .problems import Problem

log = logging.getLogger("chassis.ratelimit")


class RateLimit:
    """At most `limit` hits per `window_s` seconds for each key."""

    def __init__(self, redis: Redis | None, *, name: str, limit: int, window_s: int) -> None:
        self._redis = redis
        self._prefix = f"ratelimit:{name}:"
        self._limit = limit
        self._window = window_s

    async def hit(self, key: str) -> None:
        """Count one hit; raise 429 problem+json with Retry-After once over the limit.

        Without Redis (or while it is down) requests pass: availability over strictness.
        """
        if self._redis is None:
            return
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.incr(self._prefix + key)
                pipe.expire(self._prefix + key, self._window, nx=True)
                pipe.ttl(self._prefix + key)
                count, _, ttl = await pipe.execute()
        except RedisError:
            log.warning("rate limit %s unavailable; letting the request through", self._prefix,
                        exc_info=True)
            return
        if count > self._limit:
            retry_after = max(int(ttl), 1)
            raise Problem(429, f"too many attempts; retry in {retry_after} s",
                          headers={"Retry-After": str(retry_after)})
