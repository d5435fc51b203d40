"""The outbox publishes exactly the committed events, in order per aggregate, through outages."""

import asyncio
import json
from collections import defaultdict
from datetime import timedelta
from types import SimpleNamespace

import pytest

from chassis.consumer import events_in
from chassis.db import Database, utcnow
from chassis.outbox import (
    CALL_MAX_BYTES,
    MESSAGE_EVENTS,
    Doorbell,
    Lease,
    OutboxRelay,
    _calls,
    add_event,
    stage_event,
)
from chassis.testing import receive_messages, running, wait_until
from chassis.tracing import tracer

SERVICE = "chassis-tests"


class Boom(Exception):
    pass


def _relay(db, sns, topic_arn: str, **kwargs) -> OutboxRelay:
    return OutboxRelay(service=SERVICE, db=db.database, metadata=db.metadata, sns=sns,
                       topic_arn=topic_arn, **kwargs)


async def _stage(db, *envelopes) -> None:
    async with db.database.transaction() as session:
        for envelope in envelopes:
            await add_event(session, db.table("outbox"), envelope)


async def _publish_all(relay: OutboxRelay) -> int:
    total = 0
    while published := await relay.publish_pending():
        total += published
    return total


def _bodies(messages: list[dict]) -> list[dict]:
    return [body for m in messages for body in events_in(json.loads(m["Body"]))]


async def test_events_of_a_rolled_back_transaction_are_never_published(db, wire, sns, sqs, thing):
    wiring = wire()
    woken: list[str] = []
    db.database.on_events_committed.append(lambda: woken.append("woken"))
    with pytest.raises(Boom):
        async with db.database.transaction() as session:
            await add_event(session, db.table("outbox"), thing(1, note="rolled back"))
            raise Boom
    assert woken == []
    committed = thing(2, note="committed")
    await _stage(db, committed)
    assert woken == ["woken"]
    assert await _publish_all(_relay(db, sns, wiring.topic_arn)) == 1
    assert [b["id"] for b in _bodies(await receive_messages(sqs, wiring.queue_url))] == [
        committed.id]


async def test_a_committed_event_is_published_with_its_type_and_trace(db, wire, sns, sqs, thing):
    wiring = wire()
    with tracer().start_as_current_span("request"):
        event = thing(1)
    assert event.trace["traceparent"]
    await _stage(db, event)
    await _publish_all(_relay(db, sns, wiring.topic_arn))
    (message,) = await receive_messages(sqs, wiring.queue_url)
    attributes = {k: v["StringValue"] for k, v in message["MessageAttributes"].items()}
    assert attributes["event_type"] == "test.thing-happened"
    assert attributes["traceparent"] == event.trace["traceparent"]
    assert json.loads(message["Body"]) == event.model_dump(mode="json")
    outbox = db.table("outbox")
    assert await db.count("outbox", outbox.c.published_at.is_not(None)) == 1


def _interleaved(thing, aggregates: int = 3, each: int = 4):
    return [thing(n, subject=f"agg-{a}") for n in range(each) for a in range(aggregates)]


async def test_while_sns_is_unreachable_events_stay_pending_and_attempts_are_counted(
        db, dead_sns, thing):
    await _stage(db, *_interleaved(thing))
    relay = _relay(db, dead_sns, "arn:aws:sns:us-east-1:123456789012:unreachable")
    for _ in range(2):
        with pytest.raises(Exception):  # noqa: B017 (whatever the client raises)
            await relay.publish_pending()
    outbox = db.table("outbox")
    assert await db.count("outbox", outbox.c.published_at.is_(None)) == 12
    assert await db.count("outbox", outbox.c.attempts == 2) >= 1
    assert await db.count("outbox", outbox.c.attempts > 2) == 0


async def test_after_an_outage_every_event_is_published_in_order_per_aggregate(
        db, wire, sns, dead_sns, sqs, thing):
    wiring = wire()
    events = _interleaved(thing)
    await _stage(db, *events)
    with pytest.raises(Exception):  # noqa: B017 (whatever the client raises)
        await _relay(db, dead_sns, wiring.topic_arn).publish_pending()
    assert await _publish_all(_relay(db, sns, wiring.topic_arn, batch_size=5)) == len(events)
    received: dict[str, list[int]] = defaultdict(list)
    for body in _bodies(await receive_messages(sqs, wiring.queue_url)):
        received[body["subject"]].append(body["data"]["n"])
    assert received == {f"agg-{a}": [0, 1, 2, 3] for a in range(3)}
    outbox = db.table("outbox")
    assert await db.count("outbox", outbox.c.published_at.is_(None)) == 0


