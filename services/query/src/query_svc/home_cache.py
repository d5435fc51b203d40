"""The first page of each reader's home timeline, cached in Redis.

A page is stored with the reader's generation at the time it was built; a change to the
reader's timeline bumps the generation, and a page of an older generation is never served.
A read that raced a change may store a page built before it, but marked with the old
generation — so no stale page outlives a change. One MGET reads both. Pages
also expire after a few seconds, which bounds how long like counts and posts merged at read
time (popular authors) can lag. Redis trouble degrades to uncached reads.
"""

import logging
from collections.abc import Awaitable, Callable, Iterable

from redis.asyncio import Redis
from redis.exceptions import RedisError

log = logging.getLogger("query.home_cache")
PREFIX = "query:home:v2:"
GENERATION_TTL_S = 24 * 3600


class HomeCache:
    def __init__(self, redis: Redis | None, *, ttl_s: int) -> None:
        self._redis = redis
        self._ttl = ttl_s

    async def page(self, user_id: str, load: Callable[[], Awaitable[bytes]]) -> bytes:
        """The cached first page if it is of the current generation, else `load()`'s (then
        stored, marked with the generation read before loading)."""
        if self._redis is None:
            return await load()
        try:
            generation, cached = await self._redis.mget(f"{PREFIX}gen:{user_id}",
                                                        f"{PREFIX}page:{user_id}")
        except RedisError:
            log.warning("home cache read failed; reading through", exc_info=True)
            return await load()
        stamp = (generation or b"0") + b"\n"
        if cached is not None and cached.startswith(stamp):
            return cached[len(stamp):]
        body = await load()
        try:
            await self._redis.set(f"{PREFIX}page:{user_id}", stamp + body, ex=self._ttl)
        except RedisError:
            log.warning("home cache write failed", exc_info=True)
        return body

    async def changed(self, user_ids: Iterable[str]) -> None:
        """The timelines of these readers changed: their cached pages are no longer read."""
        if self._redis is None:
            return
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for user_id in user_ids:
                    pipe.incr(f"{PREFIX}gen:{user_id}")
                    pipe.expire(f"{PREFIX}gen:{user_id}", GENERATION_TTL_S)
                await pipe.execute()
        except RedisError:
            log.warning("home cache invalidation failed; pages may be stale for %ss",
                        self._ttl, exc_info=True)
