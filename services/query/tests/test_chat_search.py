"""`GET /api/search?type=messages`, fed by chat events through the real queue: members find
their channels' messages (Japanese by any two characters), nobody else does."""

from urllib.parse import urlencode

from chassis.testing import assert_problem

from .test_timelines import eventually, setup_users


def search(q: str, **params: str) -> str:
    return "/api/search?" + urlencode({"q": q, "type": "messages", **params})


def ids(page) -> list[str]:
    return [item["id"] for item in page["items"]]


async def test_a_member_finds_a_japanese_message_by_two_character_substrings(
        client, bus, world, make_user):
    alice, bob = await setup_users(bus, world, make_user, "alice", "bob")
    channel = world.channel(alice, bob)
    channel_id = channel.data["channel_id"]
    posted = world.message(channel_id, alice, "今日のラーメンは美味しかった")
    bus.publish(channel, posted)
    message_id = posted.data["message"]["id"]
    await eventually(client, search("ラーメン"), bob, lambda b: ids(b) == [message_id],
                     "bob finds alice's message by ラーメン")
    page = (await client.get(search("美味"), headers=bob.headers)).json()
    assert ids(page) == [message_id] and page["next_cursor"] is None
    item = page["items"][0]
    assert item["channel_id"] == channel_id and item["seq"] == 1
    assert item["text"] == "今日のラーメンは美味しかった" and item["edited_at"] is None
    assert item["sender"] == {"user_id": alice.user_id, "username": alice.username,
                              "display_name": alice.username.title(), "avatar_url": None}
    for q in ("美味しい", "ラーメン 美味", f"from:{alice.username}"):
        assert ids((await client.get(search(q), headers=alice.headers)).json()) == [message_id]
    one = await client.get(search("ラーメン", channel_id=channel_id), headers=bob.headers)
    assert ids(one.json()) == [message_id]
    for q in ("ラーメン屋", "天気", f"from:{bob.username}", "from:nobody_at_all"):
        assert ids((await client.get(search(q), headers=bob.headers)).json()) == [], q


async def test_a_non_member_finds_nothing_and_cannot_name_the_channel(
        client, bus, world, make_user):
    alice, bob, carol = await setup_users(bus, world, make_user, "alice", "bob", "carol")
    channel = world.channel(alice, bob)
    channel_id = channel.data["channel_id"]
    posted = world.message(channel_id, bob, "secret ramen plan")
    bus.publish(channel, posted)
    await eventually(client, search("ramen"), alice,
                     lambda b: ids(b) == [posted.data["message"]["id"]], "alice finds it")
    assert ids((await client.get(search("ramen"), headers=carol.headers)).json()) == []
    assert_problem(await client.get(search("ramen", channel_id=channel_id),
                                    headers=carol.headers), 404)
    assert_problem(await client.get(search("ramen", channel_id="01NOSUCHCHANNEL0000000000"),
                                    headers=alice.headers), 404)


async def test_a_removed_member_no_longer_finds_the_channels_messages(
        client, bus, world, make_user):
    alice, bob, carol = await setup_users(bus, world, make_user, "alice", "bob", "carol")
    channel = world.channel(alice, bob, carol)
    channel_id = channel.data["channel_id"]
    posted = world.message(channel_id, alice, "the offsite is on friday")
    bus.publish(channel, posted)
    message_id = posted.data["message"]["id"]
    await eventually(client, search("offsite"), bob, lambda b: ids(b) == [message_id],
                     "bob finds the message while a member")
    bus.publish(world.change_members(channel_id, alice, remove=(bob,)))
    await eventually(client, search("offsite"), bob, lambda b: ids(b) == [],
                     "bob no longer finds it once removed")
    assert_problem(await client.get(search("offsite", channel_id=channel_id),
                                    headers=bob.headers), 404)
    assert ids((await client.get(search("offsite"), headers=carol.headers)).json()) == [
        message_id]


async def test_an_edited_message_is_found_by_its_new_text_and_a_deleted_one_not_at_all(
        client, bus, world, make_user):
    alice, bob = await setup_users(bus, world, make_user, "alice", "bob")
    channel = world.channel(alice, bob)
    channel_id = channel.data["channel_id"]
    posted = world.message(channel_id, alice, "明日は雨らしい")
    message_id = posted.data["message"]["id"]
    bus.publish(channel, posted, world.edit_message(message_id, "明日は晴れらしい"))
    await eventually(client, search("晴れ"), bob, lambda b: ids(b) == [message_id],
                     "the edit is found by its new text")
    page = (await client.get(search("晴れ"), headers=bob.headers)).json()
    assert page["items"][0]["text"] == "明日は晴れらしい" and page["items"][0]["edited_at"]
    assert ids((await client.get(search("雨"), headers=bob.headers)).json()) == []
    bus.publish(world.react(message_id, bob, "👍"), world.delete_message(message_id))
    await eventually(client, search("晴れ"), bob, lambda b: ids(b) == [],
                     "the deleted message is gone")
    assert ids((await client.get(search("明日"), headers=alice.headers)).json()) == []


async def test_pages_of_messages_are_full_and_newest_first(client, bus, world, make_user):
    alice, bob = await setup_users(bus, world, make_user, "alice", "bob")
    ours, theirs = world.channel(alice, bob), world.channel(alice)
    events = [ours, theirs]
    for i in range(5):
        events.append(world.message(theirs.data["channel_id"], alice, f"standup note {i}"))
        events.append(world.message(ours.data["channel_id"], alice, f"standup {i}"))
    bus.publish(*events)
    expected = [e.data["message"]["id"] for e in reversed(events[2:])
                if e.data["message"]["channel_id"] == ours.data["channel_id"]]
    await eventually(client, search("standup", limit="10"), bob,
                     lambda b: ids(b) == expected, "bob finds the five messages of his channel")
    first = (await client.get(search("standup", limit="2"), headers=bob.headers)).json()
    second = (await client.get(search("standup", limit="2", cursor=first["next_cursor"]),
                               headers=bob.headers)).json()
    assert ids(first) + ids(second) == expected[:4]


async def test_bad_message_searches_are_problems(client, bus, world, make_user):
    (alice,) = await setup_users(bus, world, make_user, "alice")
    assert_problem(await client.get(search("lunch has:media"), headers=alice.headers), 422)
    assert_problem(await client.get("/api/search?q=x&channel_id=c1", headers=alice.headers), 422)
    assert_problem(await client.get(search("lunch", cursor="%%%"), headers=alice.headers), 400)
    assert ids((await client.get(search("lunch"), headers=alice.headers)).json()) == []
