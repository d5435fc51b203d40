"""Uploads end to end in one process pair: the API signs a form, the file goes to S3 (moto),
S3 tells the uploads queue, the media worker (its own app) processes it, and posts carrying
it are published once it is ready."""

import asyncio
import base64
import io
import json
import os
import signal
import sys
from datetime import UTC, datetime

import httpx
import pytest
from PIL import Image

from chassis.testing import (
    assert_problem,
    aws_client,
    free_port,
    serve_in_process,
    sqlite_plan,
    wait_until,
)
from post_svc import media_worker
from post_svc.models import Base

from .conftest import MEDIA_BASE_URL
from .test_mediaproc import camera_jpeg, ffmpeg, png_bomb


def jpeg_with_gps() -> bytes:
    """test_mediaproc's camera photo (landscape, stored sideways, blue top-left corner, camera
    and GPS EXIF), as bytes."""
    out = io.BytesIO()
    camera_jpeg(out)
    return out.getvalue()


@pytest.fixture
async def worker(settings):
    """The media worker, running beside the API (`client`) on the same database."""
    app = media_worker.build_app(settings)
    async with serve_in_process(app):
        yield app


async def request_upload(client, author, content_type="image/jpeg", size=None, data=b"",
                         **fields):
    response = await client.post("/api/media", headers=author.headers, json={
        "content_type": content_type, "size": size or max(len(data), 1), **fields})
    assert response.status_code == 201, response.text
    return response.json()


async def upload(client, author, data: bytes, content_type="image/jpeg", **fields) -> str:
    """Request a form and post the file with it, as a browser would; returns the media id."""
    reserved = await request_upload(client, author, content_type, data=data, **fields)
    form = reserved["upload"]
    async with httpx.AsyncClient() as http:
        sent = await http.post(form["url"], data=form["fields"],
                               files={"file": ("upload", data, content_type)})
    assert sent.status_code in (200, 201, 204), sent.text
    return reserved["media_id"]


async def settled(client, author, media_id: str) -> dict:
    async def done() -> bool:
        view = (await client.get(f"/api/media/{media_id}", headers=author.headers)).json()
        return view["status"] in ("ready", "failed")

    await wait_until(done, f"media {media_id} to settle", timeout_s=30)
    return (await client.get(f"/api/media/{media_id}", headers=author.headers)).json()


def stored(storage, media_id: str) -> dict[str, bytes]:
    """What the media bucket serves for this upload: relative path -> bytes."""
    prefix = f"media/{media_id}/"
    listed = storage.s3.list_objects_v2(Bucket=storage.media, Prefix=prefix).get("Contents", [])
    return {o["Key"].removeprefix(prefix):
            storage.s3.get_object(Bucket=storage.media, Key=o["Key"])["Body"].read()
            for o in listed}


async def test_limits_are_stated_in_one_place(client):
    limits = (await client.get("/api/media/limits")).json()
    assert limits["kinds"]["image"]["max_bytes"] == 16 * 1024 * 1024
    assert "image/heic" in limits["kinds"]["image"]["types"]
    assert limits["kinds"]["video"]["types"] == ["video/mp4", "video/quicktime", "video/webm"]
    assert limits["kinds"]["audio"]["max_bytes"] == 50 * 1024 * 1024
    assert limits["kinds"]["image"]["per_post"] == 4 and limits["kinds"]["video"]["per_post"] == 1


async def test_the_upload_form_pins_key_type_and_size(client, user, storage):
    alice = await user()
    reserved = await request_upload(client, alice, "image/png", size=5000, alt_text="a cat")
    fields = reserved["upload"]["fields"]
    assert reserved["upload"]["url"].endswith(f"/{storage.uploads}")
    assert fields["key"] == f"originals/{reserved['media_id']}"
    policy = json.loads(base64.b64decode(fields["policy"]))
    conditions = policy["conditions"]
    assert ["content-length-range", 1, 5000] in conditions
    assert {"Content-Type": "image/png"} in conditions
    assert {"key": fields["key"]} in conditions and {"bucket": storage.uploads} in conditions
    expires = datetime.fromisoformat(policy["expiration"].replace("Z", "+00:00"))
    assert 0 < (expires - datetime.now(UTC)).total_seconds() <= 600
    view = (await client.get(f"/api/media/{reserved['media_id']}", headers=alice.headers)).json()
    assert view["status"] == "pending" and view["alt_text"] == "a cat"


