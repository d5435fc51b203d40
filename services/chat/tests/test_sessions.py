"""WebSocket sessions under bad input and failure: auth, frame limits, slow clients, a killed
replica, a restarted Redis, a drain on shutdown; and who is marked for push."""

import asyncio
import json
import socket
import time
import uuid

import pytest
import websockets
from jose import jwk, jwt
from prometheus_client import REGISTRY

from chassis.events import new_event
from chassis.testing import EventTap, assert_problem, aws_client, subscribe_queue
from chat_svc import commands
from chat_svc.actions import message_frame
from profile_svc import events as profile_events
from stack.topology import TOPOLOGY

from .conftest import messages_in


async def dm(api, replica, alice, bob) -> str:
    async with api(replica, alice) as http:
        response = await http.post("/api/chat/channels",
                                   json={"kind": "dm", "member_ids": [bob.id]})
        assert response.status_code in (200, 201), response.text
        return response.json()["id"]


@pytest.fixture
def expired_token(moto_signing_key):
    def make(token: str) -> str:
        claims = jwt.get_unverified_claims(token) | {"exp": int(time.time()) - 60}
        return jwt.encode(claims, jwk.construct(moto_signing_key, "RS256"), algorithm="RS256",
                          headers={"kid": "dummy"})

    return make


async def test_auth_must_come_first_valid_and_in_time(replicas, user, connect, expired_token):
    [replica] = await replicas(1, ws_auth_timeout_s=0.5)
    alice = await user(replica, "alice")
    silent = await connect(replica, auth=False)
    await silent.wait_for(lambda c: c.closed is not None, "the silent client is closed")
    assert silent.closed.rcvd.code == 4401
    for first in ({"type": "auth", "token": "garbage"},
                  {"type": "auth", "token": expired_token(alice.token)},
                  {"type": "send", "channel_id": "x", "client_msg_id": "1", "text": "hi"},
                  {"type": "auth"}):
        client = await connect(replica, auth=False)
        await client.send(first)
        await client.wait_for(lambda c: c.closed is not None, f"closed after {first}")
        assert client.closed.rcvd.code == 4401, first
        assert not client.of("ready")


async def test_bad_frames_get_errors_and_others_are_unaffected(replicas, user, api, connect):
    [replica] = await replicas(1)
    alice, bob = await user(replica, "alice"), await user(replica, "bob")
    channel = await dm(api, replica, alice, bob)
    a, b = await connect(replica, alice), await connect(replica, bob)
    await a.conn.send("{not json")
    await a.send({"type": "teleport"})
    await a.send(["a", "list"])
    await a.send({"type": "send", "channel_id": channel, "client_msg_id": "long",
                  "text": "x" * 4001})
    await a.send({"type": "send", "channel_id": channel, "client_msg_id": "bad id!",
                  "text": "hi"})
    await a.send({"type": "read", "channel_id": channel, "seq": "three"})
    await a.send({"type": "sync", "cursors": {channel: -1}})
    await a.wait_for(lambda c: len(c.of("error")) == 7, "seven error frames")
    codes = [(e["code"], e.get("errors", [{}])[0].get("field")) for e in a.of("error")]
    assert codes == [("bad_json", None), ("unknown_type", None), ("bad_frame", None),
                     ("invalid", "text"), ("invalid", "client_msg_id"), ("invalid", "seq"),
                     ("invalid", "cursors")]
    await a.send({"type": "send", "channel_id": channel, "client_msg_id": "ok",
                  "text": "still here"})
    await b.wait_for(lambda c: messages_in(c, channel), "bob gets the good message")
    await a.conn.send("x" * (1 << 20))  # a 1 MB frame
    await a.wait_for(lambda c: c.closed is not None, "the 1 MB frame closes the connection")
    assert a.closed.rcvd.code == 1009
    await b.send({"type": "ping"})
    await b.wait_for(lambda c: c.of("pong"), "bob's connection goes on")


