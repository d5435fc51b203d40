"""A read-through cache of serialized views in Redis, shared by every replica of a service.

Each key has a generation; a view is stored marked with the generation read before it was
built, and only a view of the current generation is served. Writers bump a key's generation
after their transaction commits (`forget`), so a read that raced the write and stores a view
built from older data stores it under the old generation, where it is never served: no
stale view outlives a change. The TTL bounds what no writer announces. One MGET per read.
Redis trouble degrades to uncached reads.
"""

import logging
from collections.abc import Awaitable, Callable

from redis.asyncio import Redis
from redis.exceptions import RedisError

log = logging.getLogger("chassis.cache")
GENERATION_TTL_S = 24 * 3600


class ViewCache:
    """Cached bytes by key under one prefix."""

    def __init__(self, redis: Redis | None, *, prefix: str, ttl_s: int = 30) -> None:
        self._redis = redis
        self._prefix = prefix
        self._ttl = ttl_s

    async def get_or_load(self, key: str,
                          load: Callable[[], Awaitable[bytes | None]]) -> bytes | None:
        """The cached bytes for `key` if current, or what `load` returns (stored unless None)."""
        if self._redis is None:
            return await load()
        try:
            generation, cached = await self._redis.mget(self._generation(key),
                                                        self._prefix + key)
        except RedisError:
            log.warning("cache read failed; reading through", exc_info=True)
            return await load()
        stamp = (generation or b"0") + b"\n"
        if cached is not None and cached.startswith(stamp):
            return cached[len(stamp):]
        value = await load()
        if value is not None:
            try:
                await self._redis.set(self._prefix + key, stamp + value, ex=self._ttl)
            except RedisError:
                log.warning("cache write failed", exc_info=True)
        return value

    async def forget(self, *keys: str) -> None:
        """The views behind these keys changed (call after the change committed)."""
        if self._redis is None or not keys:
            return
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.incr(self._generation(key))
                    pipe.expire(self._generation(key), GENERATION_TTL_S)
                await pipe.execute()
        except RedisError:
            log.warning("cache invalidation failed; views may be stale for %ss", self._ttl,
                        exc_info=True)

    def _generation(self, key: str) -> str:
        return f"{self._prefix}gen:{key}"
