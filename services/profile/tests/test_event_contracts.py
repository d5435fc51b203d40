"""Published events match the committed event catalog (the contract consumers rely on)."""

from pathlib import Path

import jsonschema

from chassis.catalog import render
from stack.topology import TOPOLOGY

CATALOG = Path(__file__).parents[3] / "docs" / "event-catalog.json"
# Every publishing service's events module, as `make catalog` renders them.
MODULES = [f"{service.name}_svc.events" for service in TOPOLOGY.services if service.topic]


def test_committed_catalog_is_current():
    assert CATALOG.read_text() == render(MODULES), "regenerate with `make catalog`"


async def test_every_published_event_matches_its_schema(client, signup, tap):
    import json

    catalog = json.loads(CATALOG.read_text())
    alice, bob = await signup(), await signup()
    for path in ("follow", "mute", "block"):
        await client.put(f"/api/profiles/{bob.user_id}/{path}", headers=alice.headers)
    await client.patch("/api/profiles/me", json={"bio": "hi"}, headers=alice.headers)
    events = await tap.drain(7)
    assert {e["type"] for e in events} >= {"profile.created", "graph.followed", "graph.muted",
                                           "graph.blocked", "graph.unfollowed", "profile.updated"}
    for event in events:
        jsonschema.validate(event, catalog["envelope"])
        schema = catalog["events"][event["type"]]
        assert event["version"] == schema["x-event-version"]
        jsonschema.validate(event["data"], schema)