async def test_a_client_that_stops_reading_is_dropped_not_waited_for(
        replicas, user, api, connect):
    [replica] = await replicas(1, ws_send_queue_max=8)
    alice, bob = await user(replica, "alice"), await user(replica, "bob")
    channel = await dm(api, replica, alice, bob)
    small = socket.socket()
    small.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: the window
    small.connect(("127.0.0.1", replica.port))
    # Without permessage-deflate: compressed, these frames are tens of bytes, and the
    # server's socket buffer would take a hundred thousand of them before writes block.
    stalled = await connect(replica, bob, sock=small, max_queue=1, close_timeout=0.2,
                            compression=None)
    stalled.reader.cancel()  # reads nothing more: the socket buffers fill up
    awake = await connect(replica, alice)
    text = "満" * 4000  # 12 KB a frame: the server's send buffer holds MBs before writes block
    for i in range(3000):
        await awake.send({"type": "send", "channel_id": channel, "client_msg_id": f"m{i}",
                          "text": text})
        if i % 50 == 49:
            await awake.wait_for(lambda c, n=i + 1: len(c.of("ack")) == n, "acks")
            if replica.app.state.chat.hub.sessions.get(bob.id) is None:
                break
    assert replica.app.state.chat.hub.sessions.get(bob.id) is None, "the stalled client is gone"
    assert i < 1000, "dropped once its queue filled, not by the keep-alive timeout"
    await awake.wait_for(lambda c: len(messages_in(c, channel)) == i + 1, "alice is not slowed")


async def test_after_a_replica_dies_clients_reconnect_sync_and_miss_nothing(
        replicas, user, api, connect):
    one, two = await replicas(2)
    alice, bob = await user(one, "alice"), await user(two, "bob")
    channel = await dm(api, one, alice, bob)
    a, b = await connect(one, alice), await connect(two, bob)
    for i in range(10):
        await a.send({"type": "send", "channel_id": channel, "client_msg_id": f"a{i}",
                      "text": f"before {i}"})
    await b.wait_for(lambda c: len(messages_in(c, channel)) == 10, "ten before the crash")
    cursor = messages_in(b, channel)[-1]["seq"]
    await two.stop()  # the replica bob was on goes away
    await b.wait_for(lambda c: c.closed is not None, "bob is disconnected")
    assert b.closed.rcvd.code == 1012, "told to come back (service restart)"
    for i in range(10):
        await a.send({"type": "send", "channel_id": channel, "client_msg_id": f"b{i}",
                      "text": f"during {i}"})
    await a.wait_for(lambda c: len(c.of("ack")) == 20, "alice's messages are all taken")
    again = await connect(one, bob)
    await again.send({"type": "sync", "cursors": {channel: cursor}})
    await again.send({"type": "send", "channel_id": channel, "client_msg_id": "back",
                      "text": "I'm back"})
    await again.wait_for(lambda c: len(messages_in(c, channel)) == 11, "the ten missed + 1")
    seqs = [f["seq"] for f in [*messages_in(b, channel), *messages_in(again, channel)]]
    assert seqs == list(range(1, 22)), "every message exactly once, in order"


async def test_after_redis_restarts_every_session_catches_up_exactly_once(
        replicas, user, api, connect, redis_server):
    one, two = await replicas(2)
    alice, bob = await user(one, "alice"), await user(two, "bob")
    channel = await dm(api, one, alice, bob)
    a, b = await connect(one, alice), await connect(two, bob)
    async with api(one, alice) as http:
        path = f"/api/chat/channels/{channel}/messages"
        await http.post(path, json={"client_msg_id": "m0", "text": "before"})
        await b.wait_for(lambda c: len(messages_in(c, channel)) == 1, "the first message")
        redis_server.stop()
        for i in range(1, 6):  # committed; their fan-out fails while Redis is down
            assert (await http.post(path, json={"client_msg_id": f"m{i}",
                                                "text": f"lost {i}"})).status_code == 201
        redis_server.start()
        for client in (a, b):
            await client.wait_for(lambda c: len(messages_in(c, channel)) == 6,
                                  "all six after the hub resubscribed", timeout_s=20)
        await http.post(path, json={"client_msg_id": "m6", "text": "after"})
    for client in (a, b):
        await client.wait_for(lambda c: len(messages_in(c, channel)) == 7, "and the next one")
        assert [f["seq"] for f in messages_in(client, channel)] == list(range(1, 8))


