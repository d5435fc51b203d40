"""Bad input and bad callers get a 4xx problem naming what is wrong, never a 500."""

import asyncio
import json

import pytest

from chassis.testing import assert_problem


def field_of(problem: dict) -> str:
    return problem["errors"][0]["field"]


@pytest.mark.parametrize(("body", "field"), [
    ({}, "text"),
    ({"text": ""}, "text"),
    ({"text": "  \n\t "}, "text"),
    ({"text": "x" * 5001}, "text"),
    ({"text": 42}, "text"),
    ({"text": "a\u0000b"}, "text"),
    ({"text": "a\ud800b"}, "text"),
    ({"text": "hi", "visibility": "everyone"}, "visibility"),
    ({"text": "hi", "reply_to": "01HZZZZZZZZZZZZZZZZZZZZZZZ"}, "reply_to"),
    ({"text": "hi", "reply_to": "no/such\u0000id"}, "reply_to"),
    ({"text": "hi", "media_ids": ["a", "b", "c", "d", "e"]}, "media_ids"),
    ({"text": "hi", "media_ids": ["a", "a"]}, "media_ids"),
    ({"text": "hi", "media_ids": "a"}, "media_ids"),
    ({"text": "hi", "content_warning": "x" * 501}, "content_warning"),
], ids=lambda v: str(v)[:30])
async def test_a_bad_new_post_is_422_naming_the_field(client, user, body, field):
    alice = await user()
    # json.dumps escapes a lone surrogate as \\ud800, as a client's JSON encoder may send it
    response = await client.post("/api/posts", content=json.dumps(body),
                                 headers=alice.headers | {"content-type": "application/json"})
    assert field_of(assert_problem(response, 422)).startswith(field)


async def test_the_longest_text_and_content_warning_are_accepted(client, user):
    alice = await user()
    response = await client.post("/api/posts", json={
        "text": "語" * 5000, "content_warning": "x" * 500}, headers=alice.headers)
    assert response.status_code == 201, response.text


@pytest.mark.parametrize(("body", "field"), [
    ({}, "body"),
    ({"text": None}, "text"),
    ({"text": " "}, "text"),
    ({"text": "x" * 5001}, "text"),
    ({"content_warning": "x" * 501}, "content_warning"),
])
async def test_a_bad_edit_is_422_naming_the_field(client, user, post, body, field):
    alice = await user()
    created = await post(alice)
    response = await client.patch(f"/api/posts/{created['id']}", json=body,
                                  headers=alice.headers)
    assert field_of(assert_problem(response, 422)) == field


async def test_a_malformed_post_id_is_422_naming_it(client, user):
    alice = await user()
    response = await client.put("/api/posts/bad%00id/like", headers=alice.headers)
    assert field_of(assert_problem(response, 422)) == "post_id"


async def test_a_body_that_is_not_json_is_422(client, user):
    alice = await user()
    response = await client.post("/api/posts", content=b"{not json",
                                 headers=alice.headers | {"content-type": "application/json"})
    assert_problem(response, 422)


async def test_an_oversized_body_is_413(client, user):
    alice = await user()
    response = await client.post("/api/posts", json={"text": "x" * 2_000_000},
                                 headers=alice.headers)
    assert_problem(response, 413)


@pytest.mark.parametrize("headers", [
    {},
    {"Authorization": "Bearer not-a-token"},
    {"Authorization": "Basic dXNlcjpwYXNz"},
], ids=["missing", "garbage", "not-bearer"])
@pytest.mark.parametrize(("method", "path"), [
    ("POST", "/api/posts"), ("PATCH", "/api/posts/x"), ("DELETE", "/api/posts/x"),
    ("PUT", "/api/posts/x/like"), ("DELETE", "/api/posts/x/like"),
])
async def test_every_command_needs_a_valid_access_token(client, headers, method, path):
    response = await client.request(method, path, json={"text": "hi"}, headers=headers)
    assert_problem(response, 401)


async def test_an_id_token_is_not_an_access_token(client, user):
    alice = await user()
    response = await client.post("/api/posts", json={"text": "hi"},
                                 headers={"Authorization": f"Bearer {alice.tokens['IdToken']}"})
    assert_problem(response, 401)


async def test_a_repeated_idempotency_key_returns_the_first_post(client, user, events, rows):
    alice = await user()
    headers = alice.headers | {"Idempotency-Key": "create-1"}
    first = await client.post("/api/posts", json={"text": "once"}, headers=headers)
    again = await client.post("/api/posts", json={"text": "once"}, headers=headers)
    assert first.status_code == again.status_code == 201
    assert again.json() == first.json()
    assert len(await rows("posts", author_id=alice.id)) == 1
    published = await events.drain(1)
    assert [e["data"]["post_id"] for e in published] == [first.json()["id"]]


async def test_concurrent_repeats_of_one_idempotency_key_create_one_post(client, user, rows):
    alice = await user()
    headers = alice.headers | {"Idempotency-Key": "create-race"}
    responses = await asyncio.gather(*(
        client.post("/api/posts", json={"text": "at once"}, headers=headers) for _ in range(6)))
    assert {r.status_code for r in responses} == {201}
    assert len({r.json()["id"] for r in responses}) == 1
    assert len(await rows("posts", author_id=alice.id)) == 1
    assert len(await rows("outbox")) == 1


async def test_an_idempotency_key_reused_for_another_post_is_422(client, user, rows):
    alice = await user()
    headers = alice.headers | {"Idempotency-Key": "create-2"}
    assert (await client.post("/api/posts", json={"text": "one"},
                              headers=headers)).status_code == 201
    response = await client.post("/api/posts", json={"text": "two"}, headers=headers)
    assert field_of(assert_problem(response, 422)) == "Idempotency-Key"
    assert [p["text"] for p in await rows("posts", author_id=alice.id)] == ["one"]


async def test_idempotency_keys_belong_to_their_user(client, user):
    alice, bob = await user(), await user()
    key = {"Idempotency-Key": "shared"}
    mine = await client.post("/api/posts", json={"text": "hi"}, headers=alice.headers | key)
    theirs = await client.post("/api/posts", json={"text": "hi"}, headers=bob.headers | key)
    assert mine.status_code == theirs.status_code == 201
    assert theirs.json()["author_id"] == bob.id and theirs.json()["id"] != mine.json()["id"]
