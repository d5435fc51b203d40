"""Notifications end to end in one service: events on the real queues, the inbox, the SSE
stream, Web Push to a local receiver (decrypted with the subscription's key), mobile push
through SNS platform endpoints, retries, the DLQ and its redrive."""

import asyncio
import json
import time

import http_ece
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from call_svc.events import CallEnded, CallRinging
from chassis.db import utcnow
from chassis.testing import assert_problem, serve_in_process, wait_until
from chat_svc import events as chat_events
from notifier_svc import delivery, webpush
from notifier_svc.main import build_app
from notifier_svc.models import push_jobs, subscriptions
from post_svc import events as post_events
from profile_svc import events as profile_events


class Browser:
    """A browser's side of a Web Push subscription: its key pair and auth secret."""

    def __init__(self, endpoint: str) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.auth = b"0123456789abcdef"
        public = self.key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
        self.subscription = {"kind": "webpush", "endpoint": endpoint, "keys": {
            "p256dh": webpush.b64url_encode(public), "auth": webpush.b64url_encode(self.auth)}}

    def read(self, body: bytes) -> dict:
        return json.loads(http_ece.decrypt(body, private_key=self.key, auth_secret=self.auth,
                                           version="aes128gcm"))


async def subscribed(client, user, receiver) -> Browser:
    browser = Browser(receiver.url)
    response = await client.post("/api/notifications/subscriptions", json=browser.subscription,
                                 headers=user.headers)
    assert response.status_code == 201, response.text
    return browser


async def items(client, user) -> list[dict]:
    return (await client.get("/api/notifications", headers=user.headers)).json()["items"]


async def until_items(client, user, count: int) -> list[dict]:
    async def enough() -> bool:
        return len(await items(client, user)) >= count

    await wait_until(enough, f"{count} notifications")
    return await items(client, user)


def post_created(author, text: str, **fields):
    from post_svc.events import PostCreated

    return PostCreated(post_id=fields.pop("post_id", f"p{time.time_ns()}"),
                       author_id=author.id, author_username=author.username, text=text,
                       visibility=fields.pop("visibility", "public"), version=1, seq=1,
                       created_at=utcnow(), **fields)


async def test_each_kind_of_event_makes_one_notification_in_inbox_stream_and_push(
        app, client, user, feed, receiver):
    alice, bob = await user("alice"), await user("bob")
    browser = await subscribed(client, alice, receiver)
    await wait_until(lambda: _known(app, bob.id), "bob is known")
    parent = "p-parent"
    events = [
        ("notifier-profile", profile_events.Followed(actor_id=bob.id, target_id=alice.id),
         "profile"),
        ("notifier-post", post_created(bob, f"hi @{alice.username}",
                                       mentions=[alice.username]), "post"),
        ("notifier-post", post_created(bob, "an answer", reply_to=parent,
                                       reply_to_author_id=alice.id), "post"),
        ("notifier-post", post_events.PostLiked(post_id=parent, post_author_id=alice.id,
                                                user_id=bob.id, seq=2), "post"),
        ("notifier-chat", chat_events.MessagePosted(
            message=chat_events.Message(id="m1", channel_id="c1", seq=1, change_seq=1,
                                        sender_id=bob.id, client_msg_id="x", text="secret",
                                        created_at=utcnow()),
            member_ids=[alice.id, bob.id], push_to=[alice.id]), "chat"),
        ("notifier-call", CallRinging(call_id="call-1", caller_id=bob.id,
                                      callee_ids=[alice.id], media="video",
                                      ring_deadline=utcnow()), "call"),
    ]
    stream = asyncio.create_task(_read_stream(client, alice, 6))
    await asyncio.sleep(0.3)
    bodies = [feed.send(q, data, producer=p, subject="s", actor=bob.id) for q, data, p in events]
    got = await until_items(client, alice, 6)
    assert sorted(n["type"] for n in got) == sorted(
        ["follow", "mention", "reply", "like", "chat_message", "call"])
    assert all(n["actor"]["username"] == bob.username for n in got)
    streamed = await asyncio.wait_for(stream, 15)
    assert sorted(e["type"] for e in streamed) == sorted(n["type"] for n in got)
    await wait_until(lambda: _count(receiver, 6), "six pushes")
    pushed = [browser.read(r["body"]) for r in receiver.requests]
    assert sorted(p["type"] for p in pushed) == sorted(n["type"] for n in got)
    assert all("title" not in p and "secret" not in json.dumps(p) for p in pushed)
    # The same events again (at-least-once delivery) change nothing and push nothing.
    for (queue, _, _), body in zip(events, bodies, strict=True):
        feed.resend(queue, body)
    await asyncio.sleep(2)
    assert len(await items(client, alice)) == 6 and len(receiver.requests) == 6