@pytest.mark.parametrize(("body", "status", "field"), [
    ({"content_type": "application/pdf", "size": 10}, 422, "content_type"),
    ({"content_type": "image/jpeg", "size": 16 * 1024 * 1024 + 1}, 413, "size"),
    ({"content_type": "video/mp4", "size": 200 * 1024 * 1024 + 1}, 413, "size"),
    ({"content_type": "image/jpeg", "size": 0}, 422, "size"),
    ({"content_type": "image/jpeg", "size": -5}, 422, "size"),
    ({"content_type": "image/jpeg", "size": 10, "alt_text": "x" * 1501}, 422, "alt_text"),
    ({"content_type": "image/jpeg"}, 422, "size"),
])
async def test_uploads_outside_the_limits_are_refused(client, user, body, status, field):
    alice = await user()
    response = await client.post("/api/media", headers=alice.headers, json=body)
    problem = assert_problem(response, status)
    assert field in json.dumps(problem)


async def test_media_are_their_owners_alone(client, user):
    alice, bob = await user(), await user()
    reserved = await request_upload(client, alice)
    path = f"/api/media/{reserved['media_id']}"
    assert_problem(await client.get(path, headers=bob.headers), 404)
    assert_problem(await client.get(path), 401)
    assert_problem(await client.post("/api/media", json={"content_type": "image/jpeg",
                                                         "size": 1}), 401)
    assert_problem(await client.get("/api/media/not-an-id", headers=alice.headers), 422)


async def test_a_photo_comes_out_upright_without_exif_in_every_variant(
        client, worker, user, storage, events):
    alice = await user()
    media_id = await upload(client, alice, jpeg_with_gps(), alt_text="sunset")
    view = await settled(client, alice, media_id)
    assert view["status"] == "ready", view
    assert (view["width"], view["height"]) == (200, 400)  # turned upright
    assert view["blurhash"] and view["alt_text"] == "sunset"
    assert set(view["variants"]) >= {"thumb", "large"}
    files = stored(storage, media_id)
    for name, url in view["variants"].items():
        assert url.startswith(f"{MEDIA_BASE_URL}/{media_id}/")
        image = Image.open(io.BytesIO(files[url.removeprefix(f"{MEDIA_BASE_URL}/{media_id}/")]))
        assert image.format == "WEBP" and not image.getexif(), name
        assert not {"exif", "xmp", "icc_profile"} & set(image.info), name
        assert image.height > image.width, name
        r, g, b = image.convert("RGB").getpixel((image.width - 2, 1))  # blue moved top right
        assert b > 180 and r < 80, name
    thumb = view["variants"]["thumb"].removeprefix(f"{MEDIA_BASE_URL}/")
    head = storage.s3.head_object(Bucket=storage.media, Key=f"media/{thumb}")
    assert head["ContentType"] == "image/webp" and "immutable" in head["CacheControl"]
    [event] = [e for e in await events.drain(1) if e["type"] == "media.ready"]
    assert event["data"]["media_id"] == media_id and event["data"]["owner_id"] == alice.id


@pytest.mark.parametrize(("content_type", "data", "reason"), [
    ("image/jpeg", b"", "empty"),
    ("image/jpeg", b"%PDF-1.7 not a picture at all" * 10, "JPEG"),
    ("image/png", jpeg_with_gps(), "PNG"),
    ("image/jpeg", jpeg_with_gps()[:600], "truncated"),
    ("video/mp4", b"just some text, not a video" * 20, "video"),
])
async def test_bad_files_fail_with_a_reason_and_nothing_is_served(
        client, worker, user, storage, content_type, data, reason):
    alice = await user()
    media_id = await upload(client, alice, data, content_type)
    view = await settled(client, alice, media_id)
    assert view["status"] == "failed" and view["variants"] == {}
    assert reason.lower() in view["error"].lower(), view["error"]
    assert stored(storage, media_id) == {}


async def test_a_file_larger_than_declared_fails(client, worker, user, storage):
    alice = await user()
    reserved = await request_upload(client, alice, size=100)
    form = reserved["upload"]
    async with httpx.AsyncClient() as http:  # moto does not hold the form to its policy
        await http.post(form["url"], data=form["fields"],
                        files={"file": ("big.jpg", jpeg_with_gps(), "image/jpeg")})
    view = await settled(client, alice, reserved["media_id"])
    assert view["status"] == "failed" and "declared" in view["error"]
    assert stored(storage, reserved["media_id"]) == {}


