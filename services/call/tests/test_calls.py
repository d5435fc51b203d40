"""Calls through the API and /ws/calls across two replicas: ringing, joining, relaying,
declining, missing, ending, and the bad input around them."""

import asyncio
import uuid
from datetime import UTC, datetime

from call_svc.commands import record_channel
from call_svc.models import blocks
from chassis.events import new_event
from chassis.testing import assert_problem
from chat_svc import events as chat_events
from profile_svc import events as profile_events

from .conftest import start_call

OFFER = "\r\n".join([
    "v=0", "o=- 1 2 IN IP4 127.0.0.1", "s=-", "t=0 0", "a=group:BUNDLE 0",
    "m=audio 9 UDP/TLS/RTP/SAVPF 111", "c=IN IP4 0.0.0.0", "a=mid:0", "a=sendrecv",
    "a=rtcp-mux", "a=rtpmap:111 opus/48000/2", "a=ice-ufrag:abcd",
    "a=ice-pwd:abcdefghijklmnopqrstuvwx", "a=fingerprint:sha-256 " + ":".join(["AB"] * 32),
    "a=setup:actpass", ""])
CANDIDATE = {"candidate": "candidate:1 1 udp 2122260223 192.0.2.1 54321 typ host",
             "sdpMid": "0", "sdpMLineIndex": 0}


async def test_a_call_rings_connects_relays_across_replicas_and_ends(
        replicas, user, api, connect, tap):
    one, two = await replicas(2)
    alice, bob = await user(one, "alice"), await user(two, "bob")
    started = await start_call(api, one, alice, [bob])
    call_id = started["call_id"]
    assert started["call"]["state"] == "ringing"
    assert {"ice_servers", "ttl_s"} <= started.keys()
    ringing = await tap[1].wait_for("call.ringing")
    assert ringing["data"]["callee_ids"] == [bob.id]
    assert ringing["data"]["caller_id"] == alice.id and ringing["data"]["media"] == "video"

    a = await connect(one, call_id, alice)
    await a.send({"type": "join"})
    await a.wait_for(lambda c: c.of("joined"), "alice joined")
    assert a.of("joined")[0]["participants"] == []
    b = await connect(two, call_id, bob)
    await b.send({"type": "join"})
    await b.wait_for(lambda c: c.of("joined"), "bob joined")
    assert b.of("joined")[0]["participants"] == [alice.id]
    await a.wait_for(lambda c: c.of("participant_joined"), "alice hears bob")
    assert a.of("participant_joined")[0]["user_id"] == bob.id
    await a.wait_for(lambda c: any(f["call"]["state"] == "active" for f in c.of("call")),
                     "the call is answered")

    # bob (the newcomer) offers, alice answers; candidates trickle both ways
    await b.send({"type": "offer", "to": alice.id, "sdp": OFFER})
    await a.wait_for(lambda c: c.of("offer"), "alice gets the offer")
    assert a.of("offer")[0] == {"type": "offer", "from": bob.id, "sdp": OFFER}
    await a.send({"type": "answer", "to": bob.id, "sdp": OFFER})
    await a.send({"type": "candidate", "to": bob.id, "candidate": CANDIDATE})
    await b.wait_for(lambda c: c.of("answer") and c.of("candidate"), "bob gets both")
    assert b.of("candidate")[0] == {"type": "candidate", "from": alice.id,
                                    "candidate": CANDIDATE}

    await b.send({"type": "leave"})
    await a.wait_for(lambda c: c.of("participant_left") and c.of("ended"), "the call ends")
    assert a.of("ended")[0]["reason"] == "completed"
    ended = await tap[1].wait_for("call.ended")
    assert ended["data"]["reason"] == "completed"
    assert sorted(ended["data"]["participant_ids"]) == sorted([alice.id, bob.id])
    assert ended["data"]["duration_s"] >= 0
    async with api(two, bob) as client:
        view = (await client.get(f"/api/calls/{call_id}")).json()
    assert view["state"] == "ended" and view["end_reason"] == "completed"
    assert {p["user_id"]: p["state"] for p in view["participants"]} == {
        alice.id: "left", bob.id: "left"}


