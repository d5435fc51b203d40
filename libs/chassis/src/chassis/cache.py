"""A read-through cache of serialized views in Redis, shared by every replica of a service.

Each key has a generation; a view is stored marked with the generation read before it was
built, and only a view of the current generation is served. Writers bump a key's generation
after their transaction commits (`forget`), so a read that raced the write and stores a view
built from older data stores it under the old generation, where it is never served: no
stale view outlives a change. One MGET per read. Redis trouble degrades to uncached reads.

What no writer announces (a like count, a profile's new display name in someone's timeline)
is bounded by time, stale-while-revalidate: a view is fresh for `ttl_s` (less a random tenth
or two, so views built together do not expire together); for `stale_s` after that it is still
served, at once, while one background load per key replaces it (one per process at most, and
a claim in Redis keeps the other replicas from loading it too). Without this,
every view loaded in one burst expires in one burst, and each reader then waits behind a
hundred loads (home timelines under load: p99 158 ms with 5 s views, 30 ms without expiry).
"""

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable

from redis.asyncio import Redis
from redis.exceptions import RedisError

from .observability import VIEW_CACHE_READS

log = logging.getLogger("chassis.cache")
GENERATION_TTL_S = 24 * 3600
Load = Callable[[], Awaitable[bytes | None]]
_BUMP = ("for _, key in ipairs(KEYS) do redis.call('INCR', key) "
         "redis.call('EXPIRE', key, ARGV[1]) end")


class ViewCache:
    """Cached bytes by key under one prefix."""

    def __init__(self, redis: Redis | None, *, prefix: str, ttl_s: float = 30,
                 stale_s: float | None = None, clock: Callable[[], float] = time.time) -> None:
        self._redis = redis
        self._prefix = prefix
        self._fresh_s = ttl_s
        self._kept_s = max(1, round(ttl_s + (ttl_s if stale_s is None else stale_s)))
        self._clock = clock
        self._refreshing: dict[str, asyncio.Task[bytes | None]] = {}
        self._label = prefix.rstrip(":")
        # One command for any number of keys: a pipeline of INCR and EXPIRE per key cost the
        # profile service 15 % of its CPU in a flood of follows (each forgets two users).
        self._bump = redis.register_script(_BUMP) if redis is not None else None
        # Invalidations that arrive while one is under way go out together in the next call.
        self._forgetting: set[str] = set()
        self._forgotten: asyncio.Future[None] | None = None
        self._bumper: asyncio.Task[None] | None = None

    async def get_or_load(self, key: str, load: Load) -> bytes | None:
        """The cached bytes for `key` if current, or what `load` returns (stored unless None)."""
        if self._redis is None:
            return await load()
        try:
            generation, cached = await self._redis.mget(self._generation(key),
                                                        self._prefix + key)
        except RedisError:
            log.warning("cache read failed; reading through", exc_info=True)
            VIEW_CACHE_READS.labels(self._label, "error").inc()
            return await load()
        generation = generation or b"0"
        view = _current(cached, generation)
        if view is not None:
            fresh_until, body = view
            stale = fresh_until <= self._clock()
            if stale and key not in self._refreshing:
                self._refresh_later(key, generation, load)
            VIEW_CACHE_READS.labels(self._label, "stale" if stale else "fresh").inc()
            return body
        VIEW_CACHE_READS.labels(self._label, "miss").inc()
        return await self._load_and_store(key, generation, load)

    async def forget(self, *keys: str) -> None:
        """The views behind these keys changed (call after the change committed); returns
        once their generations are bumped.

        Like a group commit: the keys of every call that arrives while a bump is under way go
        out together in the next one, so that a flood of follows makes one Redis call per
        handful of requests rather than one each (a call costs 70-90 us of CPU)."""
        if self._redis is None or not keys:
            return
        self._forgetting.update(self._generation(key) for key in keys)
        if self._forgotten is None:
            self._forgotten = asyncio.get_running_loop().create_future()
        forgotten = self._forgotten
        if self._bumper is None or self._bumper.done():
            self._bumper = asyncio.create_task(self._bump_generations())
        # A caller cancelled while waiting leaves its keys to be bumped all the same.
        await asyncio.shield(forgotten)

    async def _bump_generations(self) -> None:
        assert self._bump is not None
        while self._forgetting:
            keys, self._forgetting = sorted(self._forgetting), set()
            forgotten, self._forgotten = self._forgotten, None
            try:
                await self._bump(keys=keys, args=[GENERATION_TTL_S])
            except Exception:  # Redis trouble or not, the callers waiting must go on
                log.warning("cache invalidation failed; views may be stale for %ss",
                            self._kept_s, exc_info=True)
            finally:
                if forgotten is not None and not forgotten.done():
                    forgotten.set_result(None)

    async def close(self) -> None:
        """Finish the invalidations under way and stop the background loads (the service
        is stopping)."""
        if self._bumper is not None:
            await asyncio.gather(self._bumper, return_exceptions=True)
        tasks = list(self._refreshing.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _load_and_store(self, key: str, generation: bytes, load: Load) -> bytes | None:
        value = await load()
        if value is not None and self._redis is not None:
            fresh_until = self._clock() + self._fresh_s * random.uniform(0.8, 1.0)
            try:
                await self._redis.set(self._prefix + key,
                                      b"%s\n%.3f\n%s" % (generation, fresh_until, value),
                                      ex=self._kept_s)
            except RedisError:
                log.warning("cache write failed", exc_info=True)
        return value

    def _refresh_later(self, key: str, generation: bytes, load: Load) -> None:
        task = asyncio.create_task(self._refresh(key, generation, load))
        self._refreshing[key] = task
        task.add_done_callback(lambda done: self._refreshed(key, done))

    async def _refresh(self, key: str, generation: bytes, load: Load) -> bytes | None:
        """Load a stale view again unless another replica is doing so: every replica serves
        the same stale entry, and each loading it would double the loads (a home timeline
        page costs about 3 ms of CPU)."""
        assert self._redis is not None
        claim = f"{self._prefix}refreshing:{key}"
        try:
            claimed = await self._redis.set(claim, b"1", nx=True, px=int(self._fresh_s * 800))
        except RedisError:
            claimed = True  # refresh all the same: at worst twice
        if not claimed:
            return None
        try:
            return await self._load_and_store(key, generation, load)
        except Exception:
            with contextlib.suppress(RedisError):  # the next stale read tries again
                await self._redis.delete(claim)
            raise

    def _refreshed(self, key: str, task: asyncio.Task[bytes | None]) -> None:
        self._refreshing.pop(key, None)
        if not task.cancelled() and task.exception() is not None:
            log.warning("background refresh of a cached view failed; it is served until it "
                        "expires", exc_info=task.exception())

    def _generation(self, key: str) -> str:
        return f"{self._prefix}gen:{key}"


def _current(cached: bytes | None, generation: bytes) -> tuple[float, bytes] | None:
    """(fresh until, view) of an entry stored as three lines (generation, fresh until, view),
    if it belongs to this generation; None for another generation or an unreadable entry."""
    parts = cached.split(b"\n", 2) if cached is not None else ()
    if len(parts) != 3 or parts[0] != generation:
        return None
    try:
        return float(parts[1]), parts[2]
    except ValueError:
        return None
