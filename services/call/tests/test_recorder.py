"""The recorder against real WebRTC peers (aiortc playing the participants' browsers), real
ffmpeg, and a real moto S3: what lands in the uploads bucket is what a call looked like."""

import asyncio
import json
import subprocess
import uuid
from pathlib import Path

import aioboto3
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

from call_svc.patterns import TestPatternTrack, ToneTrack
from call_svc.recorder import (
    RECORDINGS,
    NothingRecorded,
    Recorder,
    RecordingError,
    TrackFile,
    compose_command,
)
from chassis.testing import FAKE_AWS, REGION, wait_until


class Participant:
    """A participant's browser: answers the recorder's offer, sends a test pattern and a tone,
    and trickles its ICE candidates the way a browser does (after the answer, then an empty
    end-of-candidates)."""

    def __init__(self, *, video: bool = True, audio: bool = True, hue: int = 64) -> None:
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        if video:
            self.pc.addTrack(TestPatternTrack(hue=hue))
        if audio:
            self.pc.addTrack(ToneTrack())

    async def join(self, recorder: Recorder, peer_id: str) -> None:
        offer = await recorder.offer(peer_id)
        assert "a=recvonly" in offer and "m=audio" in offer and "m=video" in offer
        await self.pc.setRemoteDescription(RTCSessionDescription(offer, "offer"))
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        sdp, candidates = trickled(self.pc.localDescription.sdp)
        await recorder.answer(peer_id, sdp)
        for candidate in [*candidates, {"candidate": "", "sdpMid": "0", "sdpMLineIndex": 0}]:
            await recorder.candidate(peer_id, candidate)

        async def connected() -> bool:
            return self.pc.connectionState == "connected"

        await wait_until(connected, f"{peer_id} to connect to the recorder", timeout_s=10)

    async def leave(self) -> None:
        await self.pc.close()


def trickled(sdp: str) -> tuple[str, list[dict]]:
    """The SDP without its candidates, and the candidates as a browser's onicecandidate
    gives them."""
    kept, candidates, mid, index = [], [], None, -1
    for line in sdp.splitlines():
        if line.startswith("m="):
            index += 1
        elif line.startswith("a=mid:"):
            mid = line.removeprefix("a=mid:")
        if line.startswith("a=candidate:"):
            candidates.append({"candidate": line.removeprefix("a="), "sdpMid": mid,
                               "sdpMLineIndex": index})
        elif line != "a=end-of-candidates":
            kept.append(line)
    return "\r\n".join(kept) + "\r\n", candidates


@pytest.fixture
async def s3(moto_endpoint):
    async with aioboto3.Session().client("s3", endpoint_url=moto_endpoint, region_name=REGION,
                                         **FAKE_AWS) as client:
        yield client


@pytest.fixture
async def bucket(s3) -> str:
    name = f"uploads-{uuid.uuid4().hex[:8]}"
    await s3.create_bucket(Bucket=name)
    return name


@pytest.fixture
def recorder(s3, bucket):
    """A recorder of this test's own (media id and owner are made up)."""
    made: list[Recorder] = []

    def make(**kwargs) -> Recorder:
        made.append(Recorder(media_id=uuid.uuid4().hex[:26].upper(), owner_id="user-1",
                             s3=s3, uploads_bucket=bucket, **kwargs))
        return made[-1]

    return make


async def download(s3, bucket: str, recorder: Recorder, folder: Path) -> tuple[Path, dict]:
    """The uploaded recording as a local file, and its object's HEAD."""
    key = RECORDINGS + recorder.media_id
    head = await s3.head_object(Bucket=bucket, Key=key)
    path = folder / "recording.mp4"
    path.write_bytes(await (await s3.get_object(Bucket=bucket, Key=key))["Body"].read())
    return path, head


async def probe(path: Path) -> dict:
    done = await asyncio.to_thread(
        subprocess.run, ["ffprobe", "-v", "error", "-print_format", "json", "-show_format",
                         "-show_streams", str(path)], check=True, capture_output=True)
    info = json.loads(done.stdout)
    return {"duration": float(info["format"]["duration"]),
            "streams": {s["codec_type"]: s for s in info["streams"]}}


async def halves_at(path: Path, seconds: float) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The mean (R, G, B) of the left and the right half of the frame shown at `seconds`."""
    done = await asyncio.to_thread(
        subprocess.run, ["ffmpeg", "-v", "error", "-ss", str(seconds), "-i", str(path),
                         "-frames:v", "1", "-vf", "scale=64:16", "-f", "rawvideo",
                         "-pix_fmt", "rgb24", "-"], check=True, capture_output=True)
    pixels = done.stdout
    assert len(pixels) == 64 * 16 * 3

    def mean(x0: int) -> tuple[int, ...]:
        picked = [pixels[(y * 64 + x) * 3:(y * 64 + x) * 3 + 3]
                  for y in range(16) for x in range(x0, x0 + 32)]
        return tuple(sum(p[c] for p in picked) // len(picked) for c in range(3))

    return mean(0), mean(32)


async def loudness_db(path: Path) -> float:
    """The audio's mean volume in dBFS (a 0.3 full-scale sine is about -13.5)."""
    done = await asyncio.to_thread(
        subprocess.run, ["ffmpeg", "-nostdin", "-i", str(path), "-map", "0:a",
                         "-af", "volumedetect", "-f", "null", "-"], capture_output=True)
    [line] = [x for x in done.stderr.decode().splitlines() if "mean_volume" in x]
    return float(line.split("mean_volume:")[1].split()[0])