async def test_offline_members_are_marked_for_push_and_online_ones_are_not(
        replicas, user, api, connect, tap, moto_endpoint, names):
    # The notifier's subscription, with its filter as deployed: only messages to push.
    (notifier,) = [s for s in TOPOLOGY.subscriptions if s.queue == "notifier-chat"]
    sqs = aws_client("sqs", moto_endpoint)
    pushes = EventTap(sqs, subscribe_queue(aws_client("sns", moto_endpoint), sqs, tap[0],
                                           f"{names}notifier-chat",
                                           filter_policy=notifier.filter_policy))
    one, two = await replicas(2)
    alice, bob, carol = [await user(one, n) for n in ("alice", "bob", "carol")]
    async with api(one, alice) as http:
        group = (await http.post("/api/chat/channels", json={
            "kind": "group", "name": "g", "member_ids": [bob.id, carol.id]})).json()
        await connect(two, bob)  # bob is online on the other replica; carol is not
        await http.post(f"/api/chat/channels/{group['id']}/messages",
                        json={"client_msg_id": "hello", "text": "hi both"})
        direct = await dm(api, one, alice, bob)
        await http.post(f"/api/chat/channels/{direct}/messages",
                        json={"client_msg_id": "psst", "text": "bob is here"})
    posted = [e for e in await tap[1].drain(4) if e["type"] == "chat.message_posted"]
    assert [(e["data"]["message"]["text"], e["data"]["push_to"]) for e in posted] == [
        ("hi both", [carol.id]), ("bob is here", [])]
    assert [e["data"]["message"]["text"] for e in await pushes.drain(1, timeout_s=3)] == [
        "hi both"]


async def test_blocked_users_cannot_dm_each_other(replicas, user, api, moto_endpoint,
                                                  profile_queue):
    [replica] = await replicas(1)
    alice, bob = await user(replica, "alice"), await user(replica, "bob")
    channel = await dm(api, replica, alice, bob)
    blocked = new_event(profile_events.Blocked(actor_id=bob.id, target_id=alice.id),
                        producer="profile", subject=f"user:{bob.id}", actor=bob.id)
    aws_client("sqs", moto_endpoint).send_message(QueueUrl=profile_queue,
                                                 MessageBody=blocked.model_dump_json())
    async with api(replica, alice) as http:
        path = f"/api/chat/channels/{channel}/messages"
        deadline = time.monotonic() + 10
        while (response := await http.post(path, json={"client_msg_id": f"x{time.time_ns()}",
                                                       "text": "hi?"})).status_code == 201:
            assert time.monotonic() < deadline, "the block never arrived"
            await asyncio.sleep(0.1)
        assert_problem(response, 403)
        again = await http.post("/api/chat/channels", json={"kind": "dm",
                                                            "member_ids": [bob.id]})
        assert_problem(again, 403)


async def test_sync_sends_every_change_after_the_cursor_then_synced(
        replicas, user, api, connect):
    [replica] = await replicas(1)
    alice, bob = await user(replica, "alice"), await user(replica, "bob")
    channel = await dm(api, replica, alice, bob)
    async with api(replica, alice) as http:
        path = f"/api/chat/channels/{channel}/messages"
        for i in range(4):
            await http.post(path, json={"client_msg_id": f"m{i}", "text": f"m{i}"})
        await http.patch(f"{path}/2", json={"text": "m1, edited while bob was away"})
    b = await connect(replica, bob)
    await b.send({"type": "sync", "cursors": {channel: 2}})
    await b.wait_for(lambda c: c.of("synced"), "synced")
    frames = messages_in(b, channel)
    assert [(f["seq"], f["message"]["seq"]) for f in frames] == [(3, 3), (4, 4), (5, 2)]
    assert frames[-1]["message"]["text"] == "m1, edited while bob was away"
    assert b.of("synced")[0]["cursors"] == {channel: 5}
    assert json.dumps(b.of("synced")[0]["more"]) == "[]"