async def test_declined_missed_and_cancelled_calls(replicas, user, api, connect, tap):
    [one] = await replicas(1, ring_timeout_s=1.0)
    alice, bob, carol = [await user(one, n) for n in ("alice", "bob", "carol")]

    declined = (await start_call(api, one, alice, [bob]))["call_id"]
    a = await connect(one, declined, alice)
    await a.send({"type": "join"})
    async with api(one, bob) as client:
        response = await client.post(f"/api/calls/{declined}/decline")
    assert response.status_code == 200 and response.json()["end_reason"] == "declined"
    await a.wait_for(lambda c: c.of("ended"), "alice hears the decline")
    assert a.of("ended")[0]["reason"] == "declined"

    missed = (await start_call(api, one, alice, [bob, carol]))["call_id"]
    a2 = await connect(one, missed, alice)
    await a2.send({"type": "join"})
    await a2.wait_for(lambda c: c.of("ended"), "nobody answers in time", timeout_s=10)
    assert a2.of("ended")[0]["reason"] == "missed"
    ended = await tap[1].wait_for("call.ended", where=lambda e: e["data"]["call_id"] == missed)
    assert sorted(ended["data"]["missed_ids"]) == sorted([bob.id, carol.id])

    cancelled = (await start_call(api, one, alice, [bob], media="audio"))["call_id"]
    a3 = await connect(one, cancelled, alice)
    b3 = await connect(one, cancelled, bob)  # ringing on bob's screen, not answered yet
    await a3.send({"type": "join"})
    await a3.wait_for(lambda c: c.of("joined"), "alice joined")
    await a3.send({"type": "leave"})
    await b3.wait_for(lambda c: c.of("ended"), "bob's ringing stops")
    assert b3.of("ended")[0]["reason"] == "cancelled"


async def test_call_history_lists_a_users_calls_newest_first_in_pages(replicas, user, api):
    [one] = await replicas(1)
    alice, bob, carol = [await user(one, n) for n in ("alice", "bob", "carol")]
    made = [(await start_call(api, one, alice, [bob]))["call_id"] for _ in range(3)]
    other = (await start_call(api, one, carol, [bob]))["call_id"]
    async with api(one, alice) as client, api(one, bob) as as_bob:
        first = (await client.get("/api/calls", params={"limit": 2})).json()
        assert [c["id"] for c in first["items"]] == made[::-1][:2]
        rest = (await client.get("/api/calls", params={"cursor": first["next_cursor"]})).json()
        assert [c["id"] for c in rest["items"]] == [made[0]] and rest["next_cursor"] is None
        assert [c["id"] for c in (await as_bob.get("/api/calls")).json()["items"]] == [
            other, *made[::-1]]
        assert_problem(await client.get("/api/calls", params={"cursor": "garbage"}), 400)
        assert_problem(await client.get("/api/calls", params={"limit": 1000}), 422)


async def test_group_call_from_a_channel_skips_blocked_members(replicas, user, api, connect):
    [one] = await replicas(1)
    alice, bob, carol, dave = [await user(one, n) for n in ("alice", "bob", "carol", "dave")]
    channel_id = str(uuid.uuid4().hex[:26])
    created = new_event(chat_events.ChannelCreated(
        channel_id=channel_id, kind="group", name="band",
        member_ids=[alice.id, bob.id, carol.id, dave.id], created_by=alice.id,
        created_at=datetime.now(UTC)), producer="chat", subject=f"channel:{channel_id}",
        actor=alice.id)
    await one.app.state.db.run(lambda conn: record_channel(conn, created))
    blocked = new_event(profile_events.Blocked(actor_id=dave.id, target_id=alice.id),
                        producer="profile", subject=f"user:{dave.id}", actor=dave.id)
    await one.app.state.db.run(lambda conn: blocks.record(conn, blocked))

    async with api(one, alice) as client:
        response = await client.post("/api/calls", json={"channel_id": channel_id})
        assert response.status_code == 201, response.text
        call = response.json()["call"]
        assert sorted(p["user_id"] for p in call["participants"]) == sorted(
            [alice.id, bob.id, carol.id])
        assert_problem(await client.post("/api/calls", json={"callee_ids": [dave.id]}), 403)
    async with api(one, dave) as client:  # not in the call: it does not exist for dave
        assert_problem(await client.get(f"/api/calls/{call['id']}"), 404)
        assert_problem(await client.post("/api/calls", json={"channel_id": "nope"}), 404)

    clients = {}
    for person in (alice, bob, carol):
        clients[person.id] = await connect(one, call["id"], person)
        await clients[person.id].send({"type": "join"})
        await clients[person.id].wait_for(lambda c: c.of("joined"), "joined")
    assert sorted(clients[carol.id].of("joined")[0]["participants"]) == sorted(
        [alice.id, bob.id])
    await clients[bob.id].send({"type": "leave"})
    await clients[carol.id].wait_for(lambda c: c.of("participant_left"), "bob left")
    assert not clients[carol.id].of("ended")  # two are still talking
    await clients[carol.id].send({"type": "leave"})
    await clients[alice.id].wait_for(lambda c: c.of("ended"), "the last one is alone")


