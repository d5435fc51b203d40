"""Every event lands in the S3 archive; replaying it rebuilds the same read models and
search indexes (posts and chat messages)."""

import asyncio
import json
import uuid

import aioboto3
from sqlalchemy import func, select

from chassis.db import Database
from chassis.testing import FAKE_AWS, REGION, aws_client, wait_until
from profile_svc import events as graph
from query_svc.archive import Archiver
from query_svc.models import metadata
from query_svc.replay import replay
from query_svc.search import MessageScope
from query_svc.search.factory import engine_from_url

from .conftest import query_settings
from .test_convergence import READ_MODELS, dump


async def test_archive_then_replay_into_a_fresh_store(client, bus, world, make_user, settings,
                                                      tmp_path, moto_endpoint):
    alice, bob = make_user("alice"), make_user("bob")
    post = world.post(alice, "今日のラーメンは美味しかった #ラーメン")
    post_id = post.data["post_id"]
    events = [world.profile(alice), world.profile(bob), world.edge(graph.Followed, bob, alice),
              post, world.like(bob, post_id), world.edit(post_id, "今日のラーメンは最高"),
              world.post(bob, "hello", reply_to=post_id), world.post(alice, "gone soon")]
    events.append(world.delete(events[-1].data["post_id"]))
    channel = world.channel(alice, bob)
    channel_id = channel.data["channel_id"]
    message = world.message(channel_id, bob, "ラーメン食べに行こう")
    events += [channel, message, world.edit_message(message.data["message"]["id"],
                                                    "ラーメン食べに行こうか"),
               world.message(channel_id, alice, "gone soon too")]
    events.append(world.delete_message(events[-1].data["message"]["id"]))
    bus.publish(*events)
    s3 = aws_client("s3", moto_endpoint)

    def archived() -> list[str]:
        pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bus.bucket)
        return [o["Key"] for page in pages for o in page.get("Contents", [])]

    async def everything_archived() -> bool:
        lines = 0
        for key in archived():
            lines += s3.get_object(Bucket=bus.bucket, Key=key)["Body"].read().count(b"\n")
        return lines >= len(events)

    await wait_until(everything_archived, "every event is in the archive")
    assert all(k.startswith("events/year=") and "/month=" in k and "/day=" in k
               for k in archived())

    await wait_until(lambda: applied(client.app.state.db, events),
                     "the live read side has applied every event")
    live = await dump(client.app.state.db)

    fresh = query_settings(
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'rebuilt.db'}",
        search_url=f"sqlite:///{tmp_path / 'rebuilt.search'}",
        aws_endpoint_url=moto_endpoint, archive_bucket=bus.bucket)
    assert await replay(fresh) == len(events)
    rebuilt_db = Database(fresh.database_url)
    try:
        rebuilt = await dump(rebuilt_db)
    finally:
        await rebuilt_db.dispose()
    for name in READ_MODELS:
        assert rebuilt[name] == live[name], name
    engine = engine_from_url(fresh.resolved_search_url())
    await engine.start()
    try:
        viewer = await search_viewer_for(client, bob)
        for q in ("ラーメン", "最高", "gone", "hello"):
            live_hits = await client.app.state.search.search_posts(q, viewer, limit=20,
                                                                  cursor=None)
            rebuilt_hits = await engine.search_posts(q, viewer, limit=20, cursor=None)
            assert rebuilt_hits.ids == live_hits.ids, q
        scope = MessageScope(frozenset({channel_id}))
        for q, count in (("ラーメン", 1), ("行こうか", 1), ("gone", 0)):
            live_hits = await client.app.state.search.search_messages(q, scope, limit=20,
                                                                     cursor=None)
            rebuilt_hits = await engine.search_messages(q, scope, limit=20, cursor=None)
            assert len(live_hits.ids) == count and rebuilt_hits.ids == live_hits.ids, q
    finally:
        await engine.close()


async def applied(db: Database, events) -> bool:
    inbox = metadata.tables["inbox"]
    async with db.sessions() as session:
        done = (await session.execute(select(func.count()).where(
            inbox.c.event_id.in_([e.id for e in events])))).scalar_one()
    return done == len(events)


async def search_viewer_for(client, user):
    from chassis.auth import User
    from query_svc.views import search_viewer

    async with client.app.state.db.sessions() as session:
        return await search_viewer(session, User(id=user.user_id, username=user.username,
                                                 token=""))


async def test_a_trickle_within_the_linger_is_archived_together(world, make_user,
                                                                moto_endpoint):
    """After a first event the archiver waits out its linger and takes what came meanwhile
    in full receives: one object and a few receive calls, not a call per event."""
    sqs, s3 = aws_client("sqs", moto_endpoint), aws_client("s3", moto_endpoint)
    name = f"archive-trickle-{uuid.uuid4().hex[:8]}"
    queue = sqs.create_queue(QueueName=name)["QueueUrl"]
    s3.create_bucket(Bucket=name)
    alice = make_user("alice")
    events = [world.post(alice, f"post {i}") for i in range(5)]

    async def trickle() -> None:
        for event in events:
            await asyncio.to_thread(sqs.send_message, QueueUrl=queue,
                                    MessageBody=event.model_dump_json())
            await asyncio.sleep(0.05)

    kwargs = {"endpoint_url": moto_endpoint, "region_name": REGION, **FAKE_AWS}
    session = aioboto3.Session()
    async with session.client("sqs", **kwargs) as async_sqs, \
            session.client("s3", **kwargs) as async_s3:
        receives = 0
        receive = async_sqs.receive_message

        async def counted(**params):
            nonlocal receives
            receives += 1
            return await receive(**params)

        async_sqs.receive_message = counted
        archiver = Archiver(service="query", name=name, queue_url=queue, sqs=async_sqs,
                            s3=async_s3, bucket=name, linger_s=1.5, wait_time_s=5)
        sending = asyncio.create_task(trickle())
        assert await archiver.archive_once() == len(events)
        await sending
    [stored] = s3.list_objects_v2(Bucket=name)["Contents"]
    lines = s3.get_object(Bucket=name, Key=stored["Key"])["Body"].read().splitlines()
    assert sorted(json.loads(line)["id"] for line in lines) == sorted(e.id for e in events)
    assert receives <= 3, "the first, one that takes the rest, one that finds the queue empty"
    assert sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=[
        "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible",
    ])["Attributes"] == {"ApproximateNumberOfMessages": "0",
                         "ApproximateNumberOfMessagesNotVisible": "0"}, "all deleted"
