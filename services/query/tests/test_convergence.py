"""Duplicated and reordered events end in the same state as in-order delivery."""

import functools
import random

import pytest
from sqlalchemy import select

from chassis.db import Database
from profile_svc import events as graph
from query_svc.models import metadata
from query_svc.projections import Projector
from query_svc.search import MessageScope, Viewer
from query_svc.search.factory import engine_from_url

READ_MODELS = ("users", "edges", "posts", "post_stats", "post_versions", "likes", "post_tags",
               "post_mentions", "timeline", "chat_channels", "chat_members", "chat_messages")


async def apply_all(url: str, search_url: str, events) -> tuple[dict, list]:
    """Apply `events` straight to the handlers (no inbox: the handlers alone must cope)."""
    db = Database(url)
    engine = engine_from_url(search_url)
    await engine.start()
    try:
        await db.create_all(metadata)
        projector = Projector(fanout_threshold=100, follow_backfill=40, search=engine, db=db)
        handlers = projector.all_handlers()
        for event in events:
            handler = handlers[event.type]
            if handler.before:
                await handler.before(event)
            await db.run(functools.partial(handler.unit, envelope=event))
        return await dump(db), engine
    finally:
        await db.dispose()


async def dump(db: Database) -> dict:
    state = {}
    async with db.sessions() as session:
        for name in READ_MODELS:
            table = metadata.tables[name]
            rows = (await session.execute(select(table))).all()
            state[name] = sorted(tuple(str(v) for v in row) for row in rows)
    return state


@pytest.fixture
def story(world, make_user):
    """Profiles, follows, a block, posts with edits, likes, a reply and a delete."""
    alice, bob, carol = (make_user(n) for n in ("alice", "bob", "carol"))
    events = [world.profile(u) for u in (alice, bob, carol)]
    events += [world.edge(graph.Followed, bob, alice), world.edge(graph.Followed, carol, alice)]
    first = world.post(alice, "今日のラーメンは美味しかった #ラーメン")
    second = world.post(alice, "second post")
    first_id, second_id = first.data["post_id"], second.data["post_id"]
    events += [first, second, world.edit(first_id, "今日のラーメンは最高 #ラーメン"),
               world.like(bob, first_id), world.like(carol, first_id),
               world.like(carol, first_id, undo=True), world.post(bob, "reply", reply_to=first_id),
               world.edit(second_id, "second, edited"), world.delete(second_id),
               world.edit(first_id, "今日のラーメンは美味しかった (edited twice) #ラーメン"),
               world.edge(graph.Unfollowed, carol, alice), world.edge(graph.Muted, bob, carol),
               world.update_profile(alice, "Alice A.", "bio"),
               world.edge(graph.Blocked, carol, bob)]
    return events, (alice, bob, carol)


async def test_duplicates_and_reordering_converge(story, tmp_path, request):
    events, (alice, bob, _) = story
    in_order, in_order_search = await apply_all(
        f"sqlite+aiosqlite:///{tmp_path / 'a.db'}", f"sqlite:///{tmp_path / 'a.search'}", events)
    rng = random.Random(request.node.name)
    for attempt in range(3):
        shuffled = events + rng.sample(events, len(events) // 2)  # duplicates
        rng.shuffle(shuffled)
        state, search = await apply_all(f"sqlite+aiosqlite:///{tmp_path / f'b{attempt}.db'}",
                                        f"sqlite:///{tmp_path / f'b{attempt}.search'}",
                                        shuffled)
        for name in READ_MODELS:
            assert state[name] == in_order[name], f"{name} differs after shuffle {attempt}"
        viewer = Viewer(user_id=bob.user_id, username=bob.username,
                        following=frozenset({alice.user_id}))
        for q in ("ラーメン", "edited", "second"):
            expected = await in_order_search.search_posts(q, viewer, limit=20, cursor=None)
            got = await search.search_posts(q, viewer, limit=20, cursor=None)
            assert got.ids == expected.ids, q
        await search.close()
    await in_order_search.close()


@pytest.fixture
def chat_story(world, make_user):
    """A channel whose members change, messages edited, reacted to and deleted."""
    alice, bob, carol = (make_user(n) for n in ("alice", "bob", "carol"))
    channel = world.channel(alice, bob)
    channel_id = channel.data["channel_id"]
    ramen = world.message(channel_id, alice, "今日のラーメンは美味しかった")
    gone = world.message(channel_id, bob, "ramen again tomorrow?")
    ramen_id, gone_id = ramen.data["message"]["id"], gone.data["message"]["id"]
    events = [channel, ramen, gone, world.change_members(channel_id, alice, add=(carol,)),
              world.edit_message(ramen_id, "今日のラーメンは最高だった"),
              world.react(ramen_id, carol, "🍜"), world.delete_message(gone_id),
              world.change_members(channel_id, alice, remove=(bob,)),
              world.message(channel_id, carol, "ramen club")]
    return events, channel_id, (alice, bob, carol)


async def test_chat_duplicates_and_reordering_converge(chat_story, tmp_path, request):
    events, channel_id, (alice, _, carol) = chat_story
    in_order, in_order_search = await apply_all(
        f"sqlite+aiosqlite:///{tmp_path / 'a.db'}", f"sqlite:///{tmp_path / 'a.search'}", events)
    assert sorted(row[1] for row in in_order["chat_members"]) == sorted(
        [alice.user_id, carol.user_id])
    scope = MessageScope(frozenset({channel_id}))
    searches = {"ラーメン": 1, "最高": 1, "美味": 0, "ramen": 1, "tomorrow": 0}
    for q, count in searches.items():
        hits = await in_order_search.search_messages(q, scope, limit=20, cursor=None)
        assert len(hits.ids) == count, q
    rng = random.Random(request.node.name)
    for attempt in range(3):
        shuffled = events + rng.sample(events, len(events) // 2)  # duplicates
        rng.shuffle(shuffled)
        state, search = await apply_all(f"sqlite+aiosqlite:///{tmp_path / f'b{attempt}.db'}",
                                        f"sqlite:///{tmp_path / f'b{attempt}.search'}",
                                        shuffled)
        for name in ("chat_channels", "chat_members", "chat_messages"):
            assert state[name] == in_order[name], f"{name} differs after shuffle {attempt}"
        for q in searches:
            expected = await in_order_search.search_messages(q, scope, limit=20, cursor=None)
            got = await search.search_messages(q, scope, limit=20, cursor=None)
            assert got.ids == expected.ids, q
        await search.close()
    await in_order_search.close()
