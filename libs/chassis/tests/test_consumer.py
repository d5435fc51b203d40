"""The consumer handles each event exactly once, through duplicates, crashes and poison."""

import asyncio
import json

import pytest
from sqlalchemy import insert

from chassis.consumer import Consumer, redrive
from chassis.testing import receive_messages, running, wait_until
from chassis.tracing import current_ids, tracer

SERVICE = "chassis-tests"
THING = "test.thing-happened"


class Boom(Exception):
    pass


@pytest.fixture
def handled(db):
    """A handler that records each event it handles in `effects`, and the list of calls."""
    calls: list[str] = []

    async def record(session, envelope) -> None:
        calls.append(envelope.id)
        await session.execute(insert(db.table("effects")).values(event_id=envelope.id))

    record.calls = calls
    return record


def _consumer(db, sqs, queue_url: str, handler, **kwargs) -> Consumer:
    return Consumer(service=SERVICE, name="things", queue_url=queue_url, sqs=sqs,
                    db=db.database, metadata=db.metadata, handlers={THING: handler},
                    wait_time_s=1, retry_base_s=0, **kwargs)


async def _publish(sns, topic_arn: str, envelope) -> None:
    attributes = {"event_type": {"DataType": "String", "StringValue": envelope.type}}
    for key, value in envelope.trace.items():
        attributes[key] = {"DataType": "String", "StringValue": value}
    await sns.publish(TopicArn=topic_arn, Message=envelope.model_dump_json(),
                      MessageAttributes=attributes)


async def _one(sqs, queue_url: str, wait_s: int = 3) -> dict:
    """The next message on the queue, left on it (it returns after the visibility timeout)."""
    (message,) = await receive_messages(sqs, queue_url, wait_s=wait_s, delete=False)
    return message


async def _depth(sqs, queue_url: str) -> int:
    """Messages on the queue, visible or in flight (deleted ones are gone)."""
    attributes = (await sqs.get_queue_attributes(
        QueueUrl=queue_url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    ))["Attributes"]
    return sum(int(v) for v in attributes.values())


@pytest.mark.parametrize("raw", [True, False], ids=["raw", "sns-envelope"])
async def test_an_event_is_handled_once_and_deleted(db, wire, sns, sqs, thing, handled, raw):
    wiring = wire(raw=raw)
    event = thing(1)
    await _publish(sns, wiring.topic_arn, event)
    consumer = _consumer(db, sqs, wiring.queue_url, handled)
    assert await consumer.handle(await _one(sqs, wiring.queue_url)) == "handled"
    assert handled.calls == [event.id]
    assert await db.count("effects") == 1 and await db.count("inbox") == 1
    assert await _depth(sqs, wiring.queue_url) == 0, "the message was not deleted"


async def test_a_duplicate_delivery_changes_nothing(db, wire, sqs, thing, handled):
    wiring = wire()
    body = thing(1).model_dump_json()
    for _ in range(2):
        await sqs.send_message(QueueUrl=wiring.queue_url, MessageBody=body)
    consumer = _consumer(db, sqs, wiring.queue_url, handled)
    messages = await receive_messages(sqs, wiring.queue_url, delete=False)
    assert [await consumer.handle(m) for m in messages] == ["handled", "duplicate"]
    assert await db.count("effects") == 1
    assert await _depth(sqs, wiring.queue_url) == 0, "the message was not deleted"


def _batch(*envelopes) -> str:
    """A message carrying several events, as the outbox relay sends a burst."""
    return "[" + ",".join(e.model_dump_json() for e in envelopes) + "]"


@pytest.mark.parametrize("raw", [True, False], ids=["raw", "sns-envelope"])
async def test_every_event_of_a_batch_is_handled_once_and_the_message_deleted(
        db, wire, sns, sqs, thing, handled, raw):
    wiring = wire(raw=raw)
    events = [thing(n, subject=f"agg-{n % 3}") for n in range(9)]
    await sns.publish(TopicArn=wiring.topic_arn, Message=_batch(*events), MessageAttributes={
        "event_type": {"DataType": "String", "StringValue": THING}})
    consumer = _consumer(db, sqs, wiring.queue_url, handled)
    assert await consumer.handle(await _one(sqs, wiring.queue_url)) == "handled"
    assert sorted(handled.calls) == sorted(e.id for e in events)
    for a in range(3):  # one aggregate's events one after the other, in the batch's order
        ids = [e.id for e in events if e.subject == f"agg-{a}"]
        assert [i for i in handled.calls if i in ids] == ids
    assert await db.count("effects") == 9 and await db.count("inbox") == 9
    assert await _depth(sqs, wiring.queue_url) == 0, "the message was not deleted"


async def test_a_batch_with_a_failing_event_returns_and_its_other_events_apply_once(
        db, wire, sqs, thing, handled):
    wiring = wire()
    events = [thing(n, subject=f"agg-{n}") for n in range(4)]
    failing = {events[2].id}

    async def one_fails_first(session, envelope) -> None:
        if envelope.id in failing:
            failing.clear()
            raise Boom("the third event, once")
        await handled(session, envelope)

    await sqs.send_message(QueueUrl=wiring.queue_url, MessageBody=_batch(*events))
    consumer = _consumer(db, sqs, wiring.queue_url, one_fails_first)
    assert await consumer.handle(await _one(sqs, wiring.queue_url)) == "failed"
    assert await db.count("effects") == 3
    assert await consumer.handle(await _one(sqs, wiring.queue_url)) == "handled"
    assert sorted(handled.calls) == sorted(e.id for e in events), "each event applied once"
    assert await db.count("effects") == 4
    assert await _depth(sqs, wiring.queue_url) == 0, "the message was not deleted"
    await sqs.send_message(QueueUrl=wiring.queue_url, MessageBody=_batch(*events))
    assert await consumer.handle(await _one(sqs, wiring.queue_url)) == "duplicate"


