"""The test fixtures start real servers that answer."""

import redis.asyncio as redis
from sqlalchemy import text

from chassis.db import Database


async def test_each_database_backend_answers(database_url):
    db = Database(database_url)
    await db.ping()
    async with db.transaction() as session:
        assert (await session.execute(text("SELECT 1 + 1"))).scalar() == 2
    await db.dispose()


async def test_redis_server_answers(redis_url):
    client = redis.from_url(redis_url)
    await client.set("k", "v")
    assert await client.get("k") == b"v"
    await client.aclose()


def test_cognito_issues_access_tokens(cognito):
    tokens = cognito.tokens("fixture_user")
    assert tokens["AccessToken"].count(".") == 2
