"""The query service consumes what the topology routes to it, and every event it handles
is one the catalog declares."""

from chassis.events import CATALOG
from chassis.testing import serve_in_process
from query_svc.main import build_app
from query_svc.projections import Projector
from stack.topology import TOPOLOGY


def test_handlers_match_the_topologys_subscriptions():
    handlers = Projector(fanout_threshold=1, follow_backfill=1).handlers()
    consumed = {sub.queue: set(sub.event_types)
                for sub in TOPOLOGY.service("query").subscriptions if not sub.archive}
    assert {queue: set(types) for queue, types in handlers.items()} == consumed
    assert set().union(*consumed.values()) <= set(CATALOG)


def test_every_published_topic_is_archived():
    archived = {sub.topic for sub in TOPOLOGY.subscriptions if sub.archive}
    publishers = {service.name for service in TOPOLOGY.services if service.topic}
    assert archived == publishers


async def test_a_replica_that_only_serves_requests_runs_no_consumer_and_no_archiver(settings):
    app = build_app(settings.model_copy(update={"serve_only": True}))
    async with serve_in_process(app) as http:
        checks = (await http.get("/readyz")).json()["checks"]

    assert not [name for name in checks if name.startswith(("consumer:", "archive:"))]
    assert checks["timeline-trim"] == "ok" and checks["database"] == "ok"