async def test_a_call_nobody_answered_is_a_missed_call_for_each_callee(
        app, client, user, feed):
    alice, bob, carol = await user("alice"), await user("bob"), await user("carol")
    await wait_until(lambda: _known(app, bob.id), "bob is known")
    now = utcnow()
    feed.send("notifier-call", CallEnded(
        call_id="call-2", caller_id=bob.id, reason="missed", participant_ids=[bob.id],
        missed_ids=[alice.id, carol.id], created_at=now, ended_at=now, duration_s=0),
        producer="call", subject="call:call-2", actor=bob.id)
    for callee in (alice, carol):
        [missed] = await until_items(client, callee, 1)
        assert missed["type"] == "call" and missed["subject"] == {"call_id": "call-2",
                                                                  "missed": True}
    assert await items(client, bob) == []


async def _known(app, user_id: str) -> bool:
    from notifier_svc.models import users

    return bool(await app.state.db.run(lambda conn: conn.execute(
        users.select().where(users.c.user_id == user_id)).first()))


async def _count(receiver, n: int) -> bool:
    return len(receiver.requests) >= n


async def _read_stream(client, user, count: int, last_event_id: str | None = None) -> list:
    headers = dict(user.headers)
    if last_event_id:
        headers["Last-Event-ID"] = last_event_id
    seen: list[dict] = []
    async with client.stream("GET", "/api/notifications/stream", headers=headers) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                seen.append(json.loads(line.removeprefix("data: ")))
                if len(seen) >= count:
                    return seen
    return seen


async def test_likes_and_follows_group_and_silenced_people_say_nothing(
        client, user, feed):
    alice, bob, carol, mallory = [await user(n) for n in ("alice", "bob", "carol", "mallory")]
    for liker in (bob, carol, bob):
        feed.send("notifier-post", post_events.PostLiked(
            post_id="p1", post_author_id=alice.id, user_id=liker.id, seq=2), producer="post",
            subject="post:p1", actor=liker.id)
    feed.send("notifier-profile", profile_events.Muted(actor_id=alice.id, target_id=mallory.id),
              producer="profile", subject="u", actor=alice.id)
    await asyncio.sleep(1)
    feed.send("notifier-post", post_events.PostLiked(
        post_id="p1", post_author_id=alice.id, user_id=mallory.id, seq=3), producer="post",
        subject="post:p1", actor=mallory.id)
    feed.send("notifier-post", post_events.PostLiked(
        post_id="p2", post_author_id=alice.id, user_id=alice.id, seq=2), producer="post",
        subject="post:p2", actor=alice.id)
    [liked] = await until_items(client, alice, 1)
    await asyncio.sleep(1.5)
    [liked] = await items(client, alice)
    assert liked["type"] == "like" and liked["actor_count"] == 2
    assert sorted(a["user_id"] for a in liked["actors"]) == sorted([bob.id, carol.id])


async def test_preferences_turn_kinds_off_and_refuse_unknown_keys(client, user, feed):
    alice, bob = await user("alice"), await user("bob")
    path = "/api/notifications/preferences"
    assert (await client.get(path, headers=alice.headers)).json()["like"] is True
    assert_problem(await client.put(path, json={"likes": False}, headers=alice.headers), 422)
    assert_problem(await client.put(path, json={"like": "maybe"}, headers=alice.headers), 422)
    off = await client.put(path, json={"like": False}, headers=alice.headers)
    assert off.status_code == 200 and off.json()["like"] is False
    feed.send("notifier-post", post_events.PostLiked(post_id="p", post_author_id=alice.id,
                                                     user_id=bob.id, seq=2),
              producer="post", subject="post:p", actor=bob.id)
    feed.send("notifier-profile", profile_events.Followed(actor_id=bob.id, target_id=alice.id),
              producer="profile", subject="u", actor=bob.id)
    [only] = await until_items(client, alice, 1)
    await asyncio.sleep(1)
    assert [n["type"] for n in await items(client, alice)] == ["follow"] == [only["type"]]


