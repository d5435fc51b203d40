"""The live-streaming engine with real parts: aiortc publishers and viewers, moto S3, PyAV.

The publisher's test pattern carries each frame's number in big black and white cells, so
whatever decodes it (the HLS segment, a WHEP viewer) can tell which frame it holds; that is
how `measure_glass_to_glass` times a frame from the publisher to the playlist in S3.
"""

import asyncio
import io
import statistics
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import aioboto3
import av
import pytest
from aiortc import (
    AudioStreamTrack,
    MediaStreamTrack,
    RTCConfiguration,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError

from call_svc.patterns import TestPatternTrack, frame_number
from call_svc.settings import CallSettings
from call_svc.studio import Studio, hls_url
from chassis.problems import Problem
from chassis.testing import FAKE_AWS, REGION, wait_until

WIDTH, HEIGHT = 320, 240
NO_MEDIA_SDP = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"


@dataclass
class Publisher:
    pc: RTCPeerConnection
    video: TestPatternTrack


@dataclass
class Calls:
    """What the studio told its owner."""

    started: list[str] = field(default_factory=list)
    ended: list[str] = field(default_factory=list)

    async def on_started(self, stream_id: str) -> None:
        self.started.append(stream_id)

    async def on_ended(self, stream_id: str) -> None:
        self.ended.append(stream_id)


Peers = Callable[[], RTCPeerConnection]


def settings_for(bucket: str, **overrides: object) -> CallSettings:
    values = {"database_url": "sqlite+aiosqlite://", "media_bucket": bucket,
              "hls_segment_s": 1.0, **overrides}
    return CallSettings(**values)


@pytest.fixture
async def s3(moto_endpoint: str) -> AsyncIterator[object]:
    session = aioboto3.Session()
    async with session.client("s3", endpoint_url=moto_endpoint, region_name=REGION,
                              **FAKE_AWS) as client:
        yield client


@pytest.fixture
async def bucket(s3: object) -> str:
    name = f"media-{uuid.uuid4().hex[:12]}"
    await s3.create_bucket(Bucket=name)
    return name


@pytest.fixture
def calls() -> Calls:
    return Calls()


@pytest.fixture
async def studio(s3: object, bucket: str, calls: Calls) -> AsyncIterator[Studio]:
    studio = Studio(s3, settings_for(bucket), on_started=calls.on_started,
                    on_ended=calls.on_ended)
    yield studio
    await studio.close()


@pytest.fixture
async def peers() -> AsyncIterator[Peers]:
    """Make the test's own peer connections; all closed afterwards."""
    made: list[RTCPeerConnection] = []

    def make() -> RTCPeerConnection:
        made.append(RTCPeerConnection(RTCConfiguration(iceServers=[])))
        return made[-1]

    yield make
    for pc in made:
        await pc.close()


async def publish(studio: Studio, pc: RTCPeerConnection, stream_id: str) -> Publisher:
    """Go live over WHIP with the test pattern and silence."""
    video = TestPatternTrack(WIDTH, HEIGHT, fps=30)
    pc.addTransceiver(video, direction="sendonly")
    pc.addTransceiver(AudioStreamTrack(), direction="sendonly")
    await pc.setLocalDescription(await pc.createOffer())
    answer = await studio.ingest(stream_id, pc.localDescription.sdp)
    await pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
    return Publisher(pc, video)


async def viewer_offer(pc: RTCPeerConnection) -> str:
    pc.addTransceiver("video", direction="recvonly")
    pc.addTransceiver("audio", direction="recvonly")
    await pc.setLocalDescription(await pc.createOffer())
    return pc.localDescription.sdp


async def read(s3: object, bucket: str, key: str) -> bytes | None:
    try:
        response = await s3.get_object(Bucket=bucket, Key=key)
    except s3.exceptions.NoSuchKey:
        return None
    async with response["Body"] as body:
        return await body.read()


def segment_names(playlist: bytes) -> list[str]:
    return [line for line in playlist.decode().splitlines() if line and line[0] != "#"]


async def playlist_with(s3: object, bucket: str, stream_id: str, segments: int) -> bytes:
    """The stream's playlist in S3 once it lists `segments` segments."""
    found: list[bytes] = []

    async def listed() -> bool:
        text = await read(s3, bucket, f"media/live/{stream_id}/index.m3u8")
        found[:] = [text] if text else []
        return bool(text) and len(segment_names(text)) >= segments

    await wait_until(listed, f"the playlist lists {segments} segments", timeout_s=10)
    return found[0]


def decode_video(segment: bytes) -> list[av.VideoFrame]:
    with av.open(io.BytesIO(segment)) as container:
        return list(container.decode(video=0))


async def measure_glass_to_glass(s3: object, bucket: str, stream_id: str, video: TestPatternTrack,
                                 segments: int) -> list[tuple[float, float]]:
    """For each of the next `segments` segments: seconds from its first and from its last
    frame leaving the publisher to the S3 playlist listing it (polled every 20 ms)."""
    measured: list[tuple[float, float]] = []
    seen = 0
    deadline = time.monotonic() + 3 * segments + 10
    while len(measured) < segments and time.monotonic() < deadline:
        text = await read(s3, bucket, f"media/live/{stream_id}/index.m3u8")
        listed_at = time.monotonic()
        for name in segment_names(text or b"")[seen:]:
            seen += 1
            segment = await read(s3, bucket, f"media/live/{stream_id}/{name}")
            frames = await asyncio.to_thread(decode_video, segment)
            sent = [video.sent[n] for n in map(frame_number, frames) if n in video.sent]
            measured.append((listed_at - min(sent), listed_at - max(sent)))
        await asyncio.sleep(0.02)
    return measured[:segments]


async def test_a_live_stream_becomes_hls_in_s3_and_stays_as_video_on_demand(
        studio: Studio, calls: Calls, s3: object, bucket: str, peers: Peers) -> None:
    await publish(studio, peers(), "s1")
    playlist = await playlist_with(s3, bucket, "s1", segments=2)

    for name in segment_names(playlist):
        head = await s3.head_object(Bucket=bucket, Key=f"media/live/s1/{name}")
        assert head["ContentType"] == "video/mp2t"
        assert "immutable" in head["CacheControl"]
    head = await s3.head_object(Bucket=bucket, Key="media/live/s1/index.m3u8")
    assert head["ContentType"] == "application/vnd.apple.mpegurl"
    assert head["CacheControl"] == "public, max-age=1"
    segment = await read(s3, bucket, f"media/live/s1/{segment_names(playlist)[1]}")
    frames = decode_video(segment)
    assert len(frames) >= 15 and {(f.width, f.height) for f in frames} == {(WIDTH, HEIGHT)}
    with av.open(io.BytesIO(segment)) as container:
        assert [s.codec_context.name for s in container.streams] == ["h264", "aac"]
    assert calls.started == ["s1"] and calls.ended == []

    await studio.end("s1")
    final = await read(s3, bucket, "media/live/s1/index.m3u8")
    assert final.rstrip().endswith(b"#EXT-X-ENDLIST")
    assert b"#EXT-X-PLAYLIST-TYPE:EVENT" in final
    assert len(segment_names(final)) > len(segment_names(playlist))
    for name in segment_names(final):
        assert await read(s3, bucket, f"media/live/s1/{name}")
    assert calls.ended == ["s1"] and not studio.holds("s1")
    await studio.end("s1")
    assert calls.started == ["s1"] and calls.ended == ["s1"]
    assert hls_url(settings_for(bucket), "s1") == "http://127.0.0.1:8080/media/live/s1/index.m3u8"


async def test_a_whep_viewer_sees_the_publisher_and_the_stream_ends_when_the_publisher_leaves(
        studio: Studio, calls: Calls, s3: object, bucket: str, peers: Peers) -> None:
    publisher = await publish(studio, peers(), "s2")
    viewer = peers()
    received: list[av.VideoFrame] = []
    readers: list[asyncio.Task[None]] = []

    async def collect(track: MediaStreamTrack) -> None:
        while True:
            try:
                received.append(await track.recv())
            except MediaStreamError:
                return

    viewer.on("track", lambda track: track.kind == "video"
              and readers.append(asyncio.create_task(collect(track))))
    viewer_id, answer = await studio.watch("s2", await viewer_offer(viewer))
    await viewer.setRemoteDescription(RTCSessionDescription(answer, "answer"))

    async def frames_arrived() -> bool:
        return len(received) >= 20

    await wait_until(frames_arrived, "the viewer received 20 frames", timeout_s=10)
    numbers = [frame_number(f) for f in received[-10:]]
    assert all(n in publisher.video.sent for n in numbers) and numbers == sorted(numbers)
    assert {(f.width, f.height) for f in received} == {(WIDTH, HEIGHT)}
    assert studio.viewer_count("s2") == 1 and viewer_id

    await viewer.close()

    async def viewer_dropped() -> bool:
        return studio.viewer_count("s2") == 0

    await wait_until(viewer_dropped, "the viewer who hung up is dropped", timeout_s=5)
    await publisher.pc.close()

    async def ended() -> bool:
        return calls.ended == ["s2"]

    await wait_until(ended, "the stream ends after the publisher hung up", timeout_s=10)
    assert not studio.holds("s2")
    final = await read(s3, bucket, "media/live/s2/index.m3u8")
    assert final.rstrip().endswith(b"#EXT-X-ENDLIST")
    for reader in readers:
        reader.cancel()


async def test_unusable_offers_are_refused_and_other_streams_go_on(
        studio: Studio, peers: Peers) -> None:
    await publish(studio, peers(), "live")
    oversized = NO_MEDIA_SDP + "a=x\r\n" * 10_000
    receive_only = await viewer_offer(peers())
    for sdp in ("hello", "", NO_MEDIA_SDP, oversized, receive_only, "v=0\r\nm=video x\r\n"):
        with pytest.raises(Problem) as refused:
            await studio.ingest("other", sdp)
        assert refused.value.status == (413 if sdp is oversized else 400), sdp[:40]
        assert refused.value.extra["errors"][0]["field"] == "sdp"
    with pytest.raises(Problem) as refused:
        await studio.watch("live", "garbage")
    assert refused.value.status == 400
    with pytest.raises(Problem) as refused:
        await studio.watch("nobody", receive_only)
    assert refused.value.status == 404
    with pytest.raises(Problem) as refused:
        await publish(studio, peers(), "live")
    assert refused.value.status == 409

    assert studio.holds("live") and not studio.holds("other")
    await publish(studio, peers(), "other")
    assert studio.holds("live") and studio.holds("other")


async def test_viewers_past_the_limit_are_told_to_watch_hls(
        s3: object, bucket: str, peers: Peers) -> None:
    studio = Studio(s3, settings_for(bucket, whep_viewers_max=1))
    try:
        await publish(studio, peers(), "s3")
        await studio.watch("s3", await viewer_offer(peers()))
        with pytest.raises(Problem) as refused:
            await studio.watch("s3", await viewer_offer(peers()))
        assert refused.value.status == 503
    finally:
        await studio.close()


async def test_a_frame_is_listed_in_s3_within_a_segment_and_a_bit(
        studio: Studio, s3: object, bucket: str, peers: Peers) -> None:
    publisher = await publish(studio, peers(), "s4")
    delays = await measure_glass_to_glass(s3, bucket, "s4", publisher.video, segments=3)
    assert len(delays) == 3
    first, last = statistics.median(d[0] for d in delays), statistics.median(d[1] for d in delays)
    print(f"glass to playlist, 1 s segments: first frame {first:.2f} s, last {last:.2f} s")
    segment_s = settings_for(bucket).hls_segment_s
    assert last < first < segment_s + 1.5