def black(rgb: tuple[int, ...]) -> bool:
    return max(rgb) < 20


async def test_a_participant_streaming_5_s_gives_an_mp4_of_5_s_with_video_and_audio(
        recorder, s3, bucket, tmp_path):
    rec = recorder()
    alice = Participant()
    await alice.join(rec, "alice")
    await asyncio.sleep(5)

    duration = await rec.stop()

    await alice.leave()
    path, head = await download(s3, bucket, rec, tmp_path)
    assert head["ContentType"] == "video/mp4" and head["Metadata"] == {"owner": "user-1"}
    info = await probe(path)
    assert abs(info["duration"] - 5) < 0.7 and abs(duration - info["duration"]) < 0.2, info
    assert set(info["streams"]) == {"video", "audio"}
    assert (info["streams"]["video"]["width"], info["streams"]["video"]["height"]) == (320, 240)
    left, _ = await halves_at(path, 3)
    assert not black(left)
    assert -17 < await loudness_db(path) < -10  # the tone, neither lost nor boosted


async def test_two_participants_give_one_file_side_by_side_each_shown_while_there(
        recorder, s3, bucket, tmp_path):
    """Alice records from the start; Bob joins ~1 s in and leaves ~2.5 s in. His tile is
    black before and after; his audio and hers are mixed into one track."""
    rec = recorder()
    alice, bob = Participant(hue=40), Participant(hue=200)
    await alice.join(rec, "alice")
    await asyncio.sleep(1)
    await bob.join(rec, "bob")
    await asyncio.sleep(1.5)
    await rec.drop("bob")
    await bob.leave()
    await asyncio.sleep(1.5)

    duration = await rec.stop()

    await alice.leave()
    path, _ = await download(s3, bucket, rec, tmp_path)
    info = await probe(path)
    assert abs(info["duration"] - 4.0) < 0.7 and abs(duration - info["duration"]) < 0.2, info
    video = info["streams"]["video"]
    assert (video["width"], video["height"]) == (640, 240)
    assert info["streams"]["audio"]["channels"] == 1
    for seconds, bob_shown in ((0.4, False), (1.9, True), (duration - 0.3, False)):
        left, right = await halves_at(path, seconds)
        assert not black(left), seconds
        assert black(right) != bob_shown, (seconds, right)
    left, right = await halves_at(path, 1.9)
    assert left[2] < right[2]  # Bob's tint is bluer (his hue is higher)


async def test_participants_without_video_give_an_audio_recording(recorder, s3, bucket,
                                                                  tmp_path):
    rec = recorder()
    alice = Participant(video=False)
    await alice.join(rec, "alice")
    await asyncio.sleep(2)

    duration = await rec.stop()

    await alice.leave()
    path, head = await download(s3, bucket, rec, tmp_path)
    assert head["ContentType"] == "audio/mp4"
    info = await probe(path)
    assert set(info["streams"]) == {"audio"} and abs(info["duration"] - duration) < 0.2
    assert -17 < await loudness_db(path) < -10


async def test_the_recorder_stops_by_itself_at_its_limit(recorder, s3, bucket, tmp_path):
    rec = recorder(max_s=2)
    alice = Participant()
    await alice.join(rec, "alice")

    duration = await asyncio.wait_for(rec.wait(), timeout=30)

    await alice.leave()
    assert 1.8 <= duration <= 2.0
    assert await rec.stop() == duration  # stopping afterwards gives the same outcome
    path, _ = await download(s3, bucket, rec, tmp_path)
    assert abs((await probe(path))["duration"] - 2) < 0.2
    with pytest.raises(RecordingError):
        await rec.offer("bob")


async def test_a_recording_nobody_sent_anything_to_stores_nothing(recorder, s3, bucket):
    rec = recorder()
    await rec.offer("alice")  # never answered

    with pytest.raises(NothingRecorded):
        await rec.stop()

    listed = await s3.list_objects_v2(Bucket=bucket)
    assert listed.get("KeyCount", 0) == 0


async def test_signaling_mistakes_are_refused_and_stragglers_ignored(recorder):
    rec = recorder()
    with pytest.raises(LookupError):
        await rec.answer("nobody", "v=0\r\n")
    await rec.candidate("nobody", {"candidate": "candidate:1 1 udp 1 192.0.2.1 9 typ host"})
    await rec.offer("alice")
    await rec.candidate("alice", {"candidate": "", "sdpMid": "0", "sdpMLineIndex": 0})
    with pytest.raises(ValueError):
        await rec.candidate("alice", {"candidate": "garbage", "sdpMid": "0"})
    with pytest.raises(NothingRecorded):
        await rec.stop()


def test_five_participants_are_laid_out_in_a_grid_within_1280x720():
    files = [TrackFile(Path(f"/tmp/{n}-{kind}.mkv"), kind, f"p{n}", n * 1.5,
                       (1280, 720) if kind == "video" else None)
             for n in range(5) for kind in ("video", "audio")]

    argv = compose_command(files, 60.0, Path("/tmp/out.mp4"))

    graph = argv[argv.index("-filter_complex") + 1]
    assert "color=c=black:s=426x238:r=30:d=60.000" in graph
    assert "xstack=inputs=5:layout=0_0|426_0|852_0|0_238|426_238:fill=black[v]" in graph
    assert "setpts=PTS-STARTPTS+6.000/TB" in graph  # the fifth joined 6 s in
    assert "adelay=delays=288000S:all=1" in graph and "amix=inputs=5:" in graph
    assert argv[argv.index("-t") + 1] == "60.000" and argv[-1] == "/tmp/out.mp4"
