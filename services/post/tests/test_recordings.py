"""Call recordings become media objects: the call service puts a file under `recordings/` in
the uploads bucket with its owner in the object's metadata, and the media worker makes the
record and processes it like any upload. Real moto S3/SQS, real ffmpeg."""

import asyncio
import dataclasses
import json
import logging
import uuid
from urllib.parse import unquote_plus

import pytest
from ulid import ULID

from chassis.testing import REGION, aws_client, serve_in_process, wait_until
from post_svc import media_worker
from stack.provision import provision
from stack.topology import TOPOLOGY, Service, Topology, UserPool, Worker

from .test_media import settled, stored
from .test_mediaproc import ffmpeg


@pytest.fixture
async def worker(settings):
    """The media worker, running beside the API (`client`) on the same database (built
    before the test runs: building an app sets up logging, which caplog must follow)."""
    async with serve_in_process(media_worker.build_app(settings)):
        yield


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, bytes]:
    """A 3 s test-pattern video with a tone (as the call service composes them), and a 2 s
    tone alone (a call without video)."""
    folder = tmp_path_factory.mktemp("clips")
    ffmpeg("-f", "lavfi", "-i", "testsrc=s=320x240:r=15:d=3", "-f", "lavfi",
           "-i", "sine=f=400:d=3", "-c:v", "libx264", "-preset", "ultrafast",
           "-pix_fmt", "yuv420p", "-c:a", "aac", "-shortest", str(folder / "call.mp4"))
    ffmpeg("-f", "lavfi", "-i", "sine=f=400:d=2", "-c:a", "aac", str(folder / "call.m4a"))
    return {"video/mp4": (folder / "call.mp4").read_bytes(),
            "audio/mp4": (folder / "call.m4a").read_bytes()}


def put_recording(storage, data: bytes, content_type: str = "video/mp4",
                  media_id: str | None = None, **metadata: str) -> str:
    """Put a recording as the call service does; returns its media id."""
    media_id = media_id or str(ULID())
    storage.s3.put_object(Bucket=storage.uploads, Key=f"recordings/{media_id}", Body=data,
                          ContentType=content_type, Metadata=metadata)
    return media_id


async def queue_empty(sqs, queue_url: str) -> bool:
    attributes = (await asyncio.to_thread(
        sqs.get_queue_attributes, QueueUrl=queue_url,
        AttributeNames=["ApproximateNumberOfMessages",
                        "ApproximateNumberOfMessagesNotVisible"]))["Attributes"]
    return sum(int(v) for v in attributes.values()) == 0


@pytest.mark.parametrize(("content_type", "kind", "seconds", "variants"), [
    ("video/mp4", "video", 3.0, {"hls", "poster"}),
    ("audio/mp4", "audio", 2.0, {"audio"}),
])
async def test_a_recording_becomes_a_ready_media_object_of_the_owner_in_its_metadata(
        client, worker, user, storage, events, clips, content_type, kind, seconds,
        variants):
    alice, bob = await user(), await user()
    media_id = put_recording(storage, clips[content_type], content_type, owner=alice.id)

    view = await settled(client, alice, media_id)

    assert view["status"] == "ready", view
    assert view["kind"] == kind and set(view["variants"]) == variants
    assert abs(view["duration_s"] - seconds) < 0.2, view["duration_s"]
    assert set(stored(storage, media_id)) >= {v.split(f"/{media_id}/")[1]
                                              for v in view["variants"].values()}
    other = await client.get(f"/api/media/{media_id}", headers=bob.headers)
    assert other.status_code == 404  # media are their owners' alone
    [ready] = [e for e in await events.drain(1) if e["type"] == "media.ready"]
    assert ready["data"]["media_id"] == media_id and ready["data"]["owner_id"] == alice.id
    assert ready["data"]["content_type"] == content_type


async def test_a_recording_can_be_attached_to_a_post_by_its_owner(
        client, worker, user, storage, clips, post):
    alice = await user()
    media_id = put_recording(storage, clips["audio/mp4"], "audio/mp4", owner=alice.id)
    assert (await settled(client, alice, media_id))["status"] == "ready"

    created = await post(alice, "our call", media_ids=[media_id])

    assert created["published"] is True
    assert [m["media_id"] for m in created["media"]] == [media_id]