async def test_a_burst_goes_out_in_few_messages_each_aggregate_in_order(
        db, wire, sns, sqs, thing):
    wiring = wire()
    events = _interleaved(thing, aggregates=4, each=40)
    await _stage(db, *events)
    assert await _publish_all(_relay(db, sns, wiring.topic_arn)) == len(events)
    messages = await receive_messages(sqs, wiring.queue_url)
    assert len(messages) == -(-len(events) // MESSAGE_EVENTS)
    received: dict[str, list[int]] = defaultdict(list)
    for message in messages:
        attributes = {k: v["StringValue"] for k, v in message["MessageAttributes"].items()}
        assert attributes["event_type"] == "test.thing-happened"
        assert "traceparent" not in attributes, "a batch's events carry their own trace"
        for body in events_in(json.loads(message["Body"])):
            received[body["subject"]].append(body["data"]["n"])
    assert received == {f"agg-{a}": list(range(40)) for a in range(4)}


def _pending_rows(envelopes) -> list[SimpleNamespace]:
    return [SimpleNamespace(seq=seq, aggregate=e.subject, payload=e.model_dump(mode="json"))
            for seq, e in enumerate(envelopes, 1)]


def test_a_call_keeps_each_aggregate_in_one_message_of_one_routing(thing):
    """Messages of one call may arrive in any order: an aggregate's next event goes into the
    message its earlier ones are in, or waits for a later call with all that follow it."""
    envelopes = [thing(n, subject=f"agg-{n % 3}") for n in range(12)]
    # Every fourth event is of another type, so routed in a message of its own.
    rows = _pending_rows(envelopes)
    for row in rows[3::4]:
        row.payload["type"] = "test.other-thing"
    sent: list[int] = []
    for call in _calls(rows):
        where: dict[str, int] = {}
        for index, message in enumerate(call):
            assert len({p.routing for p in message}) == 1
            for pending in message:
                assert where.setdefault(pending.row.aggregate, index) == index
                sent.append(pending.row.seq)
    per_aggregate = defaultdict(list)
    for seq in sent:
        per_aggregate[rows[seq - 1].aggregate].append(seq)
    assert sorted(sent) == [row.seq for row in rows]
    assert all(seqs == sorted(seqs) for seqs in per_aggregate.values())


def test_a_call_stays_within_what_sns_takes(thing):
    rows = _pending_rows([thing(n, subject=f"agg-{n}", note="x" * 30_000) for n in range(20)]
                         + [thing(99, subject="huge", note="y" * 300_000)])
    calls = _calls(rows)
    assert [p.row.seq for call in calls for message in call for p in message] == list(
        range(1, 22))
    for call in calls[:-1]:
        assert sum(p.size for message in call for p in message) <= CALL_MAX_BYTES
    assert [p.row.aggregate for message in calls[-1] for p in message] == ["huge"], (
        "an event too large to share a call still goes out, alone")


async def test_a_lease_has_one_holder_until_released(db):
    first, second = Lease(db.database, db.metadata, "job"), Lease(db.database, db.metadata, "job")
    assert await first.acquire()
    assert not await second.acquire()
    assert await first.acquire(), "the holder renews its own lease"
    await first.release()
    assert await second.acquire()
    assert not await first.acquire()


async def test_a_lease_is_held_while_its_renewal_is_under_way(db):
    """The relay's watch asks `held` every 20 ms; a renewal must not look like a loss."""
    lease = Lease(db.database, db.metadata, "job", ttl_s=10)
    assert await lease.acquire()
    lease._held_until -= timedelta(seconds=6)  # under half its time left: the next renews
    take, seen = lease._take, []

    def observed(conn, *, now):
        seen.append(lease.held)
        return take(conn, now=now)

    lease._take = observed
    assert await lease.acquire()
    assert seen == [True]
    assert lease._held_until - utcnow() > timedelta(seconds=9)


async def test_a_lease_whose_holder_stopped_renewing_is_taken_over(db):
    lapsed = Lease(db.database, db.metadata, "job", ttl_s=-1)  # expired as soon as taken
    assert await lapsed.acquire()
    assert await Lease(db.database, db.metadata, "job").acquire()


async def test_of_two_relays_only_the_lease_holder_publishes(db, wire, sns, sqs, thing):
    left, right = wire(), wire()
    relays = [_relay(db, sns, w.topic_arn, poll_interval_s=0.05) for w in (left, right)]
    outbox = db.table("outbox")

    async def all_published() -> bool:
        return await db.count("outbox", outbox.c.published_at.is_not(None)) == 6

    async with running(*(relay.run() for relay in relays)):
        for n in range(6):
            await _stage(db, thing(n, subject=f"agg-{n % 2}"))
        await wait_until(all_published, "the relays published all six events")
    received = [_bodies(await receive_messages(sqs, w.queue_url, wait_s=1))
                for w in (left, right)]
    assert sorted(len(events) for events in received) == [0, 6]


async def test_the_lease_holder_publishes_another_replicas_commit_without_waiting_to_poll(
        database_url, metadata, db, wire, sns, sqs, thing):
    """A commit wakes only its own process's relay. The lease holder also learns of other
    processes' commits, so another replica's events go out at once, not at the holder's
    next poll (here 60 s away): on SQLite the replica rings the holder's doorbell (and the
    holder watches the file's commit version), on PostgreSQL the replica's transaction
    notifies as it commits and the holder listens."""
    wiring = wire()
    holder = _relay(db, sns, wiring.topic_arn, poll_interval_s=60)
    other_replica = Database(database_url)  # its own engines and connections, as a process has
    if other_replica.file is not None:
        other_replica.on_events_committed.append(Doorbell(other_replica.file).ring)
    outbox = metadata.tables["outbox"]
    try:
        async with running(holder.run()):
            async def holding() -> bool:
                return holder._lease.held

            await wait_until(holding, "the relay held its lease")
            await asyncio.sleep(1)  # past the holder's first look for commits
            in_session = thing(1, note="staged by the other replica in a session")
            async with other_replica.transaction() as session:
                await add_event(session, outbox, in_session)
            first = await receive_messages(sqs, wiring.queue_url, wait_s=10)
            in_unit = thing(2, note="staged by the other replica in a unit of work")
            await other_replica.run(lambda conn: stage_event(conn, outbox, in_unit))
            second = await receive_messages(sqs, wiring.queue_url, wait_s=10)
    finally:
        await other_replica.dispose()
    assert [b["id"] for b in _bodies(first)] == [in_session.id]
    assert [b["id"] for b in _bodies(second)] == [in_unit.id]


async def test_a_rung_doorbell_wakes_the_one_relay_that_listens(tmp_path):
    """Request replicas ring the doorbell of their database's file after committing events;
    the relay holding the lease listens, and no other process can while it does."""
    database_file = str(tmp_path / "svc.db")
    listener, rival, ringer = (Doorbell(database_file) for _ in range(3))
    other_file = Doorbell(str(tmp_path / "other.db"))
    woken, rival_woken = asyncio.Event(), asyncio.Event()
    try:
        other_file.ring()  # nobody listens: nothing happens, nothing raises
        assert listener.listen(woken.set)
        assert not rival.listen(rival_woken.set)
        other_file.ring()
        await asyncio.sleep(0.05)
        assert not woken.is_set()
        for _ in range(3):
            ringer.ring()
        async with asyncio.timeout(5):
            await woken.wait()
        listener.stop_listening()  # the lease went elsewhere: the next holder listens
        assert rival.listen(rival_woken.set)
        ringer.ring()
        async with asyncio.timeout(5):
            await rival_woken.wait()
    finally:
        for doorbell in (listener, rival, ringer, other_file):
            doorbell.close()


async def test_a_relay_without_the_lease_rings_the_holder_after_its_commits(
        database_url, db, wire, sns):
    """Replicas that each run a relay (the call service's): a commit in one whose relay
    lacks the lease wakes the holder in another process through the doorbell."""
    if not database_url.startswith("sqlite"):
        pytest.skip("on PostgreSQL the holder listens for every commit's NOTIFY")
    relay = _relay(db, sns, wire().topic_arn)
    holder_side, rung = Doorbell(db.database.file), asyncio.Event()
    try:
        assert holder_side.listen(rung.set)
        relay.wake()  # no lease here: the holder is rung, this relay stays asleep
        async with asyncio.timeout(5):
            await rung.wait()
        assert not relay._wake.is_set()
        assert await relay._lease.acquire()
        relay.wake()  # the lease holder wakes itself
        assert relay._wake.is_set()
    finally:
        holder_side.close()
        relay._doorbell.close()