async def test_bad_input_gets_clear_errors_and_other_calls_go_on(
        replicas, user, api, connect, settings):
    one, two = await replicas(2)
    alice, bob, mallory = [await user(one, n) for n in ("alice", "bob", "mallory")]
    async with api(one, alice) as client:
        assert_problem(await client.post("/api/calls", json={"media": "video"}), 422)
        both = await client.post("/api/calls", json={"callee_ids": [bob.id],
                                                     "channel_id": "x", "media": "audio"})
        assert assert_problem(both, 422)["errors"][0]["field"] == "callee_ids"
        assert_problem(await client.post("/api/calls", json={"callee_ids": [alice.id]}), 422)
        assert_problem(await client.post("/api/calls", json={"callee_ids": ["nobody"]}), 422)
        assert_problem(await client.post("/api/calls", json={
            "callee_ids": [bob.id], "media": "smell"}), 422)
        many = [f"u{i}" for i in range(settings.participants_max)]
        assert_problem(await client.post("/api/calls", json={"callee_ids": many}), 422)
    async with api(one, alice) as client:
        client.headers.pop("Authorization")
        assert_problem(await client.post("/api/calls", json={"callee_ids": [bob.id]}), 401)
    call_id = (await start_call(api, one, alice, [bob]))["call_id"]
    other_id = (await start_call(api, one, alice, [bob]))["call_id"]

    # a user who is not invited cannot even see the call
    intruder = await connect(two, call_id, mallory, ready="error")
    await intruder.wait_for(lambda c: c.closed, "the intruder is turned away")
    assert intruder.of("error")[0]["code"] == "not_found"
    assert intruder.closed.rcvd.code == 4404
    bad_token = await connect(one, call_id, None)
    await bad_token.send({"type": "auth", "token": "not.a.token"})
    await bad_token.wait_for(lambda c: c.closed, "a bad token closes the socket")
    assert bad_token.closed.rcvd.code == 4401

    a = await connect(one, call_id, alice)
    await a.send({"type": "offer", "to": bob.id, "sdp": OFFER})
    await a.wait_for(lambda c: c.of("error"), "offer before join")
    assert a.of("error")[-1]["code"] == "conflict"
    await a.send({"type": "join"})
    b = await connect(two, call_id, bob)
    await b.send({"type": "join"})
    await a.wait_for(lambda c: c.of("participant_joined"), "bob joined")
    errors = 1
    for frame, field in (
            ({"type": "offer", "to": bob.id, "sdp": "garbage"}, "sdp"),
            ({"type": "offer", "to": bob.id, "sdp": "v=0\r\ns=-\r\n"}, "sdp"),
            ({"type": "answer", "to": bob.id}, "sdp"),
            ({"type": "candidate", "to": bob.id, "candidate": {"candidate": "junk"}},
             "candidate"),
            ({"type": "offer", "to": mallory.id, "sdp": OFFER}, "to"),
            ({"type": "offer", "sdp": OFFER}, "to")):
        await a.send(frame)
        errors += 1
        await a.wait_for(lambda c, n=errors: len(c.of("error")) == n, f"error for {frame}")
        assert a.of("error")[-1]["errors"][0]["field"] == field, a.of("error")[-1]
    await a.conn.send("{not json")
    await a.send({"type": "teleport"})
    await a.wait_for(lambda c: len(c.of("error")) == errors + 2, "two more errors")
    assert [e["code"] for e in a.of("error")[-2:]] == ["bad_json", "unknown_type"]
    assert not b.of("offer")  # nothing bad was relayed

    await a.conn.send("x" * (settings.ws_frame_max_bytes + 1))
    await a.wait_for(lambda c: c.closed, "an oversized frame closes the socket")
    assert a.closed.rcvd.code == 1009
    await b.wait_for(lambda c: c.of("ended"), "alice's dropped connection is a leave")

    # the other call is untouched
    c = await connect(one, other_id, alice)
    await c.send({"type": "join"})
    await c.wait_for(lambda c: c.of("joined"), "the other call still works")
    await asyncio.sleep(0)
