"""The view cache on a real redis-server: a change is never hidden by a racing read."""

import uuid

from redis.asyncio import Redis

from chassis.cache import ViewCache


async def test_a_change_is_seen_even_when_a_read_raced_it(redis_url):
    redis = Redis.from_url(redis_url)
    cache = ViewCache(redis, prefix="test:view:", ttl_s=60)
    user = f"u-{uuid.uuid4().hex}"
    loads = []

    async def load(body: bytes):
        loads.append(body)
        return body

    assert await cache.get_or_load(user, lambda: load(b"v1")) == b"v1"
    assert await cache.get_or_load(user, lambda: load(b"unused")) == b"v1", "served from the cache"

    async def racing_load() -> bytes:
        # The timeline changes while this read is building its page from older data.
        await cache.forget(user)
        return await load(b"built before the change")

    await cache.forget(user)
    assert await cache.get_or_load(user, racing_load) == b"built before the change"
    fresh = await cache.get_or_load(user, lambda: load(b"v3"))
    assert fresh == b"v3", "the raced view is not served"
    assert loads == [b"v1", b"built before the change", b"v3"]
    await redis.aclose()


async def test_without_redis_every_read_loads():
    cache = ViewCache(None, prefix="test:view:", ttl_s=60)

    async def load() -> bytes:
        return b"fresh"

    assert await cache.get_or_load("anyone", load) == b"fresh"
    await cache.forget("anyone")
