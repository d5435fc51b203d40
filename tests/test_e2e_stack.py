"""End to end through the gateway of `asyncsns-stack up`: accounts, the graph, a restart."""

import asyncio
import io
import json
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
import websockets
from PIL import Image

from stack.testing import RunningStack, running_stack

PASSWORD = "correct horse 1"
PROBLEM_JSON = "application/problem+json"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("stack") / "data"


@pytest.fixture(scope="module")
def stack(data_dir: Path) -> Iterator[RunningStack]:
    with running_stack(data_dir, "--replicas", "profile=2") as running:
        yield running


def sign_up_and_log_in(api: httpx.Client, username: str) -> tuple[str, dict[str, str]]:
    signup = api.post("/api/auth/signup", json={"username": username, "password": PASSWORD,
                                                "email": f"{username}@example.com"})
    assert signup.status_code == 201, signup.text
    assert signup.json()["username"] == username
    return signup.json()["user_id"], log_in(api, username)


def log_in(api: httpx.Client, username: str) -> dict[str, str]:
    login = api.post("/api/auth/login", json={"username": username, "password": PASSWORD})
    assert login.status_code == 200, login.text
    assert login.json()["token_type"] == "Bearer"
    return {"Authorization": f"Bearer {login.json()['access_token']}"}


def test_health_reports_every_service(stack: RunningStack) -> None:
    health = httpx.get(f"{stack.url}/api/health")

    assert health.status_code == 200
    assert health.json() == {"status": "ok", "services": {
        "profile": "ok", "post": "ok", "query": "ok", "chat": "ok", "notifier": "ok",
        "call": "ok", "media-worker": "ok", "profile-events": "ok", "post-events": "ok",
        "query-events": "ok", "chat-events": "ok", "notifier-events": "ok"}}


def test_unknown_paths_get_a_problem_from_the_gateway(stack: RunningStack) -> None:
    response = httpx.get(f"{stack.url}/api/nothing-here")

    assert response.status_code == 404
    assert response.headers["content-type"] == PROBLEM_JSON
    assert response.json()["status"] == 404


def test_a_250_kb_token_reaches_the_service_and_is_refused(stack: RunningStack) -> None:
    response = httpx.get(f"{stack.url}/api/profiles/me",
                         headers={"Authorization": "Bearer " + "a" * 250_000})

    assert response.status_code == 401
    assert response.headers["content-type"].startswith(PROBLEM_JSON)


def eventually(api: httpx.Client, path: str, headers: dict[str, str], predicate,
               timeout_s: float = 20.0) -> dict:
    """GET `path` until `predicate(body)` holds: the read side follows the writes."""
    deadline = time.monotonic() + timeout_s
    while True:
        response = api.get(path, headers=headers)
        if response.status_code == 200 and predicate(response.json()):
            return response.json()
        assert time.monotonic() < deadline, f"{path}: {response.status_code} {response.text}"
        time.sleep(0.1)


def created_once_known(api: httpx.Client, path: str, headers: dict[str, str],
                       body: dict) -> httpx.Response:
    """POST `body` until the service has heard of the users it names (422 until their
    profile.created arrives); the 201."""
    deadline = time.monotonic() + 20
    while (response := api.post(path, headers=headers, json=body)).status_code == 422:
        assert time.monotonic() < deadline, response.text
        time.sleep(0.2)
    assert response.status_code == 201, response.text
    return response


def test_post_reaches_a_followers_home_timeline_and_search(stack: RunningStack) -> None:
    api = httpx.Client(base_url=stack.url, timeout=10)
    author, as_author = sign_up_and_log_in(api, "ramen_author")
    _, as_reader = sign_up_and_log_in(api, "ramen_reader")
    assert api.put(f"/api/profiles/{author}/follow", headers=as_reader).status_code == 204

    created = api.post("/api/posts", headers={**as_author, "Idempotency-Key": "e2e-1"},
                       json={"text": "今日のラーメンは美味しかった #ラーメン"})
    assert created.status_code == 201, created.text
    post_id = created.json()["id"]

    home = eventually(api, "/api/timelines/home", as_reader,
                      lambda body: [p["id"] for p in body["items"]] == [post_id])
    assert home["items"][0]["author"]["username"] == "ramen_author"
    for q in ("ラーメン", "美味", "#ラーメン", "from:ramen_author ラーメン"):
        found = eventually(api, f"/api/search?q={quote(q)}", as_reader,
                           lambda body: [p["id"] for p in body["items"]] == [post_id])
        assert found["items"][0]["hashtags"] == ["ラーメン"]
    view = api.get(f"/api/posts/{post_id}", headers=as_reader)
    assert view.status_code == 200 and view.json()["text"].startswith("今日の")

    assert api.put(f"/api/posts/{post_id}/like", headers=as_reader).status_code == 204
    eventually(api, f"/api/posts/{post_id}", as_reader,
               lambda body: body["like_count"] == 1 and body["liked_by_me"])
    assert api.delete(f"/api/posts/{post_id}", headers=as_author).status_code == 204
    eventually(api, "/api/timelines/home", as_reader, lambda body: body["items"] == [])
    eventually(api, "/api/search?q=ラーメン", as_reader, lambda body: body["items"] == [])