async def test_a_decompression_bomb_is_refused(client, worker, user, storage):
    alice = await user()
    media_id = await upload(client, alice, png_bomb(), "image/png")
    view = await settled(client, alice, media_id)
    assert view["status"] == "failed" and "megapixels" in view["error"], view
    assert stored(storage, media_id) == {}


async def test_a_post_waits_for_its_media_and_then_carries_their_views(
        client, worker, user, post, events):
    alice = await user()
    reserved = await request_upload(client, alice, data=jpeg_with_gps(), alt_text="the view")
    created = await post(alice, "look at this #photo", media_ids=[reserved["media_id"]])
    assert created["published"] is False and created["media"] == []
    edited = await client.patch(f"/api/posts/{created['id']}", json={"text": "look! #photo"},
                                headers=alice.headers)
    assert edited.status_code == 200 and edited.json()["published"] is False
    form = reserved["upload"]
    async with httpx.AsyncClient() as http:
        await http.post(form["url"], data=form["fields"],
                        files={"file": ("p.jpg", jpeg_with_gps(), "image/jpeg")})
    published = [e for e in await events.drain(2) if e["type"] == "post.created"]
    assert [e["type"] for e in await events.drain(0, timeout_s=0.5)] == []
    [event] = published
    data = event["data"]
    assert data["post_id"] == created["id"] and data["text"] == "look! #photo"
    assert data["version"] == 2 and data["media_ids"] == [reserved["media_id"]]
    [view] = data["media"]
    assert view["status"] == "ready" and view["alt_text"] == "the view"
    assert set(view["variants"]) >= {"thumb", "large"}


async def test_a_post_whose_only_media_failed_is_published_without_them(
        client, worker, user, post, events):
    alice = await user()
    reserved = await request_upload(client, alice, data=b"not a jpeg" * 10)
    created = await post(alice, "oops", media_ids=[reserved["media_id"]])
    form = reserved["upload"]
    async with httpx.AsyncClient() as http:
        await http.post(form["url"], data=form["fields"],
                        files={"file": ("p.jpg", b"not a jpeg" * 10, "image/jpeg")})
    published = {e["type"]: e["data"] for e in await events.drain(2)}
    assert published["media.failed"]["media_id"] == reserved["media_id"]
    assert published["post.created"]["post_id"] == created["id"]
    assert published["post.created"]["media"] == [] == published["post.created"]["media_ids"]


async def test_posts_carry_only_the_authors_own_settled_media_in_allowed_numbers(
        client, app, user, ready_media):
    alice, bob = await user(), await user()
    [bobs] = await ready_media(bob)
    images = await ready_media(alice, 4)
    [video] = await ready_media(alice, kind="video")
    failed = (await request_upload(client, alice))["media_id"]
    await app.state.db.run(lambda conn: (media_worker.begin(conn, failed),
                                         media_worker.settle(conn, failed, error="bad bytes")))
    for media_ids in ([bobs], ["01ARZ3NDEKTSV4RRFFQ69G5FAV"], [*images[:2], video],
                      [video, video], [*images, video], [failed]):
        response = await client.post("/api/posts", json={"text": "hi", "media_ids": media_ids},
                                     headers=alice.headers)
        problem = assert_problem(response, 422)
        assert problem["errors"][0]["field"] == "media_ids", media_ids
    ok = await client.post("/api/posts", json={"text": "four", "media_ids": images},
                           headers=alice.headers)
    assert ok.status_code == 201 and ok.json()["published"]
    again = await client.post("/api/posts", json={"text": "again", "media_ids": images[:1]},
                              headers=alice.headers)
    assert "another post" in assert_problem(again, 422)["detail"]


