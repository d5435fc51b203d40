"""Follow, block and mute: rules, counters, lists and the events they publish."""

import pytest

PROBLEM = "application/problem+json"


async def profile(client, viewer, user_id):
    response = await client.get(f"/api/profiles/{user_id}", headers=viewer.headers)
    assert response.status_code == 200, response.text
    return response.json()


async def test_follow_counts_both_sides_and_publishes(client, signup, tap):
    alice, bob = await signup("alice"), await signup("bob")
    response = await client.put(f"/api/profiles/{bob.user_id}/follow", headers=alice.headers)
    assert response.status_code == 204
    bob_seen = await profile(client, alice, bob.user_id)
    assert bob_seen["followers_count"] == 1
    assert bob_seen["relationship"]["following"] is True
    me = (await client.get("/api/profiles/me", headers=alice.headers)).json()
    assert me["following_count"] == 1 and me["relationship"] is None
    events = await tap.drain(3)
    followed = [e for e in events if e["type"] == "graph.followed"]
    assert followed and followed[0]["data"] == {"actor_id": alice.user_id, "target_id": bob.user_id}
    assert followed[0]["actor"] == alice.user_id


async def test_following_twice_changes_nothing(client, signup, tap):
    alice, bob = await signup(), await signup()
    for _ in range(2):
        assert (await client.put(f"/api/profiles/{bob.user_id}/follow",
                                 headers=alice.headers)).status_code == 204
    assert (await profile(client, alice, bob.user_id))["followers_count"] == 1
    events = await tap.drain(3, timeout_s=3)
    assert [e["type"] for e in events].count("graph.followed") == 1


async def test_unfollow_reverses_the_counts(client, signup):
    alice, bob = await signup(), await signup()
    await client.put(f"/api/profiles/{bob.user_id}/follow", headers=alice.headers)
    assert (await client.delete(f"/api/profiles/{bob.user_id}/follow",
                                headers=alice.headers)).status_code == 204
    assert (await profile(client, alice, bob.user_id))["followers_count"] == 0
    assert (await client.delete(f"/api/profiles/{bob.user_id}/follow",
                                headers=alice.headers)).status_code == 204


async def test_following_yourself_is_refused(client, signup):
    alice = await signup()
    response = await client.put(f"/api/profiles/{alice.user_id}/follow", headers=alice.headers)
    assert response.status_code == 422
    assert response.headers["content-type"].startswith(PROBLEM)
    assert "yourself" in response.json()["detail"]


async def test_following_an_unknown_user_is_404(client, signup):
    alice = await signup()
    response = await client.put("/api/profiles/no-such-user/follow", headers=alice.headers)
    assert response.status_code == 404
    assert response.headers["content-type"].startswith(PROBLEM)


async def test_block_removes_follows_both_ways(client, signup, tap):
    alice, bob = await signup(), await signup()
    await client.put(f"/api/profiles/{bob.user_id}/follow", headers=alice.headers)
    await client.put(f"/api/profiles/{alice.user_id}/follow", headers=bob.headers)
    assert (await client.put(f"/api/profiles/{bob.user_id}/block",
                             headers=alice.headers)).status_code == 204
    bob_seen = await profile(client, alice, bob.user_id)
    assert bob_seen["followers_count"] == 0 and bob_seen["following_count"] == 0
    assert bob_seen["relationship"] == {"following": False, "followed_by": False,
                                        "blocking": True, "muting": False}
    me = (await client.get("/api/profiles/me", headers=alice.headers)).json()
    assert me["followers_count"] == 0 and me["following_count"] == 0
    types = [e["type"] for e in await tap.drain(7)]
    assert types.count("graph.unfollowed") == 2 and "graph.blocked" in types


async def test_blocked_user_cannot_follow_or_see_the_blocker(client, signup):
    alice, bob = await signup(), await signup()
    await client.put(f"/api/profiles/{bob.user_id}/block", headers=alice.headers)
    follow = await client.put(f"/api/profiles/{alice.user_id}/follow", headers=bob.headers)
    assert follow.status_code == 403
    assert follow.headers["content-type"].startswith(PROBLEM)
    assert "blocked" in follow.json()["detail"]
    hidden = await client.get(f"/api/profiles/{alice.user_id}", headers=bob.headers)
    assert hidden.status_code == 404
    by_name = await client.get(f"/api/profiles/by-username/{alice.username}", headers=bob.headers)
    assert by_name.status_code == 404


async def test_blocker_must_unblock_before_following(client, signup):
    alice, bob = await signup(), await signup()
    await client.put(f"/api/profiles/{bob.user_id}/block", headers=alice.headers)
    assert (await client.put(f"/api/profiles/{bob.user_id}/follow",
                             headers=alice.headers)).status_code == 403
    assert (await client.delete(f"/api/profiles/{bob.user_id}/block",
                                headers=alice.headers)).status_code == 204
    assert (await client.put(f"/api/profiles/{bob.user_id}/follow",
                             headers=alice.headers)).status_code == 204
    assert (await client.put(f"/api/profiles/{alice.user_id}/follow",
                             headers=bob.headers)).status_code == 204


