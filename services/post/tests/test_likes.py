"""Likes: idempotent in both directions, each real change numbered by the post's seq."""

from chassis.testing import assert_problem

from .conftest import by_seq


async def test_liking_twice_and_unliking_twice_publish_one_event_each(
        client, user, post, events, rows):
    alice, bob = await user(), await user()
    created = await post(alice)
    path = f"/api/posts/{created['id']}/like"
    for _ in range(2):
        assert (await client.put(path, headers=bob.headers)).status_code == 204
    assert [like["user_id"] for like in await rows("likes", post_id=created["id"])] == [bob.id]
    for _ in range(2):
        assert (await client.delete(path, headers=bob.headers)).status_code == 204
    assert await rows("likes", post_id=created["id"]) == []
    published = by_seq(await events.drain(3))
    assert [(e["type"], e["data"]["seq"]) for e in published] == [
        ("post.created", 1), ("post.liked", 2), ("post.unliked", 3)]
    liked = published[1]
    assert liked["data"] == {"post_id": created["id"], "post_author_id": alice.id,
                             "user_id": bob.id, "seq": 2}
    assert liked["actor"] == bob.id and liked["subject"] == f"post:{created['id']}"


async def test_likes_and_edits_share_one_sequence(client, user, post, events):
    alice, bob = await user(), await user()
    created = await post(alice, "v1")
    await client.put(f"/api/posts/{created['id']}/like", headers=bob.headers)
    edited = await client.patch(f"/api/posts/{created['id']}", json={"text": "v2"},
                                headers=alice.headers)
    assert edited.json()["version"] == 2
    await client.put(f"/api/posts/{created['id']}/like", headers=alice.headers)
    await client.delete(f"/api/posts/{created['id']}", headers=alice.headers)
    published = by_seq(await events.drain(5))
    assert [(e["type"], e["data"]["seq"]) for e in published] == [
        ("post.created", 1), ("post.liked", 2), ("post.edited", 3), ("post.liked", 4),
        ("post.deleted", 5)]
    assert published[2]["data"]["version"] == 2


async def test_liking_a_missing_post_is_404(client, user):
    alice = await user()
    for method in ("PUT", "DELETE"):
        response = await client.request(method, "/api/posts/01HZZZZZZZZZZZZZZZZZZZZZZZ/like",
                                        headers=alice.headers)
        assert_problem(response, 404)
