"""A read-through cache of serialized views in Redis, shared by every replica of a service.

Writers delete a view's key after their transaction commits; the TTL bounds how long a
view stays stale if a read raced such a write and stored the older value.
"""

import logging
from collections.abc import Awaitable, Callable

from redis.asyncio import Redis
from redis.exceptions import RedisError

log = logging.getLogger("chassis.cache")


class ViewCache:
    """Cached bytes by key under one prefix; Redis trouble degrades to uncached reads."""

    def __init__(self, redis: Redis | None, *, prefix: str, ttl_s: int = 30) -> None:
        self._redis = redis
        self._prefix = prefix
        self._ttl = ttl_s

    async def get_or_load(self, key: str,
                          load: Callable[[], Awaitable[bytes | None]]) -> bytes | None:
        """The cached bytes for `key`, or what `load` returns (stored unless None)."""
        if self._redis is not None:
            try:
                cached = await self._redis.get(self._prefix + key)
                if cached is not None:
                    return cached
            except RedisError:
                log.warning("cache read failed; reading through", exc_info=True)
        value = await load()
        if value is not None and self._redis is not None:
            try:
                await self._redis.set(self._prefix + key, value, ex=self._ttl)
            except RedisError:
                log.warning("cache write failed", exc_info=True)
        return value

    async def forget(self, *keys: str) -> None:
        """Drop views after the change to them committed."""
        if self._redis is None or not keys:
            return
        try:
            await self._redis.delete(*(self._prefix + k for k in keys))
        except RedisError:
            log.warning("cache delete failed; views may be stale for %ss", self._ttl, exc_info=True)