async def test_presence_crosses_replicas_and_is_throttled(replicas, user, api, connect):
    one, two = await replicas(2)
    alice, bob = await user(one, "alice"), await user(two, "bob")
    await dm(api, one, alice, bob)
    a = await connect(one, alice)
    b = await connect(two, bob)
    await a.wait_for(lambda c: c.of("presence"), "alice sees bob come online")
    assert a.of("presence")[0] == {"type": "presence", "user_id": bob.id, "online": True}
    await b.close()
    await a.wait_for(lambda c: len(c.of("presence")) == 2, "and go offline")
    assert a.of("presence")[1]["online"] is False
    for _ in range(3):  # flapping within the gate interval announces nothing more
        await (await connect(two, bob)).close()
    await asyncio.sleep(0.5)
    assert len(a.of("presence")) == 2
    assert await one.app.state.chat.hub.online([bob.id]) == set()


async def test_browsers_from_other_origins_are_refused(replicas, user, connect):
    [replica] = await replicas(1, ws_allowed_origins=("https://app.example",))
    alice = await user(replica, "alice")
    with pytest.raises(websockets.InvalidStatus) as refused:
        await connect(replica, alice, origin="https://evil.example")
    assert refused.value.response.status_code == 403
    ok = await connect(replica, alice, origin="https://app.example")
    assert ok.of("ready")


async def test_a_seq_published_ahead_of_its_predecessor_waits_for_it_in_the_hub(
        replicas, user, api, connect):
    """Two replicas publish seq 1 and 2 in the wrong order: the hub holds 2 until 1 comes and
    hands both on in order, so no session reads the store."""
    [replica] = await replicas(1)
    alice, bob = await user(replica, "alice"), await user(replica, "bob")
    channel = await dm(api, replica, alice, bob)
    b = await connect(replica, bob)
    assert b.of("ready")[0]["cursors"] == {channel: 0}
    first, second = await post_unpublished(replica, channel, alice, 2)
    fills, reordered = sample("chat_gap_fills_total"), sample(
        "chat_fanout_reordered_total", outcome="in_order")
    await publish(replica, channel, [bob], first)
    await publish(replica, channel, [bob], second)  # seq 1 is due from now on for this channel
    third, fourth = await post_unpublished(replica, channel, alice, 2)
    await publish(replica, channel, [bob], fourth)
    await publish(replica, channel, [bob], third)
    await b.wait_for(lambda c: len(messages_in(c, channel)) == 4, "every message")
    await asyncio.sleep(0.3)
    assert [f["seq"] for f in messages_in(b, channel)] == [1, 2, 3, 4]
    assert sample("chat_gap_fills_total") == fills, "nothing read from the store"
    assert sample("chat_fanout_reordered_total", outcome="in_order") == reordered + 1


async def test_a_seq_the_fan_out_lost_is_read_from_the_store_after_the_wait(
        replicas, user, api, connect):
    [replica] = await replicas(1)
    alice, bob = await user(replica, "alice"), await user(replica, "bob")
    channel = await dm(api, replica, alice, bob)
    b = await connect(replica, bob)
    first, second, third = await post_unpublished(replica, channel, alice, 3)
    fills = sample("chat_gap_fills_total")
    gave_up = sample("chat_fanout_reordered_total", outcome="gave_up")
    await publish(replica, channel, [bob], first)
    await publish(replica, channel, [bob], third)  # the second is never published
    await b.wait_for(lambda c: len(messages_in(c, channel)) == 3, "every message")
    assert [f["seq"] for f in messages_in(b, channel)] == [1, 2, 3]
    assert sample("chat_gap_fills_total") == fills + 1
    assert sample("chat_fanout_reordered_total", outcome="gave_up") == gave_up + 1


async def post_unpublished(replica, channel, author, count: int) -> list[dict]:
    """Messages committed without their fan-out (as if each publish were lost or late)."""
    chat = replica.app.state.chat
    return [(await chat.db.run(lambda conn: commands.post_message(
        conn, channel_id=channel, caller=author.id, client_msg_id=uuid.uuid4().hex,
        text="hello", online=set())))[0] for _ in range(count)]


async def publish(replica, channel, members, message) -> None:
    await replica.app.state.chat.hub.publish("message", channel, [m.id for m in members],
                                             message_frame(message), seq=message["change_seq"])


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0
