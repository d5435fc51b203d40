"""Avatars come through the media pipeline: a profile names an upload and shows it once the
post service reports it ready, whichever comes first."""

from chassis.events import new_event
from chassis.testing import assert_problem, aws_client, wait_until
from post_svc import events as post_events


def settled(owner_id: str, media_id: str, *, kind: str = "image", error: str | None = None):
    event = post_events.MediaFailed if error else post_events.MediaReady
    variants = {} if error else {"thumb": f"http://cdn.test/media/{media_id}/thumb.webp",
                                 "large": f"http://cdn.test/media/{media_id}/large.webp"}
    data = event(media_id=media_id, owner_id=owner_id, kind=kind,
                 status="failed" if error else "ready", variants=variants, error=error,
                 content_type="image/jpeg" if kind == "image" else "video/mp4")
    return new_event(data, producer="post", subject=f"media:{media_id}", actor=owner_id)


async def test_an_avatar_named_before_its_upload_is_ready_shows_once_it_is(
        client, signup, post_queue, moto_endpoint):
    alice = await signup()
    sqs = aws_client("sqs", moto_endpoint)
    named = await client.patch("/api/profiles/me", json={"avatar_media_id": "m-early"},
                               headers=alice.headers)
    assert named.status_code == 200 and named.json()["avatar_url"] is None
    for _ in range(2):  # a duplicate delivery changes nothing
        sqs.send_message(QueueUrl=post_queue[1],
                         MessageBody=settled(alice.user_id, "m-early").model_dump_json())

    async def shown() -> bool:
        me = (await client.get("/api/profiles/me", headers=alice.headers)).json()
        return me["avatar_url"] == "http://cdn.test/media/m-early/thumb.webp"

    await wait_until(shown, "the avatar shows once the upload is ready")


async def test_an_avatar_must_be_the_callers_own_ready_image(
        client, signup, post_queue, moto_endpoint):
    alice, bob = await signup(), await signup()
    sqs = aws_client("sqs", moto_endpoint)
    for event in (settled(bob.user_id, "m-bobs"), settled(alice.user_id, "m-video", kind="video"),
                  settled(alice.user_id, "m-bad", error="the file is empty"),
                  settled(alice.user_id, "m-good")):
        sqs.send_message(QueueUrl=post_queue[1], MessageBody=event.model_dump_json())

    async def all_known() -> bool:
        response = await client.patch("/api/profiles/me", json={"avatar_media_id": "m-good"},
                                      headers=alice.headers)
        return response.json()["avatar_url"] is not None

    await wait_until(all_known, "the uploads are known")
    for media_id, why in (("m-bobs", "yours"), ("m-video", "image"), ("m-bad", "empty")):
        response = await client.patch("/api/profiles/me", json={"avatar_media_id": media_id},
                                      headers=alice.headers)
        problem = assert_problem(response, 422)
        assert problem["errors"][0]["field"] == "avatar_media_id" and why in problem["detail"]
    me = (await client.get("/api/profiles/me", headers=alice.headers)).json()
    assert me["avatar_url"] == "http://cdn.test/media/m-good/thumb.webp", "refusals change nothing"