async def test_processing_survives_a_failure_midway_and_repeats_change_nothing(
        client, worker, user, storage, events):
    """The media bucket is missing at first: the worker fails after marking the upload
    processing, the message comes back, and the second attempt finishes it. A repeated
    notification afterwards changes nothing."""
    alice = await user()
    storage.s3.delete_bucket(Bucket=storage.media)
    media_id = await upload(client, alice, jpeg_with_gps())

    async def processing() -> bool:
        view = (await client.get(f"/api/media/{media_id}", headers=alice.headers)).json()
        return view["status"] == "processing"

    await wait_until(processing, "the worker to start and fail")
    await asyncio.sleep(0.5)
    storage.s3.create_bucket(Bucket=storage.media)
    assert (await settled(client, alice, media_id))["status"] == "ready"
    # S3 may announce an object twice: the same notification again is a no-op.
    body = json.dumps({"Records": [{"eventTime": "2026-01-01T00:00:00Z", "s3": {
        "bucket": {"name": storage.uploads}, "object": {"key": f"originals/{media_id}"}}}]})
    sqs = worker.state.consumers[0]._sqs
    await sqs.send_message(QueueUrl=storage.queue_url, MessageBody=body)

    async def drained() -> bool:
        attributes = (await sqs.get_queue_attributes(
            QueueUrl=storage.queue_url, AttributeNames=["ApproximateNumberOfMessages",
                                                        "ApproximateNumberOfMessagesNotVisible"]))
        return sum(int(v) for v in attributes["Attributes"].values()) == 0

    await wait_until(drained, "the repeat to be handled")
    ready = [e for e in await events.drain(1, timeout_s=3) if e["type"] == "media.ready"]
    assert len(ready) == 1


def settings_env(settings) -> dict[str, str]:
    """The settings as the environment a service process reads them from."""
    return {key.upper(): json.dumps(value) if isinstance(value, (list, tuple, dict))
            else str(value) for key, value in settings.model_dump().items() if value is not None}


async def test_a_worker_killed_mid_video_leaves_the_upload_to_the_next_one(
        client, user, settings, storage, events, tmp_path):
    """SIGKILL the worker process while ffmpeg runs: the upload stays `processing`, its
    message comes back after the visibility timeout, and a new worker makes it ready once."""
    settings = settings.model_copy(update={"consumer_visibility_timeout_s": 2})
    sqs = aws_client("sqs", settings.aws_endpoint_url)
    sqs.set_queue_attributes(QueueUrl=storage.queue_url, Attributes={"VisibilityTimeout": "2"})
    clip = tmp_path / "clip.mp4"
    await asyncio.to_thread(ffmpeg, "-f", "lavfi", "-i", "testsrc2=s=1280x720:r=30:d=20",
                            "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p",
                            str(clip))
    alice = await user()
    first = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "uvicorn", "--factory", "post_svc.media_worker:build_app",
        "--host", "127.0.0.1", "--port", str(free_port()), env={**os.environ,
                                                               **settings_env(settings)},
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    try:
        media_id = await upload(client, alice, clip.read_bytes(), "video/mp4")

        async def ffmpeg_running() -> bool:
            view = (await client.get(f"/api/media/{media_id}", headers=alice.headers)).json()
            return view["status"] == "processing"

        await wait_until(ffmpeg_running, "the first worker to be processing", timeout_s=30)
        await asyncio.sleep(1)
    finally:
        first.send_signal(signal.SIGKILL)
        await first.wait()
    assert (await client.get(f"/api/media/{media_id}", headers=alice.headers)).json()[
        "status"] == "processing"
    async with serve_in_process(media_worker.build_app(settings)):
        view = await settled(client, alice, media_id)
    assert view["status"] == "ready" and set(view["variants"]) == {"hls", "poster"}
    assert abs(view["duration_s"] - 20) < 0.2
    ready = [e for e in await events.drain(1, timeout_s=3) if e["type"] == "media.ready"]
    assert len(ready) == 1


async def test_an_upload_whose_file_never_comes_is_given_up_and_its_post_goes_out(
        client, user, post, settings, events):
    settings = settings.model_copy(update={"media_abandoned_after_s": 0.5,
                                           "media_sweep_interval_s": 0.2})
    alice = await user()
    reserved = await request_upload(client, alice)
    created = await post(alice, "the photo never came", media_ids=[reserved["media_id"]])
    assert created["published"] is False
    async with serve_in_process(media_worker.build_app(settings)):
        view = await settled(client, alice, reserved["media_id"])
    assert view["status"] == "failed" and "never uploaded" in view["error"]
    published = {e["type"]: e["data"] for e in await events.drain(2)}
    assert published["post.created"]["post_id"] == created["id"]
    assert published["post.created"]["media"] == []


def test_the_sweep_reads_the_oldest_pending_uploads_from_an_index():
    steps = sqlite_plan(Base.metadata, media_worker._ABANDONED, before=datetime.now(UTC))
    assert steps == ["SEARCH media USING INDEX ix_media_status_created "
                     "(status=? AND created_at<?)"], steps
