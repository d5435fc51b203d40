"""Blocks and follows arrive as the profile service's graph events, through the real
post-graph queue: someone the author blocked may not reply to or like the author's posts,
and only followers may reply to or like followers-only posts."""

from datetime import timedelta

from chassis.events import Envelope, new_event
from chassis.testing import assert_problem, wait_until
from profile_svc import events as profile_events


def graph_event(kind: type, actor, target) -> Envelope:
    """A graph event exactly as the profile service would publish it."""
    return new_event(kind(actor_id=actor.id, target_id=target.id), producer="profile",
                     subject=f"user:{actor.id}", actor=actor.id)


async def reply(client, author, parent: dict):
    return await client.post("/api/posts", json={"text": "re", "reply_to": parent["id"]},
                             headers=author.headers)


async def replies_are(client, author, parent: dict, status: int) -> None:
    """Wait until a reply gets `status` (the consumer applies events in the background)."""

    async def holds() -> bool:
        return (await reply(client, author, parent)).status_code == status

    await wait_until(holds, f"a reply gets {status}")


async def test_a_reply_is_refused_once_the_parent_author_blocks_you(client, user, post, graph):
    alice, bob = await user("alice"), await user("bob")
    parent = await post(alice, "my post")
    await graph.publish(graph_event(profile_events.Blocked, alice, bob))
    await replies_are(client, bob, parent, 403)
    assert "blocked" in assert_problem(await reply(client, bob, parent), 403)["detail"]
    like = await client.put(f"/api/posts/{parent['id']}/like", headers=bob.headers)
    assert_problem(like, 403)
    unlike = await client.delete(f"/api/posts/{parent['id']}/like", headers=bob.headers)
    assert unlike.status_code == 204
    bobs = await post(bob, "bob's own post")
    assert (await reply(client, alice, bobs)).status_code == 201
    assert (await reply(client, await user(), parent)).status_code == 201


async def test_an_unblock_lets_replies_in_again(client, user, post, graph):
    alice, bob = await user(), await user()
    parent = await post(alice)
    await graph.publish(graph_event(profile_events.Blocked, alice, bob))
    await replies_are(client, bob, parent, 403)
    await graph.publish(graph_event(profile_events.Unblocked, alice, bob))
    await replies_are(client, bob, parent, 201)
    assert (await client.put(f"/api/posts/{parent['id']}/like",
                             headers=bob.headers)).status_code == 204


async def test_a_block_delivered_twice_changes_nothing(client, user, post, graph, rows):
    alice, bob = await user(), await user()
    parent = await post(alice)
    block = graph_event(profile_events.Blocked, alice, bob)
    await graph.publish(block)
    await replies_are(client, bob, parent, 403)
    unblock = graph_event(profile_events.Unblocked, alice, bob)
    await graph.publish(unblock)
    await replies_are(client, bob, parent, 201)
    await graph.publish(block)
    await wait_until(graph.settled, "the duplicate was consumed")
    assert (await reply(client, bob, parent)).status_code == 201
    [row] = await rows("blocks", blocker_id=alice.id, blocked_id=bob.id)
    assert row["blocked"] is False and row["changed_at"] == unblock.occurred_at


async def test_a_block_older_than_the_unblock_it_crossed_is_ignored(
        client, user, post, graph, rows):
    alice, bob = await user(), await user()
    parent = await post(alice)
    unblock = graph_event(profile_events.Unblocked, alice, bob)
    late_block = graph_event(profile_events.Blocked, alice, bob).model_copy(
        update={"occurred_at": unblock.occurred_at - timedelta(seconds=1)})
    await graph.publish(unblock)
    await wait_until(graph.settled, "the unblock was consumed")
    await graph.publish(late_block)
    await wait_until(graph.settled, "the late block was consumed")
    assert await rows("inbox", event_id=late_block.id), "the late block was never handled"
    [row] = await rows("blocks", blocker_id=alice.id, blocked_id=bob.id)
    assert row["blocked"] is False
    assert (await reply(client, bob, parent)).status_code == 201


async def test_followers_only_posts_take_replies_and_likes_from_followers(
        client, user, graph):
    alice, bob = await user("alice"), await user("bob")
    created = await client.post("/api/posts", json={"text": "friends only",
                                                    "visibility": "followers"},
                                headers=alice.headers)
    parent = created.json()
    body = assert_problem(await reply(client, bob, parent), 422)
    assert body["errors"][0]["field"] == "reply_to", "a post you may not see is unknown"
    assert_problem(await client.put(f"/api/posts/{parent['id']}/like", headers=bob.headers),
                   404)
    await graph.publish(graph_event(profile_events.Followed, bob, alice))
    await replies_are(client, bob, parent, 201)
    assert (await client.put(f"/api/posts/{parent['id']}/like",
                             headers=bob.headers)).status_code == 204
    await graph.publish(graph_event(profile_events.Unfollowed, bob, alice))
    await replies_are(client, bob, parent, 422)


async def test_direct_posts_take_replies_from_the_mentioned_only(client, user):
    alice, bob, carol = await user("alice"), await user("bob"), await user("carol")
    created = await client.post("/api/posts", json={"text": f"hi @{bob.username}",
                                                    "visibility": "direct"},
                                headers=alice.headers)
    parent = created.json()
    assert (await reply(client, bob, parent)).status_code == 201
    assert_problem(await reply(client, carol, parent), 422)
    assert (await reply(client, alice, parent)).status_code == 201
