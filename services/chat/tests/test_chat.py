"""Chat across two replicas and one Redis: channels, messages, acks, typing, read markers."""

import asyncio
import uuid

from chassis.testing import assert_problem

from .conftest import messages_in


async def test_dm_is_one_channel_per_pair_and_groups_have_owners(replicas, user, api):
    [replica] = await replicas(1)
    alice, bob, carol = [await user(replica, n) for n in ("alice", "bob", "carol")]
    async with api(replica, alice) as as_alice, api(replica, bob) as as_bob:
        first = await as_alice.post("/api/chat/channels",
                                    json={"kind": "dm", "member_ids": [bob.id]})
        assert first.status_code == 201, first.text
        again = await as_bob.post("/api/chat/channels",
                                  json={"kind": "dm", "member_ids": [alice.id]})
        assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
        group = (await as_alice.post("/api/chat/channels", json={
            "kind": "group", "name": "ramen club", "member_ids": [bob.id]})).json()
        assert sorted(group["member_ids"]) == sorted([alice.id, bob.id])
        removing = await as_bob.delete(f"/api/chat/channels/{group['id']}/members/{alice.id}")
        assert_problem(removing, 403)
        added = await as_bob.post(f"/api/chat/channels/{group['id']}/members",
                                  json={"member_ids": [carol.id]})
        assert carol.id in added.json()["member_ids"]
        left = await as_bob.delete(f"/api/chat/channels/{group['id']}/members/{bob.id}")
        assert left.status_code == 204
        assert_problem(await as_bob.get(f"/api/chat/channels/{group['id']}/messages"), 404)
        listed = (await as_alice.get("/api/chat/channels")).json()["items"]
        assert {c["id"] for c in listed} == {first.json()["id"], group["id"]}


async def test_clients_on_two_replicas_exchange_messages_with_acks_typing_and_reads(
        replicas, user, api, connect):
    one, two = await replicas(2)
    alice, bob = await user(one, "alice"), await user(two, "bob")
    async with api(one, alice) as as_alice:
        channel = (await as_alice.post("/api/chat/channels", json={
            "kind": "dm", "member_ids": [bob.id]})).json()
    a, b = await connect(one, alice), await connect(two, bob)
    for i in range(5):
        await a.send({"type": "send", "channel_id": channel["id"], "client_msg_id": f"a{i}",
                      "text": f"hello {i} こんにちは"})
    await b.wait_for(lambda c: len(messages_in(c, channel["id"])) == 5, "bob gets 5 messages")
    received = messages_in(b, channel["id"])
    assert [f["message"]["text"] for f in received] == [f"hello {i} こんにちは" for i in range(5)]
    assert [f["seq"] for f in received] == [1, 2, 3, 4, 5]
    await a.wait_for(lambda c: len(c.of("ack")) == 5, "alice's 5 acks")
    assert [f["client_msg_id"] for f in a.of("ack")] == [f"a{i}" for i in range(5)]
    assert [f["seq"] for f in a.of("ack")] == [1, 2, 3, 4, 5]

    await b.send({"type": "typing", "channel_id": channel["id"]})
    await a.wait_for(lambda c: c.of("typing"), "alice sees bob typing")
    assert a.of("typing")[0] == {"type": "typing", "channel_id": channel["id"],
                                 "user_id": bob.id}
    await b.send({"type": "read", "channel_id": channel["id"], "seq": 4})
    await a.wait_for(lambda c: c.of("read"), "alice sees bob's read marker")
    assert a.of("read")[0]["seq"] == 4 and a.of("read")[0]["user_id"] == bob.id
    async with api(two, bob) as as_bob:
        [mine] = (await as_bob.get("/api/chat/channels")).json()["items"]
    assert mine["unread_count"] == 1 and mine["last_seq"] == 5


