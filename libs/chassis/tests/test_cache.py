"""The view cache on a real redis-server: a change is never hidden by a racing read."""

import asyncio
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


async def refreshed(cache: ViewCache) -> None:
    """Until the background loads under way are done."""
    await asyncio.gather(*cache._refreshing.values(), return_exceptions=True)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


async def test_a_view_past_its_time_is_served_while_one_load_replaces_it(redis_url):
    redis, clock = Redis.from_url(redis_url), Clock()
    cache = ViewCache(redis, prefix="test:swr:", ttl_s=5, stale_s=10, clock=clock)
    user = f"u-{uuid.uuid4().hex}"
    loads: list[bytes] = []
    release = asyncio.Event()

    async def load(body: bytes) -> bytes:
        loads.append(body)
        await release.wait()
        return body

    release.set()
    assert await cache.get_or_load(user, lambda: load(b"v1")) == b"v1"
    assert 14 <= await redis.ttl(f"test:swr:{user}") <= 15, "kept for fresh + stale seconds"
    release.clear()
    clock.now += 5.01  # past its freshness (at most 5 s, at least 4)
    readers = [cache.get_or_load(user, lambda: load(b"v2")) for _ in range(20)]
    assert await asyncio.gather(*readers) == [b"v1"] * 20, "served at once, not after the load"
    release.set()
    await asyncio.sleep(0)
    await refreshed(cache)
    assert loads == [b"v1", b"v2"], "one load replaced it, behind the twenty readers"
    assert await cache.get_or_load(user, lambda: load(b"unused")) == b"v2"
    await redis.aclose()


async def test_a_change_is_never_served_stale_even_past_its_time(redis_url):
    redis, clock = Redis.from_url(redis_url), Clock()
    cache = ViewCache(redis, prefix="test:swr:", ttl_s=5, clock=clock)
    user = f"u-{uuid.uuid4().hex}"

    async def load(body: bytes) -> bytes:
        return body

    assert await cache.get_or_load(user, lambda: load(b"before")) == b"before"
    clock.now += 6
    await cache.forget(user)
    assert await cache.get_or_load(user, lambda: load(b"after")) == b"after"
    assert not cache._refreshing, "loaded in the read, nothing left behind"
    await redis.aclose()


async def test_a_failed_background_load_keeps_serving_the_view_and_is_retried(redis_url, caplog):
    redis, clock = Redis.from_url(redis_url), Clock()
    cache = ViewCache(redis, prefix="test:swr:", ttl_s=5, clock=clock)
    user = f"u-{uuid.uuid4().hex}"

    loads = []

    async def broken() -> bytes:
        raise RuntimeError("database went away")

    async def load() -> bytes:
        loads.append(clock.now)
        return b"v1"

    assert await cache.get_or_load(user, load) == b"v1"
    clock.now += 6
    assert await cache.get_or_load(user, broken) == b"v1"
    await refreshed(cache)
    assert "background refresh of a cached view failed" in caplog.text
    assert await cache.get_or_load(user, load) == b"v1", "still served; tried again behind"
    await refreshed(cache)
    assert len(loads) == 2
    await cache.close()
    await redis.aclose()


async def test_an_unreadable_entry_is_a_miss(redis_url):
    redis = Redis.from_url(redis_url)
    cache = ViewCache(redis, prefix="test:swr:", ttl_s=5)
    user = f"u-{uuid.uuid4().hex}"
    await redis.set(f"test:swr:{user}", b"0\n{\"old\": \"format\"}")

    async def load() -> bytes:
        return b"rebuilt"

    assert await cache.get_or_load(user, load) == b"rebuilt"
    await redis.aclose()


async def test_invalidations_arriving_together_go_out_together_and_each_waits_for_its_own(
        redis_url):
    redis = Redis.from_url(redis_url)
    cache = ViewCache(redis, prefix="test:forget:", ttl_s=60)
    calls: list[list[str]] = []
    bump = cache._bump

    async def counted(*, keys, args):
        calls.append(keys)
        return await bump(keys=keys, args=args)

    cache._bump = counted
    users = [f"u-{uuid.uuid4().hex}" for _ in range(50)]
    generations = [f"test:forget:gen:{user}" for user in users]

    async def forget_then_read(user: str) -> bytes:
        await cache.forget(user, users[0])
        return await redis.get(f"test:forget:gen:{user}")

    seen = await asyncio.gather(*(forget_then_read(user) for user in users))
    assert all(generation is not None for generation in seen), "bumped before forget returned"
    assert len(calls) < 10, f"{len(calls)} calls for 50 invalidations"
    assert sorted({key for keys in calls for key in keys}) == sorted(generations)
    assert int(await redis.get(generations[0])) == len(calls), "once per call, not per caller"
    await cache.close()
    await redis.aclose()


async def test_a_caller_cancelled_while_waiting_still_has_its_keys_bumped(redis_url):
    redis = Redis.from_url(redis_url)
    cache = ViewCache(redis, prefix="test:forget:", ttl_s=60)
    first, second = (f"u-{uuid.uuid4().hex}" for _ in range(2))
    waiting = asyncio.create_task(cache.forget(first))
    cancelled = asyncio.create_task(cache.forget(second))
    await asyncio.sleep(0)
    cancelled.cancel()
    await waiting
    await cache.close()
    assert await redis.get(f"test:forget:gen:{second}") == b"1"
    await redis.aclose()


async def test_invalidation_with_redis_down_is_logged_and_returns(caplog, unused_tcp_port):
    redis = Redis.from_url(f"redis://127.0.0.1:{unused_tcp_port}")
    cache = ViewCache(redis, prefix="test:forget:", ttl_s=60)
    await asyncio.gather(cache.forget("a"), cache.forget("b", "c"))
    assert "cache invalidation failed" in caplog.text
    await cache.forget("d")  # and the next one is tried again
    assert caplog.text.count("cache invalidation failed") == 2
    await redis.aclose()


async def test_of_two_replicas_serving_a_stale_view_one_loads_it(redis_url):
    redis, clock = Redis.from_url(redis_url), Clock()
    replicas = [ViewCache(redis, prefix="test:swr2:", ttl_s=5, clock=clock) for _ in range(2)]
    user = f"u-{uuid.uuid4().hex}"
    loads: list[int] = []

    async def load(replica: int) -> bytes:
        loads.append(replica)
        return b"v%d" % len(loads)

    assert await replicas[0].get_or_load(user, lambda: load(0)) == b"v1"
    clock.now += 5.01
    for i, cache in enumerate(replicas):
        assert await cache.get_or_load(user, lambda i=i: load(i)) == b"v1", "stale, at once"
    for cache in replicas:
        await refreshed(cache)
    assert len(loads) == 2, "one of the two loaded it again, not both"
    for cache in replicas:
        assert await cache.get_or_load(user, lambda: load(9)) == b"v2"
    await redis.aclose()
