"""Create, edit and delete posts: what the API answers and the events each change publishes."""

import pytest

from chassis.testing import assert_problem

from .conftest import by_seq


async def test_a_new_post_is_returned_and_published(client, user, events):
    alice = await user("alice")
    response = await client.post("/api/posts", json={
        "text": "今日の#ラーメン with @Bob_1 #Ramen", "content_warning": "food"},
        headers=alice.headers)
    assert response.status_code == 201, response.text
    created = response.json()
    assert created["author_id"] == alice.id
    assert created["text"] == "今日の#ラーメン with @Bob_1 #Ramen"
    assert created["visibility"] == "public" and created["reply_to"] is None
    assert created["media_ids"] == [] and created["content_warning"] == "food"
    assert created["hashtags"] == ["ラーメン", "ramen"] and created["mentions"] == ["bob_1"]
    assert created["version"] == 1 and created["edited_at"] is None
    assert created["created_at"].endswith("Z")
    [event] = await events.drain(1)
    assert event["type"] == "post.created" and event["producer"] == "post"
    assert event["subject"] == f"post:{created['id']}" and event["actor"] == alice.id
    data = event["data"]
    assert data["post_id"] == created["id"] and data["author_username"] == alice.username
    assert (data["seq"], data["version"]) == (1, 1)
    assert data["hashtags"] == created["hashtags"] and data["content_warning"] == "food"


async def test_a_reply_names_the_post_and_its_author(client, user, post, events, ready_media):
    alice, bob = await user(), await user()
    parent = await post(alice, "question?")
    media_ids = await ready_media(bob, 2)
    reply = await post(bob, "answer", reply_to=parent["id"], visibility="followers",
                       media_ids=media_ids)
    assert reply["reply_to"] == parent["id"] and reply["visibility"] == "followers"
    assert reply["media_ids"] == media_ids and reply["published"]
    assert [m["media_id"] for m in reply["media"]] == media_ids
    published = {e["data"]["post_id"]: e["data"] for e in await events.drain(4)
                 if e["type"] == "post.created"}
    assert published[reply["id"]]["reply_to_author_id"] == alice.id


async def test_an_edit_keeps_the_earlier_version_and_publishes_the_new_state(
        client, user, post, events, rows):
    alice = await user()
    original = await post(alice, "first #one", content_warning="cw")
    response = await client.patch(f"/api/posts/{original['id']}",
                                  json={"text": "second #two @carol"}, headers=alice.headers)
    assert response.status_code == 200, response.text
    edited = response.json()
    assert edited["text"] == "second #two @carol" and edited["content_warning"] == "cw"
    assert edited["hashtags"] == ["two"] and edited["mentions"] == ["carol"]
    assert edited["version"] == 2 and edited["edited_at"] is not None
    assert edited["created_at"] == original["created_at"]
    cleared = await client.patch(f"/api/posts/{original['id']}",
                                 json={"content_warning": None}, headers=alice.headers)
    assert cleared.json()["content_warning"] is None and cleared.json()["version"] == 3
    history = await rows("post_versions", post_id=original["id"])
    assert [(v["version"], v["text"], v["content_warning"]) for v in
            sorted(history, key=lambda v: v["version"])] == [
        (1, "first #one", "cw"), (2, "second #two @carol", "cw")]
    created, first_edit, second_edit = by_seq(await events.drain(3))
    assert created["type"] == "post.created"
    assert first_edit["type"] == second_edit["type"] == "post.edited"
    assert (first_edit["data"]["seq"], first_edit["data"]["version"]) == (2, 2)
    assert first_edit["data"]["text"] == "second #two @carol"
    assert first_edit["data"]["hashtags"] == ["two"]
    assert (second_edit["data"]["seq"], second_edit["data"]["version"]) == (3, 3)
    assert second_edit["data"]["content_warning"] is None


async def test_an_edit_that_changes_nothing_is_no_new_version(client, user, post, events, rows):
    alice = await user()
    original = await post(alice, "same")
    response = await client.patch(f"/api/posts/{original['id']}", json={"text": " same "},
                                  headers=alice.headers)
    assert response.status_code == 200 and response.json()["version"] == 1
    assert await rows("post_versions", post_id=original["id"]) == []
    like = await client.put(f"/api/posts/{original['id']}/like", headers=alice.headers)
    assert like.status_code == 204
    types = [(e["type"], e["data"]["seq"]) for e in by_seq(await events.drain(2))]
    assert types == [("post.created", 1), ("post.liked", 2)]


async def test_a_deleted_post_answers_404_to_everything(client, user, post, events, rows):
    alice = await user()
    created = await post(alice)
    assert (await client.delete(f"/api/posts/{created['id']}",
                                headers=alice.headers)).status_code == 204
    path = f"/api/posts/{created['id']}"
    assert_problem(await client.delete(path, headers=alice.headers), 404)
    assert_problem(await client.patch(path, json={"text": "x"}, headers=alice.headers), 404)
    assert_problem(await client.put(f"{path}/like", headers=alice.headers), 404)
    assert_problem(await client.delete(f"{path}/like", headers=alice.headers), 404)
    _, deleted = by_seq(await events.drain(2))
    assert deleted["type"] == "post.deleted"
    assert deleted["data"]["post_id"] == created["id"] and deleted["data"]["seq"] == 2
    assert deleted["data"]["author_id"] == alice.id
    [row] = await rows("posts", id=created["id"])
    assert row["deleted_at"] is not None and row["seq"] == 2


async def test_deleting_erases_what_was_written(client, user, post, rows):
    alice = await user()
    created = await post(alice, "a secret #tag")
    path = f"/api/posts/{created['id']}"
    await client.patch(path, json={"text": "an edited secret"}, headers=alice.headers)
    assert len(await rows("post_versions", post_id=created["id"])) == 1
    assert (await client.delete(path, headers=alice.headers)).status_code == 204
    [row] = await rows("posts", id=created["id"])
    assert (row["text"], row["hashtags"], row["content_warning"]) == ("", [], None)
    assert await rows("post_versions", post_id=created["id"]) == []


async def test_a_reply_to_a_deleted_post_names_reply_to(client, user, post):
    alice = await user()
    parent = await post(alice)
    await client.delete(f"/api/posts/{parent['id']}", headers=alice.headers)
    response = await client.post("/api/posts", json={"text": "late", "reply_to": parent["id"]},
                                 headers=alice.headers)
    assert assert_problem(response, 422)["errors"][0]["field"] == "reply_to"


@pytest.mark.parametrize("method", ["PATCH", "DELETE"])
async def test_only_the_author_may_edit_or_delete(client, user, post, method, rows):
    alice, mallory = await user(), await user()
    created = await post(alice, "mine")
    response = await client.request(method, f"/api/posts/{created['id']}",
                                    json={"text": "yours"} if method == "PATCH" else None,
                                    headers=mallory.headers)
    assert "author" in assert_problem(response, 403)["detail"]
    [row] = await rows("posts", id=created["id"])
    assert (row["text"], row["deleted_at"], row["seq"]) == ("mine", None, 1)


@pytest.mark.parametrize("method", ["PATCH", "DELETE"])
async def test_changing_a_missing_post_is_404(client, user, method):
    alice = await user()
    response = await client.request(method, "/api/posts/01HZZZZZZZZZZZZZZZZZZZZZZZ",
                                    json={"text": "x"} if method == "PATCH" else None,
                                    headers=alice.headers)
    assert_problem(response, 404)