async def test_retries_then_one_push_gone_removes_and_dead_ends_in_the_dlq(
        app, client, user, feed, receiver):
    alice, bob = await user("alice"), await user("bob")
    await subscribed(client, alice, receiver)
    receiver.script = [500]  # then 201
    feed.send("notifier-profile", profile_events.Followed(actor_id=bob.id, target_id=alice.id),
              producer="profile", subject="u", actor=bob.id)
    await wait_until(lambda: _count(receiver, 2), "a retry after the 500")
    await asyncio.sleep(0.5)
    assert len(receiver.requests) == 2, "500 then 201: one push delivered, not two"

    receiver.script = [410]
    feed.send("notifier-post", post_events.PostLiked(post_id="p", post_author_id=alice.id,
                                                     user_id=bob.id, seq=2),
              producer="post", subject="post:p", actor=bob.id)

    async def gone() -> bool:
        return not await app.state.db.run(lambda conn: conn.execute(
            subscriptions.select().where(subscriptions.c.user_id == alice.id)).all())

    await wait_until(gone, "the 410 removes the subscription")

    await subscribed(client, alice, receiver)
    receiver.script = [503] * 3  # every attempt fails
    before = len(receiver.requests)
    feed.send("notifier-post", post_created(bob, f"@{alice.username}",
                                            mentions=[alice.username]),
              producer="post", subject="p", actor=bob.id)
    dlq = feed.urls["notifier-push-dlq"]

    def dead_letters() -> list:
        return feed.sqs.receive_message(QueueUrl=dlq, WaitTimeSeconds=1,
                                        VisibilityTimeout=0).get("Messages", [])

    deadline = time.monotonic() + 15
    while not (letters := await asyncio.to_thread(dead_letters)):
        assert time.monotonic() < deadline, "nothing reached the DLQ"
    reason = json.loads(letters[0]["Body"])["reason"]
    assert "503" in reason and len(receiver.requests) - before == 3
    moved = await delivery.redrive(app.state.db, app.state.dispatcher.sqs, dlq)
    assert moved == 1
    app.state.dispatcher.wake()
    await wait_until(lambda: _count(receiver, before + 4), "the redriven push arrives")
    await asyncio.sleep(0.5)
    assert len(receiver.requests) == before + 4
    states = await app.state.db.run(lambda conn: conn.execute(
        push_jobs.select().with_only_columns(push_jobs.c.status)).scalars().all())
    assert "failed" not in states and "pending" not in states


async def test_a_notification_read_elsewhere_is_not_pushed_again(client, user, feed, receiver):
    alice, bob = await user("alice"), await user("bob")
    await subscribed(client, alice, receiver)
    receiver.script = [(503, {"Retry-After": "2"})]
    feed.send("notifier-profile", profile_events.Followed(actor_id=bob.id, target_id=alice.id),
              producer="profile", subject="u", actor=bob.id)
    await wait_until(lambda: _count(receiver, 1), "the first attempt")
    [followed] = await items(client, alice)
    read = await client.post("/api/notifications/read", json={"up_to_id": followed["id"]},
                             headers=alice.headers)
    assert read.json()["unread_count"] == 0
    await asyncio.sleep(3)
    assert len(receiver.requests) == 1, "read on another device: the retry is not sent"


async def test_the_stream_resumes_after_last_event_id(client, user, feed):
    alice, bob = await user("alice"), await user("bob")
    for i in range(3):
        feed.send("notifier-post", post_created(bob, f"@{alice.username} {i}",
                                                mentions=[alice.username]),
                  producer="post", subject="p", actor=bob.id)
    got = await until_items(client, alice, 3)
    first = min(n["seq"] for n in got)
    resumed = await asyncio.wait_for(_read_stream(client, alice, 2, str(first)), 10)
    assert [e["seq"] for e in resumed] == [first + 1, first + 2]
    assert_problem(await client.get("/api/notifications/stream",
                                    headers={**alice.headers, "Last-Event-ID": "x"}), 400)


