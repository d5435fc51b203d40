"""Sign-up, login and refresh through the profile service, against moto's Cognito."""

import pytest

from .conftest import unique

PROBLEM = "application/problem+json"


async def test_signup_then_login_returns_bearer_tokens(client):
    username = unique()
    created = await client.post("/api/auth/signup", json={
        "username": username, "email": f"{username}@example.com", "password": "abcdefg1",
        "display_name": "Ada"})
    assert created.status_code == 201
    body = created.json()
    assert body["username"] == username and body["user_id"]
    login = await client.post("/api/auth/login",
                              json={"username": username, "password": "abcdefg1"})
    assert login.status_code == 200
    tokens = login.json()
    assert tokens["token_type"] == "Bearer" and tokens["expires_in"] > 0
    me = await client.get("/api/profiles/me",
                          headers={"Authorization": f"Bearer {tokens['access_token']}"})
    assert me.status_code == 200
    assert me.json()["user_id"] == body["user_id"]
    assert me.json()["display_name"] == "Ada"


async def test_signup_publishes_profile_created(client, tap):
    username = unique()
    created = await client.post("/api/auth/signup", json={
        "username": username, "email": f"{username}@example.com", "password": "abcdefg1"})
    [event] = await tap.drain(1)
    assert event["type"] == "profile.created"
    assert event["data"]["user_id"] == created.json()["user_id"]
    assert event["data"]["username"] == username
    assert event["producer"] == "profile" and event["version"] == 1


async def test_duplicate_username_is_a_conflict(client, signup):
    account = await signup()
    again = await client.post("/api/auth/signup", json={
        "username": account.username, "email": "other@example.com", "password": "abcdefg1"})
    assert again.status_code == 409
    assert again.headers["content-type"].startswith(PROBLEM)
    assert "username" in again.json()["detail"]


@pytest.mark.parametrize(("field", "value"), [
    ("username", "ab"),
    ("username", "Has-Capitals"),
    ("username", "x" * 31),
    ("username", "日本語のなまえ"),
    ("email", "not-an-email"),
    ("password", "short1"),
    ("password", " " * 12),
    ("password", "x1" * 200),
])
async def test_bad_signup_field_is_named_in_a_422(client, field, value):
    body = {"username": unique(), "email": "ok@example.com", "password": "abcdefg1"}
    body[field] = value
    response = await client.post("/api/auth/signup", json=body)
    assert response.status_code == 422
    assert response.headers["content-type"].startswith(PROBLEM)
    problem = response.json()
    assert problem["status"] == 422
    assert [e["field"] for e in problem["errors"]] == [field]
    assert field in problem["detail"]


async def test_missing_and_malformed_bodies_are_422_not_500(client):
    missing = await client.post("/api/auth/signup", json={"username": unique()})
    assert missing.status_code == 422
    assert {e["field"] for e in missing.json()["errors"]} == {"email", "password"}
    garbage = await client.post("/api/auth/signup", content=b"{not json",
                                headers={"Content-Type": "application/json"})
    assert garbage.status_code == 422
    assert garbage.headers["content-type"].startswith(PROBLEM)


async def test_failed_signup_leaves_no_account_behind(client):
    username = unique()
    bad = await client.post("/api/auth/signup", json={
        "username": username, "email": "bad", "password": "abcdefg1"})
    assert bad.status_code == 422
    login = await client.post("/api/auth/login",
                              json={"username": username, "password": "abcdefg1"})
    assert login.status_code == 401


async def test_wrong_password_is_401_problem(client, signup):
    account = await signup()
    response = await client.post("/api/auth/login",
                                 json={"username": account.username, "password": "wrong-pass1"})
    assert response.status_code == 401
    assert response.headers["content-type"].startswith(PROBLEM)


async def test_refresh_returns_a_working_access_token(client, signup):
    account = await signup()
    tokens = account.tokens
    refreshed = await client.post("/api/auth/refresh",
                                  json={"refresh_token": tokens["refresh_token"]})
    assert refreshed.status_code == 200
    fresh = refreshed.json()
    assert fresh["refresh_token"] == tokens["refresh_token"]
    me = await client.get("/api/profiles/me",
                          headers={"Authorization": f"Bearer {fresh['access_token']}"})
    assert me.status_code == 200 and me.json()["username"] == account.username


async def test_bad_refresh_token_is_401(client):
    response = await client.post("/api/auth/refresh", json={"refresh_token": "not-a-token"})
    assert response.status_code == 401


async def test_id_token_is_not_accepted_as_access_token(client, signup):
    account = await signup()
    response = await client.get("/api/profiles/me",
                                headers={"Authorization": f"Bearer {account.tokens['id_token']}"})
    assert response.status_code == 401


async def test_profiles_require_a_token(client):
    response = await client.get("/api/profiles/me")
    assert response.status_code == 401
    assert response.headers["content-type"].startswith(PROBLEM)


async def test_signup_repeated_with_idempotency_key_returns_the_first_response(client):
    username = unique()
    body = {"username": username, "email": f"{username}@example.com", "password": "abcdefg1"}
    headers = {"Idempotency-Key": f"key-{username}"}
    first = await client.post("/api/auth/signup", json=body, headers=headers)
    again = await client.post("/api/auth/signup", json=body, headers=headers)
    assert first.status_code == again.status_code == 201
    assert again.json() == first.json()
    other = await client.post("/api/auth/signup", headers=headers,
                              json=body | {"username": unique()})
    assert other.status_code == 422
    assert other.json()["errors"][0]["field"] == "Idempotency-Key"


async def test_repeated_logins_are_rate_limited_with_retry_after(client, signup):
    account = await signup()
    statuses = []
    for _ in range(10):
        response = await client.post("/api/auth/login",
                                     json={"username": account.username, "password": "wrong1x"})
        statuses.append(response.status_code)
    assert 429 in statuses
    limited = statuses.index(429)
    assert set(statuses[:limited]) == {401}
    refused = await client.post("/api/auth/login",
                                json={"username": account.username, "password": "correct horse 1"})
    assert refused.status_code == 429
    assert int(refused.headers["Retry-After"]) > 0
    assert refused.headers["content-type"].startswith(PROBLEM)
