"""A service built by create_app runs the whole loop: request → outbox → SNS → SQS → handler."""

from fastapi import APIRouter
from sqlalchemy import func, insert, select

from chassis.db import DatabaseDep
from chassis.events import Envelope
from chassis.outbox import add_event
from chassis.testing import wait_until

THING = "test.thing-happened"


def _router(thing, metadata) -> APIRouter:
    router = APIRouter()

    @router.post("/things/{n}", status_code=202)
    async def make_thing(n: int, db: DatabaseDep) -> dict[str, str]:
        """Stage a thing-happened event with the request's change."""
        event = thing(n)
        async with db.transaction() as session:
            await add_event(session, metadata.tables["outbox"], event)
        return {"id": event.id}

    @router.get("/effects")
    async def effects(db: DatabaseDep) -> dict[str, int]:
        """How many events the consumer has handled."""
        async with db.sessions() as session:
            table = metadata.tables["effects"]
            return {"count": (await session.execute(select(func.count()).select_from(table))
                              ).scalar_one()}

    return router


async def test_an_event_staged_in_a_request_reaches_the_consumer_through_sns_and_sqs(
        serve, wire, moto_endpoint, thing, metadata):
    wiring = wire(raw=False)
    queue = wiring.queue_url.rsplit("/", 1)[1]
    handled: list[Envelope] = []

    async def on_thing_happened(session, envelope: Envelope) -> None:
        handled.append(envelope)
        await session.execute(insert(metadata.tables["effects"]).values(event_id=envelope.id))

    async with serve(_router(thing, metadata), consumers={queue: {THING: on_thing_happened}},
                     events_topic_arn=wiring.topic_arn, aws_endpoint_url=moto_endpoint,
                     consumer_wait_time_s=1, outbox_poll_interval_s=0.1) as client:
        created = (await client.post("/things/7")).json()

        async def handled_once() -> bool:
            return (await client.get("/effects")).json()["count"] == 1

        await wait_until(handled_once, "the consumer handled the event")
    assert [(e.id, e.data["n"]) for e in handled] == [(created["id"], 7)]


async def test_a_process_that_only_serves_requests_leaves_its_events_to_another(
        serve, wire, moto_endpoint, thing, metadata):
    wiring = wire(raw=False)
    queue = wiring.queue_url.rsplit("/", 1)[1]

    async def on_thing_happened(session, envelope: Envelope) -> None:
        await session.execute(insert(metadata.tables["effects"]).values(event_id=envelope.id))

    settings = {"consumers": {queue: {THING: on_thing_happened}},
                "events_topic_arn": wiring.topic_arn, "aws_endpoint_url": moto_endpoint,
                "consumer_wait_time_s": 1, "outbox_poll_interval_s": 0.1}
    async with serve(_router(thing, metadata), serve_only=True, **settings) as web:
        ready = (await web.get("/readyz")).json()["checks"]
        assert (await web.post("/things/7")).status_code == 202

        assert set(ready) == {"database", "loop-lag"}  # no relay, no consumer
        async with serve(_router(thing, metadata), **settings):
            async def handled() -> bool:
                return (await web.get("/effects")).json()["count"] == 1

            await wait_until(handled, "the other process relayed and handled the event")