def photo_with_gps() -> bytes:
    """A landscape JPEG with camera and GPS EXIF that says 'rotate to view' (orientation 6)."""
    image = Image.new("RGB", (640, 320), "green")
    exif = Image.Exif()
    exif[0x010F], exif[0x0112] = "Camera Maker", 6
    exif[0x8825] = {1: "N", 2: (35.0, 39.0, 29.0), 3: "E", 4: (139.0, 44.0, 28.0)}
    out = io.BytesIO()
    image.save(out, "JPEG", exif=exif)
    return out.getvalue()


def test_a_photo_uploaded_through_the_gateway_reaches_a_follower(stack: RunningStack) -> None:
    api = httpx.Client(base_url=stack.url, timeout=10)
    author, as_author = sign_up_and_log_in(api, "photo_author")
    _, as_reader = sign_up_and_log_in(api, "photo_reader")
    assert api.put(f"/api/profiles/{author}/follow", headers=as_reader).status_code == 204
    data = photo_with_gps()
    reserved = api.post("/api/media", headers=as_author, json={
        "content_type": "image/jpeg", "size": len(data), "alt_text": "a green field"})
    assert reserved.status_code == 201, reserved.text
    media_id, form = reserved.json()["media_id"], reserved.json()["upload"]
    assert form["url"].startswith(stack.url)  # the gateway passes uploads on to S3 (moto)
    sent = httpx.post(form["url"], data=form["fields"],
                      files={"file": ("field.jpg", data, "image/jpeg")})
    assert sent.status_code == 204, sent.text
    created = api.post("/api/posts", headers=as_author,
                       json={"text": "a field in summer", "media_ids": [media_id]})
    assert created.status_code == 201, created.text

    home = eventually(api, "/api/timelines/home", as_reader,
                      lambda body: [p["id"] for p in body["items"]] == [created.json()["id"]])
    [shown] = home["items"][0]["media"]
    assert shown["status"] == "ready" and shown["alt_text"] == "a green field"
    assert (shown["width"], shown["height"]) == (320, 640)
    for name in ("thumb", "large"):
        variant = httpx.get(shown["variants"][name])
        assert variant.status_code == 200 and variant.headers["content-type"] == "image/webp"
        assert "immutable" in variant.headers["cache-control"]
        image = Image.open(io.BytesIO(variant.content))
        assert not image.getexif() and image.height > image.width
    assert httpx.put(shown["variants"]["thumb"], content=b"x").status_code == 403
    original = httpx.get(f"{form['url']}/originals/{media_id}")
    assert original.status_code == 404, "originals are never served"
    assert httpx.get(form["url"]).status_code == 403, "the uploads bucket takes forms only"
    found = eventually(api, f"/api/search?q={quote('field has:media')}", as_reader,
                       lambda body: len(body["items"]) == 1)
    assert found["items"][0]["media"][0]["media_id"] == media_id

    avatar = api.patch("/api/profiles/me", headers=as_author, json={"avatar_media_id": media_id})
    assert avatar.status_code == 200 and avatar.json()["avatar_url"] == shown["variants"]["thumb"]