async def test_mobile_devices_get_ids_only_through_sns(app, client, user, feed):
    alice, bob = await user("alice"), await user("bob")
    device = await client.post("/api/notifications/subscriptions", headers=alice.headers,
                               json={"kind": "fcm", "token": "fcm-token-123456"})
    assert device.status_code == 201, device.text
    feed.send("notifier-profile", profile_events.Followed(actor_id=bob.id, target_id=alice.id),
              producer="profile", subject="u", actor=bob.id)

    async def sent() -> bool:
        states = await app.state.db.run(lambda conn: conn.execute(
            push_jobs.select().with_only_columns(push_jobs.c.status)).scalars().all())
        return states == ["done"]

    await wait_until(sent, "the push went through SNS")
    # The same phone, signed in as someone else now: its endpoint changes hands.
    carol = await user("carol")
    again = await client.post("/api/notifications/subscriptions", headers=carol.headers,
                              json={"kind": "fcm", "token": "fcm-token-123456"})
    assert again.status_code == 201, again.text
    job = type("Job", (), {"notification_id": "n", "type": "follow", "seq": 1,
                           "actor_ids": [bob.id], "actor_count": 1, "subject": {},
                           "previews": False, "actor_username": bob.username})
    assert set(delivery.payload_of(job)) == {"id", "type", "seq", "actor_id", "actor_count",
                                             "subject"}
    job.previews = True
    assert delivery.payload_of(job)["title"] == f"{bob.username} followed you"


@pytest.mark.parametrize(("body", "field"), [
    ({"kind": "webpush", "endpoint": "https://10.0.0.7/push", "keys": {
        "p256dh": Browser("x").subscription["keys"]["p256dh"], "auth": "MDEyMzQ1Njc4OWFiY2RlZg"}},
     "endpoint"),
    ({"kind": "webpush", "endpoint": "not a url", "keys": {
        "p256dh": Browser("x").subscription["keys"]["p256dh"], "auth": "MDEyMzQ1Njc4OWFiY2RlZg"}},
     "endpoint"),
    ({"kind": "webpush", "endpoint": "https://93.184.215.14/push", "keys": {
        "p256dh": "AAAA", "auth": "MDEyMzQ1Njc4OWFiY2RlZg"}}, "keys.p256dh"),
    ({"kind": "webpush", "endpoint": "https://93.184.215.14/push", "keys": {
        "p256dh": Browser("x").subscription["keys"]["p256dh"], "auth": "c2hvcnQ"}}, "keys.auth"),
    ({"kind": "webpush", "endpoint": "https://93.184.215.14/push"}, "keys"),
    ({"kind": "apns"}, "token"),
    ({"kind": "carrier-pigeon", "token": "abcdefgh"}, "kind"),
])
async def test_bad_subscriptions_are_refused_naming_the_field(settings, user, body, field):
    from chassis.testing import serve_in_process
    from notifier_svc.main import build_app

    strict = build_app(settings.model_copy(update={"allow_private_push_endpoints": False}))
    alice = await user("alice")
    async with serve_in_process(strict) as http:
        response = await http.post("/api/notifications/subscriptions", json=body,
                                   headers=alice.headers)
    problem = assert_problem(response, 422)
    assert field in json.dumps(problem), problem


async def test_a_slow_push_service_does_not_hold_up_the_others(client, user, feed, receiver):
    from .conftest import receiving

    alice, bob = await user("alice"), await user("bob")
    async with receiving() as slow:
        slow.delay_s = 5  # longer than the push timeout (2 s)
        await subscribed(client, alice, slow)
        await subscribed(client, alice, receiver)
        feed.send("notifier-profile", profile_events.Followed(actor_id=bob.id,
                                                              target_id=alice.id),
                  producer="profile", subject="u", actor=bob.id)
        await wait_until(lambda: _count(receiver, 1), "the fast service got its push")
        assert len(slow.requests) <= 1, "the slow one is still being waited for, alone"


def test_the_breaker_opens_after_a_run_of_failures_and_closes_later(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr(delivery.time, "monotonic", lambda: clock[0])
    breaker = delivery.Breaker(failures=3, open_s=30)
    for _ in range(2):
        breaker.record("push.example", ok=False)
    assert breaker.allows("push.example")
    breaker.record("push.example", ok=False)
    assert not breaker.allows("push.example") and breaker.allows("fcm")
    clock[0] += 31
    assert breaker.allows("push.example")
    breaker.record("push.example", ok=True)
    assert breaker.allows("push.example")


async def test_a_replica_that_only_serves_requests_leaves_queues_and_pushes_to_another(settings):
    app = build_app(settings.model_copy(update={"serve_only": True}))
    async with serve_in_process(app) as http:
        checks = (await http.get("/readyz")).json()["checks"]

    assert not [name for name in checks if name.startswith("consumer:")]
    assert "push-dispatcher" not in checks and checks["streams"] == "ok"