async def test_mute_is_recorded_and_published(client, signup, tap):
    alice, bob = await signup(), await signup()
    assert (await client.put(f"/api/profiles/{bob.user_id}/mute",
                             headers=alice.headers)).status_code == 204
    assert (await profile(client, alice, bob.user_id))["relationship"]["muting"] is True
    assert (await client.delete(f"/api/profiles/{bob.user_id}/mute",
                                headers=alice.headers)).status_code == 204
    assert (await profile(client, alice, bob.user_id))["relationship"]["muting"] is False
    types = [e["type"] for e in await tap.drain(4)]
    assert "graph.muted" in types and "graph.unmuted" in types


@pytest.mark.parametrize("verb", ["block", "mute"])
async def test_blocking_or_muting_yourself_is_refused(client, signup, verb):
    alice = await signup()
    response = await client.put(f"/api/profiles/{alice.user_id}/{verb}", headers=alice.headers)
    assert response.status_code == 422


async def test_followers_and_following_lists_page_with_cursors(client, signup):
    star = await signup("star")
    fans = [await signup("fan") for _ in range(5)]
    for fan in fans:
        await client.put(f"/api/profiles/{star.user_id}/follow", headers=fan.headers)
    seen, cursor = [], None
    while True:
        params = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        page = (await client.get(f"/api/profiles/{star.user_id}/followers", params=params,
                                 headers=star.headers)).json()
        seen += [p["user_id"] for p in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert seen == [f.user_id for f in reversed(fans)]
    following = (await client.get(f"/api/profiles/{fans[0].user_id}/following",
                                  headers=star.headers)).json()
    assert [p["username"] for p in following["items"]] == [star.username]
    assert following["next_cursor"] is None


async def test_lists_leave_out_blocked_users_before_paging(client, signup):
    star, viewer = await signup(), await signup()
    fans = [await signup() for _ in range(3)]
    for fan in fans:
        await client.put(f"/api/profiles/{star.user_id}/follow", headers=fan.headers)
    await client.put(f"/api/profiles/{fans[2].user_id}/block", headers=viewer.headers)
    page = (await client.get(f"/api/profiles/{star.user_id}/followers", params={"limit": 2},
                             headers=viewer.headers)).json()
    assert [p["user_id"] for p in page["items"]] == [fans[1].user_id, fans[0].user_id]
    assert page["next_cursor"] is None


@pytest.mark.parametrize("params", [{"limit": 0}, {"limit": 101}, {"limit": "x"}])
async def test_bad_limits_are_422(client, signup, params):
    alice = await signup()
    response = await client.get(f"/api/profiles/{alice.user_id}/followers", params=params,
                                headers=alice.headers)
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "limit"


async def test_foreign_cursor_is_400_naming_cursor(client, signup):
    alice = await signup()
    response = await client.get(f"/api/profiles/{alice.user_id}/followers",
                                params={"cursor": "bm90LW91cnM"}, headers=alice.headers)
    assert response.status_code == 400
    assert response.json()["errors"][0]["field"] == "cursor"


async def test_edit_profile_changes_only_given_fields(client, signup, tap):
    alice = await signup()
    response = await client.patch("/api/profiles/me", json={"bio": "hello 世界"},
                                  headers=alice.headers)
    assert response.status_code == 200
    assert response.json()["bio"] == "hello 世界"
    assert response.json()["display_name"] == alice.username
    by_name = await client.get(f"/api/profiles/by-username/{alice.username}", headers=alice.headers)
    assert by_name.json()["bio"] == "hello 世界"
    types = [e["type"] for e in await tap.drain(2)]
    assert "profile.updated" in types


@pytest.mark.parametrize(("field", "value"), [("display_name", ""), ("display_name", "x" * 51),
                                              ("bio", "x" * 501)])
async def test_bad_profile_edit_names_the_field(client, signup, field, value):
    alice = await signup()
    response = await client.patch("/api/profiles/me", json={field: value}, headers=alice.headers)
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == field


async def test_cached_profiles_reflect_changes_at_once(client, signup):
    alice, bob = await signup(), await signup()
    assert (await profile(client, alice, bob.user_id))["followers_count"] == 0
    assert (await client.get("/api/profiles/me", headers=bob.headers)).json()["bio"] == ""
    await client.put(f"/api/profiles/{bob.user_id}/follow", headers=alice.headers)
    assert (await profile(client, alice, bob.user_id))["followers_count"] == 1
    await client.patch("/api/profiles/me", json={"bio": "now"}, headers=bob.headers)
    assert (await client.get("/api/profiles/me", headers=bob.headers)).json()["bio"] == "now"
    assert (await profile(client, alice, bob.user_id))["bio"] == "now"