async def test_a_repeated_notification_or_upload_changes_nothing(
        client, worker, user, storage, events, clips, rows):
    alice = await user()
    media_id = put_recording(storage, clips["audio/mp4"], "audio/mp4", owner=alice.id)
    assert (await settled(client, alice, media_id))["status"] == "ready"
    [before] = await rows("media", id=media_id)
    sqs = aws_client("sqs", storage.s3.meta.endpoint_url)

    # S3 may announce an object twice; the call service may put it again after a timeout.
    body = json.dumps({"Records": [{"eventTime": "2026-01-01T00:00:00Z", "s3": {
        "bucket": {"name": storage.uploads}, "object": {"key": f"recordings/{media_id}"}}}]})
    sqs.send_message(QueueUrl=storage.queue_url, MessageBody=body)
    put_recording(storage, clips["audio/mp4"], "audio/mp4", media_id=media_id, owner=alice.id)
    await asyncio.sleep(0.5)
    await wait_until(lambda: queue_empty(sqs, storage.queue_url), "the repeats to be handled")

    assert await rows("media", id=media_id) == [before]
    settled_events = [e for e in await events.drain(1, timeout_s=3)
                      if e["type"] in ("media.ready", "media.failed")]
    assert [e["type"] for e in settled_events] == ["media.ready"]


@pytest.mark.parametrize(("key_id", "content_type", "metadata", "reason"), [
    (None, "video/mp4", {}, "owner"),
    (None, "video/mp4", {"owner": "not a user id!"}, "owner"),
    (None, "application/pdf", {"owner": "u-1"}, "Content-Type"),
    ("not-a-media-id", "video/mp4", {"owner": "u-1"}, "media id"),
])
async def test_a_recording_with_bad_metadata_makes_no_media_and_ends_in_the_dlq(
        client, worker, settings, storage, clips, rows, caplog, key_id, content_type,
        metadata, reason):
    """There is no record to fail, so the message fails, is retried, and lands in the DLQ
    (here after two receives); each failure is logged with the reason."""
    sqs = aws_client("sqs", settings.aws_endpoint_url)
    dlq_url = sqs.create_queue(QueueName=f"{storage.uploads}-dlq")["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])
    sqs.set_queue_attributes(QueueUrl=storage.queue_url, Attributes={"RedrivePolicy": json.dumps(
        {"deadLetterTargetArn": dlq_arn["Attributes"]["QueueArn"], "maxReceiveCount": "2"})})

    async def in_the_dlq() -> bool:
        return not await queue_empty(sqs, dlq_url)

    with caplog.at_level(logging.ERROR, logger="chassis.consumer"):
        media_id = put_recording(storage, clips["video/mp4"], content_type, media_id=key_id,
                                 **metadata)
        await wait_until(in_the_dlq, "the notification to end in the DLQ", timeout_s=30)

    [message] = sqs.receive_message(QueueUrl=dlq_url)["Messages"]
    [record] = json.loads(message["Body"])["Records"]
    assert unquote_plus(record["s3"]["object"]["key"]) == f"recordings/{media_id}"
    assert await rows("media", id=media_id) == []
    assert stored(storage, media_id) == {}
    failures = [r for r in caplog.records if r.exc_info]
    assert failures and all(reason in str(r.exc_info[1]) for r in failures), failures


def test_the_uploads_bucket_announces_originals_and_recordings_on_the_worker_queue(
        moto_endpoint):
    """The media worker's declared uploads, provisioned (twice: idempotent) on a bucket and
    queue of this test's own: objects under both prefixes are announced, others are not."""
    tag = uuid.uuid4().hex[:8]
    [declared] = TOPOLOGY.uploads
    uploads = dataclasses.replace(declared, queue=f"{tag}-{declared.queue}",
                                  bucket=f"{tag}-uploads")
    topology = Topology(
        services=(Service(name=f"post{tag}", port=1, routes=(), publishes=False, workers=(
            Worker("media-worker", "post_svc.media_worker:build_app", 2, uploads=(uploads,)),)),),
        user_pool=UserPool(name=f"users-{tag}", client=f"web-{tag}"),
        buckets=(uploads.bucket,))
    provision(topology, moto_endpoint, REGION)
    outputs = provision(topology, moto_endpoint, REGION)
    s3, sqs = aws_client("s3", moto_endpoint), aws_client("sqs", moto_endpoint)

    rules = s3.get_bucket_notification_configuration(Bucket=uploads.bucket)
    assert len(rules["QueueConfigurations"]) == 2
    for key in ("originals/A", "recordings/B", "elsewhere/C"):
        s3.put_object(Bucket=uploads.bucket, Key=key, Body=b"x")
    keys = []
    for _ in range(5):
        response = sqs.receive_message(QueueUrl=outputs["queues"][uploads.queue],
                                       MaxNumberOfMessages=10, WaitTimeSeconds=1)
        keys += [unquote_plus(record["s3"]["object"]["key"]) for m in response.get("Messages", [])
                 for record in json.loads(m["Body"]).get("Records", [])]
        if len(keys) >= 2:
            break
    assert sorted(keys) == ["originals/A", "recordings/B"]
    assert set(outputs["queues"]) == {uploads.queue, uploads.dlq}