def test_a_video_becomes_hls_a_standard_player_reads_through_the_gateway(
        stack: RunningStack, tmp_path: Path) -> None:
    api = httpx.Client(base_url=stack.url, timeout=10)
    _, headers = sign_up_and_log_in(api, "video_author")
    clip = tmp_path / "clip.mp4"
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-f", "lavfi", "-i",
                    "testsrc2=s=640x360:r=25:d=3", "-f", "lavfi", "-i", "sine=d=3",
                    "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p",
                    "-shortest", str(clip)], check=True)
    reserved = api.post("/api/media", headers=headers, json={
        "content_type": "video/mp4", "size": clip.stat().st_size}).json()
    form = reserved["upload"]
    sent = httpx.post(form["url"], data=form["fields"],
                      files={"file": ("clip.mp4", clip.read_bytes(), "video/mp4")})
    assert sent.status_code == 204, sent.text
    view = eventually(api, f"/api/media/{reserved['media_id']}", headers,
                      lambda body: body["status"] != "pending" and body["status"] != "processing",
                      timeout_s=60)
    assert view["status"] == "ready" and abs(view["duration_s"] - 3.0) < 0.2, view
    master = httpx.get(view["variants"]["hls"])
    assert master.headers["content-type"] == "application/vnd.apple.mpegurl"
    assert "#EXT-X-STREAM-INF" in master.text
    assert httpx.get(view["variants"]["poster"]).headers["content-type"] == "image/jpeg"
    # ffprobe plays the part of a standard HLS player: playlists and segments over HTTP.
    probe = subprocess.run(["ffprobe", "-v", "error", "-of", "json", "-show_streams",
                            view["variants"]["hls"]], capture_output=True, text=True, timeout=60)
    assert probe.returncode == 0, probe.stderr
    heights = {s.get("height") for s in json.loads(probe.stdout)["streams"]}
    assert {240, 360} <= heights


async def chat_client(stack: RunningStack, headers: dict[str, str]):
    """A WebSocket session through the gateway (which replica serves it is nginx's choice)."""
    conn = await websockets.connect(stack.url.replace("http", "ws", 1) + "/ws/chat")
    await conn.send(json.dumps({"type": "auth",
                                "token": headers["Authorization"].removeprefix("Bearer ")}))
    assert json.loads(await conn.recv())["type"] == "ready"
    return conn


async def frames_until(conn, predicate, timeout_s: float = 10.0) -> list[dict]:
    seen: list[dict] = []
    async with asyncio.timeout(timeout_s):
        while not predicate(seen):
            seen.append(json.loads(await conn.recv()))
    return seen


async def exchange(stack: RunningStack, channel: str, sender: dict[str, str],
                   receiver: dict[str, str]) -> None:
    """Two sessions each, so both chat replicas serve some of them (nginx's round robin); the
    sender's first session posts three messages, every other session gets all three in order."""
    senders = [await chat_client(stack, sender) for _ in range(2)]
    receivers = [await chat_client(stack, receiver) for _ in range(2)]
    for i in range(3):
        await senders[0].send(json.dumps({"type": "send", "channel_id": channel,
                                          "client_msg_id": f"c{i}",
                                          "text": f"今日のラーメンは美味しかった {i}"}))
    for conn in receivers + senders[1:]:
        got = await frames_until(conn, lambda seen: len(
            [f for f in seen if f["type"] == "message"]) == 3)
        assert [f["seq"] for f in got if f["type"] == "message"] == [1, 2, 3]
    for conn in senders + receivers:
        await conn.close()


def test_chat_through_the_gateway_reaches_across_replicas_and_search(
        stack: RunningStack) -> None:
    api = httpx.Client(base_url=stack.url, timeout=10)
    _, as_alice = sign_up_and_log_in(api, "chat_alice")
    bob, as_bob = sign_up_and_log_in(api, "chat_bob")
    _, as_eve = sign_up_and_log_in(api, "chat_eve")
    opened = created_once_known(api, "/api/chat/channels", as_alice,
                                {"kind": "dm", "member_ids": [bob]})
    channel = opened.json()["id"]
    asyncio.run(exchange(stack, channel, as_alice, as_bob))
    search = f"/api/search?type=messages&q={quote('ラーメン')}"
    found = eventually(api, search, as_bob, lambda body: len(body["items"]) == 3)
    assert {m["channel_id"] for m in found["items"]} == {channel}
    assert api.get(search, headers=as_eve).json()["items"] == []
    assert api.get(f"/api/chat/channels/{channel}/messages", headers=as_eve).status_code == 404


async def recorded_call(stack: RunningStack, call_id: str, as_alice: dict[str, str],
                        as_bob: dict[str, str]) -> dict:
    """Both join over /ws/calls through the gateway (aiortc, media flowing), alice records
    five seconds, bob stops it."""
    from aiortc import AudioStreamTrack, VideoStreamTrack

    from call_svc.client import CallPeer

    url = stack.url.replace("http", "ws", 1) + f"/ws/calls/{call_id}"
    token = {h: v.removeprefix("Bearer ") for h, v in (("a", as_alice["Authorization"]),
                                                          ("b", as_bob["Authorization"]))}
    a = CallPeer(url, token["a"], tracks=[AudioStreamTrack(), VideoStreamTrack()])
    b = CallPeer(url, token["b"], tracks=[AudioStreamTrack(), VideoStreamTrack()])
    async with httpx.AsyncClient(base_url=stack.url, timeout=60) as api:
        try:
            await a.join()
            joined = await b.join()
            await asyncio.wait_for(b.link(joined["participants"][0]).wait(), 20)
            started = await api.post(f"/api/calls/{call_id}/recording", headers=as_alice)
            assert started.status_code == 201, started.text
            recorder = f"recorder:{started.json()['id']}"
            await asyncio.wait_for(a.link(recorder).wait(), 20)
            await asyncio.sleep(5)
            stopped = await api.delete(f"/api/calls/{call_id}/recording", headers=as_bob)
            assert stopped.status_code == 200, stopped.text
            return stopped.json()
        finally:
            await b.leave()
            await a.leave()