async def test_a_handler_failing_after_writing_commits_nothing_and_the_retry_succeeds(
        db, wire, sqs, thing, handled):
    wiring = wire()

    async def fails_first(session, envelope) -> None:
        await handled(session, envelope)
        if len(handled.calls) == 1:
            raise Boom("after writing")

    await sqs.send_message(QueueUrl=wiring.queue_url, MessageBody=thing(1).model_dump_json())
    consumer = _consumer(db, sqs, wiring.queue_url, fails_first)
    assert await consumer.handle(await _one(sqs, wiring.queue_url)) == "failed"
    assert await db.count("effects") == 0 and await db.count("inbox") == 0
    assert await consumer.handle(await _one(sqs, wiring.queue_url)) == "handled"
    assert await db.count("effects") == 1
    assert await _depth(sqs, wiring.queue_url) == 0, "the message was not deleted"


async def test_a_message_whose_handling_is_killed_midway_returns_and_is_handled_once(
        db, wire, sqs, thing, handled):
    wiring = wire()
    entered, never = asyncio.Event(), asyncio.Event()

    async def hangs_first(session, envelope) -> None:
        await handled(session, envelope)
        if len(handled.calls) == 1:
            entered.set()
            await never.wait()

    await sqs.send_message(QueueUrl=wiring.queue_url, MessageBody=thing(1).model_dump_json())
    consumer = _consumer(db, sqs, wiring.queue_url, hangs_first)
    task = asyncio.create_task(consumer.handle(await _one(sqs, wiring.queue_url)))
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await db.count("effects") == 0 and await db.count("inbox") == 0
    assert await consumer.handle(await _one(sqs, wiring.queue_url)) == "handled"
    assert await db.count("effects") == 1


async def test_a_message_handled_but_not_deleted_is_a_no_op_when_it_returns(
        db, wire, sqs, dead_sqs, thing, handled):
    wiring = wire()
    await sqs.send_message(QueueUrl=wiring.queue_url, MessageBody=thing(1).model_dump_json())
    cut_off = _consumer(db, dead_sqs, wiring.queue_url, handled)  # SQS gone before the delete
    assert await cut_off.handle(await _one(sqs, wiring.queue_url)) == "handled"
    assert await db.count("effects") == 1
    consumer = _consumer(db, sqs, wiring.queue_url, handled)
    assert await consumer.handle(await _one(sqs, wiring.queue_url)) == "duplicate"
    assert await db.count("effects") == 1
    assert await _depth(sqs, wiring.queue_url) == 0, "the message was not deleted"


async def test_an_event_nobody_handles_is_acknowledged_without_side_effects(
        db, wire, sqs, thing, handled):
    wiring = wire()
    other = thing(1).model_copy(update={"type": "test.unhandled"})
    await sqs.send_message(QueueUrl=wiring.queue_url, MessageBody=other.model_dump_json())
    consumer = _consumer(db, sqs, wiring.queue_url, handled)
    assert await consumer.handle(await _one(sqs, wiring.queue_url)) == "ignored"
    assert await db.count("effects") == 0
    assert await _depth(sqs, wiring.queue_url) == 0, "the message was not deleted"


async def test_poison_messages_reach_the_dlq_after_five_receives_and_redrive_back(
        db, wire, sqs, thing):
    wiring = wire()
    calls: list[str] = []

    async def always_fails(session, envelope) -> None:
        calls.append(envelope.id)
        raise Boom("poison")

    poison = ["not json", json.dumps({"hello": "world"}), thing(1).model_dump_json(),
              json.dumps([thing(2).model_dump(mode="json"), "not an event"]), "[]"]
    for body in poison:
        await sqs.send_message(QueueUrl=wiring.queue_url, MessageBody=body)
    async def all_dead_lettered() -> bool:
        return await _depth(sqs, wiring.dlq_url) == len(poison)

    async with running(_consumer(db, sqs, wiring.queue_url, always_fails).run()):
        await wait_until(all_dead_lettered, "every poison message reached the DLQ", 30)
    assert len(calls) == 5
    assert await _depth(sqs, wiring.queue_url) == 0
    assert await redrive(sqs, dlq_url=wiring.dlq_url, queue_url=wiring.queue_url) == 5
    assert await _depth(sqs, wiring.dlq_url) == 0
    back = await receive_messages(sqs, wiring.queue_url)
    assert sorted(m["Body"] for m in back) == sorted(poison)
    assert await db.count("effects") == 0


async def test_the_trace_in_the_envelope_is_the_parent_of_the_consumer_span(
        db, wire, sns, sqs, thing, spans):
    wiring = wire(raw=False)
    with tracer().start_as_current_span("producer") as producer:
        event = thing(1)
    seen: list[tuple] = []

    async def note_trace(session, envelope) -> None:
        seen.append(current_ids())

    await _publish(sns, wiring.topic_arn, event)
    consumer = _consumer(db, sqs, wiring.queue_url, note_trace)
    assert await consumer.handle(await _one(sqs, wiring.queue_url)) == "handled"
    trace_id = format(producer.get_span_context().trace_id, "032x")
    assert seen[0][0] == trace_id
    (span,) = [s for s in spans.get_finished_spans()
               if s.name == f"consume {THING}" and s.context.trace_id == int(trace_id, 16)]
    assert span.parent.span_id == producer.get_span_context().span_id