async def test_edits_deletes_and_reactions_reach_everyone_as_new_seqs(
        replicas, user, api, connect):
    one, two = await replicas(2)
    alice, bob = await user(one, "alice"), await user(two, "bob")
    async with api(one, alice) as as_alice, api(two, bob) as as_bob:
        channel = (await as_alice.post("/api/chat/channels", json={
            "kind": "group", "name": "g", "member_ids": [bob.id]})).json()
        b = await connect(two, bob)
        path = f"/api/chat/channels/{channel['id']}/messages"
        sent = (await as_alice.post(path, json={"client_msg_id": "m1", "text": "typo"})).json()
        repeat = await as_alice.post(path, json={"client_msg_id": "m1", "text": "typo"})
        assert repeat.status_code == 200 and repeat.json()["id"] == sent["id"]
        edited = await as_alice.patch(f"{path}/1", json={"text": "fixed"})
        assert edited.status_code == 200 and edited.json()["change_seq"] == 2
        assert_problem(await as_bob.patch(f"{path}/1", json={"text": "mine now"}), 403)
        assert (await as_bob.put(f"{path}/1/reactions/🍜")).status_code == 204
        assert (await as_alice.delete(f"{path}/1")).status_code == 204
        await b.wait_for(lambda c: len(messages_in(c, channel["id"])) == 4, "four changes")
        frames = messages_in(b, channel["id"])
        assert [f["seq"] for f in frames] == [1, 2, 3, 4]
        assert frames[1]["message"]["text"] == "fixed" and frames[1]["message"]["edited_at"]
        assert frames[2]["message"]["reactions"] == {"🍜": [bob.id]}
        assert frames[3]["message"]["deleted"] and frames[3]["message"]["text"] == ""
        history = (await as_bob.get(path)).json()["items"]
        assert [(m["seq"], m["deleted"]) for m in history] == [(1, True)]


async def test_concurrent_senders_on_both_replicas_lose_and_repeat_nothing(
        replicas, user, api, connect):
    one, two = await replicas(2)
    people = [await user(one if i % 2 else two, f"p{i}") for i in range(6)]
    async with api(one, people[0]) as owner:
        channel = (await owner.post("/api/chat/channels", json={
            "kind": "group", "name": "busy", "member_ids": [p.id for p in people[1:]]})).json()
    clients = [await connect(one if i % 2 else two, p) for i, p in enumerate(people)]

    async def burst(client, i):
        for n in range(15):
            await client.send({"type": "send", "channel_id": channel["id"],
                               "client_msg_id": f"{i}-{n}", "text": f"{i}:{n}"})

    await asyncio.gather(*(burst(c, i) for i, c in enumerate(clients)))
    total = 15 * len(clients)
    for client in clients:
        await client.wait_for(lambda c: len(messages_in(c, channel["id"])) >= total,
                              f"{total} messages", timeout_s=30)
    for client in clients:
        seqs = [f["seq"] for f in messages_in(client, channel["id"])]
        assert seqs == list(range(1, total + 1)), "every seq once, in order, no gaps"
        texts = sorted(f["message"]["text"] for f in messages_in(client, channel["id"]))
        assert texts == sorted(f"{i}:{n}" for i in range(len(clients)) for n in range(15))


async def test_a_non_member_cannot_read_or_post_and_a_stranger_is_unknown(
        replicas, user, api, connect):
    [replica] = await replicas(1)
    alice, bob, eve = [await user(replica, n) for n in ("alice", "bob", "eve")]
    async with api(replica, alice) as as_alice, api(replica, eve) as as_eve:
        channel = (await as_alice.post("/api/chat/channels", json={
            "kind": "dm", "member_ids": [bob.id]})).json()
        path = f"/api/chat/channels/{channel['id']}"
        assert_problem(await as_eve.get(f"{path}/messages"), 404)
        assert_problem(await as_eve.post(f"{path}/messages",
                                         json={"client_msg_id": "x", "text": "hi"}), 404)
        assert_problem(await as_eve.get(path), 404)
        stranger = await as_alice.post("/api/chat/channels", json={
            "kind": "dm", "member_ids": [str(uuid.uuid4())]})
        assert assert_problem(stranger, 422)["errors"][0]["field"] == "member_ids"
        alone = await as_alice.post("/api/chat/channels", json={"kind": "dm",
                                                                "member_ids": [alice.id]})
        assert_problem(alone, 422)
    e = await connect(replica, eve)
    await e.send({"type": "send", "channel_id": channel["id"], "client_msg_id": "x",
                  "text": "let me in"})
    await e.wait_for(lambda c: c.of("error"), "an error frame")
    assert e.of("error")[0]["code"] == "not_found"
