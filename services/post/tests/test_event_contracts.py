"""The post service's events match the event catalog, and the graph events it consumes
still carry what it reads (the contracts between services)."""

import json
from pathlib import Path

import jsonschema
import pytest

from chassis.events import catalog_schema
from chassis.testing import EventTap, aws_client, subscribe_queue
from post_svc import events as post_events
from post_svc import media_worker
from post_svc.graph import EdgeChanged
from stack.topology import TOPOLOGY

CATALOG = Path(__file__).parents[3] / "docs" / "event-catalog.json"
POST_SCHEMAS = catalog_schema(producer=post_events.PRODUCER)


def committed() -> dict:
    return json.loads(CATALOG.read_text())


def test_the_committed_catalog_lists_the_post_events_as_they_are():
    listed = {name: schema for name, schema in committed()["events"].items()
              if schema.get("x-producer") == post_events.PRODUCER}
    if not listed:
        pytest.skip("docs/event-catalog.json does not list the post events yet (make catalog)")
    assert listed == json.loads(json.dumps(POST_SCHEMAS["events"])), "regenerate the catalog"


@pytest.mark.parametrize("event_type", ["graph.blocked", "graph.unblocked"])
def test_the_graph_events_consumed_still_carry_the_fields_read(event_type):
    schema = committed()["events"][event_type]
    assert set(EdgeChanged.model_fields) <= set(schema["required"])


async def test_every_published_event_matches_its_schema(client, app, user, post, events,
                                                       ready_media):
    alice, bob = await user(), await user()
    media_ids = await ready_media(alice)
    failing = (await client.post("/api/media", headers=alice.headers,
                                 json={"content_type": "image/png", "size": 10})).json()
    await app.state.db.run(lambda conn: media_worker.settle(
        conn, failing["media_id"], error="the bytes are not a PNG image"))
    parent = await post(alice, "#hello @someone", content_warning="cw", media_ids=media_ids)
    await post(bob, "reply", reply_to=parent["id"], visibility="followers")
    path = f"/api/posts/{parent['id']}"
    await client.patch(path, json={"text": "edited", "content_warning": None},
                       headers=alice.headers)
    await client.put(f"{path}/like", headers=bob.headers)
    await client.delete(f"{path}/like", headers=bob.headers)
    await client.delete(path, headers=alice.headers)
    published = await events.drain(8)
    assert {e["type"] for e in published} == set(POST_SCHEMAS["events"])
    for event in published:
        jsonschema.validate(event, POST_SCHEMAS["envelope"])
        schema = POST_SCHEMAS["events"][event["type"]]
        assert event["version"] == schema["x-event-version"]
        assert event["producer"] == schema["x-producer"] == "post"
        jsonschema.validate(event["data"], schema)


async def test_the_notifier_is_sent_only_the_posts_and_likes_that_tell_someone(
        client, user, post, tap, moto_endpoint, names):
    # The notifier's subscription, with its filter as deployed.
    (notifier,) = [s for s in TOPOLOGY.subscriptions if s.queue == "notifier-post"]
    sqs = aws_client("sqs", moto_endpoint)
    told = EventTap(sqs, subscribe_queue(aws_client("sns", moto_endpoint), sqs, tap[0],
                                         f"{names}notifier-post",
                                         filter_policy=notifier.filter_policy))
    alice, bob = await user(), await user()
    plain = await post(alice, "nobody to tell")
    await post(alice, "hello @someone")
    await post(bob, "a reply", reply_to=plain["id"])
    await post(alice, "replying to myself", reply_to=plain["id"])
    for liker in (bob, alice):
        await client.put(f"/api/posts/{plain['id']}/like", headers=liker.headers)
    published = await tap[1].drain(6)
    assert len(published) == 6
    sent = await told.drain(4, timeout_s=3)  # all there is: no fourth comes
    assert sorted((e["type"], e["data"].get("text") or e["data"]["user_id"]) for e in sent) == [
        ("post.created", "a reply"), ("post.created", "hello @someone"),
        ("post.liked", bob.id)]