def test_a_call_rings_the_callee_and_its_recording_becomes_a_video(
        stack: RunningStack) -> None:
    api = httpx.Client(base_url=stack.url, timeout=10)
    alice, as_alice = sign_up_and_log_in(api, "call_alice")
    bob, as_bob = sign_up_and_log_in(api, "call_bob")
    started = created_once_known(api, "/api/calls", as_alice,
                                 {"callee_ids": [bob], "media": "video"})
    call_id = started.json()["call_id"]
    rung = eventually(api, "/api/notifications", as_bob, lambda body: any(
        n["type"] == "call" for n in body["items"]))
    assert any(n["subject"]["call_id"] == call_id for n in rung["items"] if n["type"] == "call")

    recording = asyncio.run(recorded_call(stack, call_id, as_alice, as_bob))
    assert 4.0 <= recording["duration_s"] <= 6.5, recording
    media = eventually(api, f"/api/media/{recording['media_id']}", as_alice,
                       lambda body: body["status"] in ("ready", "failed"), timeout_s=90)
    assert media["status"] == "ready", media
    assert media["kind"] == "video" and 4.0 <= media["duration_s"] <= 6.5, media
    assert api.get(f"/api/media/{recording['media_id']}", headers=as_bob).status_code == 404
    assert api.get(f"/api/calls/{call_id}", headers=as_bob).json()["state"] == "ended"


def test_follow_block_and_a_restart_that_keeps_users(stack: RunningStack,
                                                     data_dir: Path) -> None:
    api = httpx.Client(base_url=stack.url, timeout=10)
    alice, as_alice = sign_up_and_log_in(api, "alice")
    bob, as_bob = sign_up_and_log_in(api, "bob")

    assert api.put(f"/api/profiles/{bob}/follow", headers=as_alice).status_code == 204
    assert api.get(f"/api/profiles/{bob}", headers=as_alice).json()["followers_count"] == 1
    assert api.put(f"/api/profiles/{alice}/follow", headers=as_bob).status_code == 204

    assert api.put(f"/api/profiles/{bob}/block", headers=as_alice).status_code == 204
    for user in (alice, bob):
        profile = api.get(f"/api/profiles/{user}", headers=as_alice).json()
        assert (profile["followers_count"], profile["following_count"]) == (0, 0)
    refused = api.put(f"/api/profiles/{alice}/follow", headers=as_bob)
    assert 400 <= refused.status_code < 500
    assert refused.headers["content-type"].startswith(PROBLEM_JSON)

    assert stack.stop(signal.SIGINT) == 0
    with running_stack(data_dir) as again:
        api = httpx.Client(base_url=again.url, timeout=10)
        me = api.get("/api/profiles/me", headers=log_in(api, "alice"))
        assert me.json()["user_id"] == alice
        bob_again = api.get("/api/profiles/me", headers=log_in(api, "bob")).json()
        assert bob_again["user_id"] == bob
        assert bob_again["followers_count"] == bob_again["following_count"] == 0


def test_the_stack_runs_on_postgresql_when_given_a_server(tmp_path: Path, postgres_server) -> None:
    database = f"e2e_{uuid.uuid4().hex[:12]}"
    template = postgres_server.url_for(database).replace(database, "{service}_" + database)
    with running_stack(tmp_path / "data", "--database-url", template) as running:
        with httpx.Client(base_url=running.url, timeout=30) as api:
            user_id, headers = sign_up_and_log_in(api, "pg_ada")
            me = api.get("/api/profiles/me", headers=headers)
        assert me.status_code == 200 and me.json()["user_id"] == user_id
        assert not list((tmp_path / "data").glob("*.db")), "no SQLite file when given a server"
    for service in ("profile", "post", "query"):
        postgres_server.execute(f'DROP DATABASE IF EXISTS "{service}_{database}" WITH (FORCE)')
