"""Recording a call: a receive-only WebRTC peer toward each participant (aiortc), whose tracks
are written to local files while the call lasts and composed into one MP4 when it stops.

Each received track is encoded by a thread of its own into a Matroska file, so the event loop
never waits for an encoder. Frames are placed within their track by their own RTP clock, and
the track within the call by when its first frame arrived. On `stop`, ffmpeg (a subprocess)
lays the participants' videos out in a grid of at most 1280x720 (black where someone sent no
video), mixes every audio track, and cuts the result to the recorded span: from the first
frame anyone sent to the last one (at most `max_s`, where the recorder stops by itself). The
file goes to the uploads bucket as `recordings/<media_id>`, with user metadata `owner`; the
post service's media worker makes it a media object of that user (`media.ready`).
"""

import asyncio
import contextlib
import functools
import logging
import math
import queue
import shutil
import tempfile
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError
from aiortc.sdp import candidate_from_sdp

log = logging.getLogger("call.recorder")

RECORDINGS = "recordings/"  # the uploads bucket's prefix the post media worker takes them from
CANVAS_MAX = (1280, 720)
FPS = 30
AUDIO_RATE = 48_000
_MS = Fraction(1, 1000)
_SAMPLE = Fraction(1, AUDIO_RATE)
# Frames a writer may fall behind before frames are dropped: ~2 s of video (a 720p frame is
# 1.4 MB), ~5 s of audio.
_BACKLOG_MAX = {"video": 60, "audio": 250}
_GAP_SAMPLES = AUDIO_RATE // 50  # a hole in a track's audio over 20 ms is filled with silence


class RecordingError(Exception):
    """The recording could not be stored; the message says why."""


class NothingRecorded(RecordingError):
    """No participant sent anything while the recording ran."""


@dataclass(frozen=True)
class TrackFile:
    """One participant's track as written locally, and where it starts in the call."""

    path: Path
    kind: str  # audio | video
    participant: str
    offset_s: float
    size: tuple[int, int] | None = None  # a video's frame size


class _TrackWriter:
    """Encodes one received track into a Matroska file on a thread of its own."""

    def __init__(self, path: Path, kind: str, participant: str, offset_s: float) -> None:
        self.path, self.kind, self.participant, self.offset_s = path, kind, participant, offset_s
        self.size: tuple[int, int] | None = None
        self.written = self.dropped = 0
        self.failed = False
        self._frames: queue.Queue[tuple[Any, float] | None] = queue.Queue()
        self._closing = False
        self._first_pts: int | None = None
        loop = asyncio.get_running_loop()
        self._done = loop.create_future()
        threading.Thread(target=self._run, args=(loop,), name=f"recorder-{path.stem}",
                         daemon=True).start()

    @property
    def file(self) -> TrackFile:
        return TrackFile(self.path, self.kind, self.participant, self.offset_s, self.size)

    def put(self, frame: Any, arrived_s: float) -> None:
        """Queue a frame (`arrived_s` after the track's first); dropped if the writer is far
        behind, for memory must not grow with a slow disk or a starved CPU."""
        if self._closing or self.failed:
            return
        if self._frames.qsize() >= _BACKLOG_MAX[self.kind]:
            self.dropped += 1
            return
        self._frames.put_nowait((frame, arrived_s))

    async def close(self) -> None:
        """Finish the file (once) and wait for the writer without blocking the loop."""
        if not self._closing:
            self._closing = True
            self._frames.put_nowait(None)
        await asyncio.shield(self._done)

    def _run(self, loop: asyncio.AbstractEventLoop) -> None:
        try:
            with av.open(str(self.path), "w", format="matroska") as container:
                if self.kind == "video":
                    self._write_video(container)
                else:
                    self._write_audio(container)
        except Exception:
            log.exception("writing %s failed; the recording goes on without it", self.path.name)
            self.failed = True
        finally:
            if self.dropped:
                log.warning("%s: %d frames dropped, the writer fell behind", self.path.name,
                            self.dropped)
            # A writer that ends after its event loop closed has nobody left to tell.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._done.set_result, None)

    def _position_s(self, frame: Any, arrived_s: float) -> float:
        """Seconds since the track's first frame, by the sender's clock (steadier than
        arrival times) when the frame carries it."""
        if frame.pts is None or frame.time_base is None:
            return arrived_s
        if self._first_pts is None:
            self._first_pts = frame.pts
        return float((frame.pts - self._first_pts) * frame.time_base)

    def _write_video(self, container: Any) -> None:
        stream, last = None, -1
        while (item := self._frames.get()) is not None:
            frame, arrived_s = item
            if stream is None:
                self.size = _fit(frame.width, frame.height, CANVAS_MAX)
                stream = container.add_stream("libx264", rate=FPS,
                                              options={"preset": "ultrafast", "crf": "20"})
                stream.width, stream.height = self.size
                stream.pix_fmt = "yuv420p"
                stream.codec_context.time_base = _MS
            # Senders change resolution as bandwidth changes; the file keeps its first size.
            image = frame.reformat(width=self.size[0], height=self.size[1], format="yuv420p")
            last = max(round(self._position_s(frame, arrived_s) * 1000), last + 1)
            image.pts, image.time_base = last, _MS
            container.mux(stream.encode(image))
            self.written += 1
        if stream is not None:
            container.mux(stream.encode(None))

    def _write_audio(self, container: Any) -> None:
        stream = container.add_stream("aac", rate=AUDIO_RATE, layout="mono")
        stream.codec_context.bit_rate = 96_000
        mono = av.AudioResampler(format="s16", layout="mono", rate=AUDIO_RATE)
        written = 0  # samples; the file's audio is continuous, holes filled with silence
        while (item := self._frames.get()) is not None:
            frame, arrived_s = item
            due = round(self._position_s(frame, arrived_s) * AUDIO_RATE)
            while due - written > _GAP_SAMPLES:
                silence = _silence(min(due - written, AUDIO_RATE))
                silence.pts = written
                written += silence.samples
                container.mux(stream.encode(silence))
            for chunk in mono.resample(frame):
                chunk.pts, chunk.time_base = written, _SAMPLE
                written += chunk.samples
                container.mux(stream.encode(chunk))
            self.written += 1
        if self.written:
            container.mux(stream.encode(None))


def _silence(samples: int) -> Any:
    frame = av.AudioFrame(format="s16", layout="mono", samples=samples)
    frame.planes[0].update(bytes(frame.planes[0].buffer_size))
    frame.sample_rate, frame.time_base = AUDIO_RATE, _SAMPLE
    return frame


def _fit(width: int, height: int, box: tuple[int, int]) -> tuple[int, int]:
    """`width`x`height` shrunk to fit in `box` if needed, even-sided (what yuv420p needs)."""
    scale = min(1.0, box[0] / width, box[1] / height)
    return max(2, int(width * scale) // 2 * 2), max(2, int(height * scale) // 2 * 2)


def compose_command(files: Sequence[TrackFile], duration_s: float, out: Path) -> list[str]:
    """ffmpeg composing the track files into one MP4 of `duration_s`: each participant's
    video in a tile of a grid (black before, between and after their segments), every audio
    track mixed; audio alone when nobody sent video."""
    argv = ["ffmpeg", "-nostdin", "-v", "error", "-y"]
    for file in files:
        argv += ["-i", str(file.path)]
    graph: list[str] = []
    outputs: list[str] = []
    tiles: dict[str, list[int]] = {}
    for i, file in enumerate(files):
        if file.kind == "video":
            tiles.setdefault(file.participant, []).append(i)
    if tiles:
        cols = math.ceil(math.sqrt(len(tiles)))
        rows = math.ceil(len(tiles) / cols)
        widest = max(f.size[0] for f in files if f.size)
        tallest = max(f.size[1] for f in files if f.size)
        w, h = _fit(widest, tallest, (CANVAS_MAX[0] // cols, CANVAS_MAX[1] // rows))
        labels = []
        for n, segments in enumerate(tiles.values()):
            label = f"bg{n}"
            graph.append(f"color=c=black:s={w}x{h}:r={FPS}:d={duration_s:.3f}[{label}]")
            for i in segments:
                graph.append(
                    f"[{i}:v]setpts=PTS-STARTPTS+{files[i].offset_s:.3f}/TB,"
                    f"scale={w}:{h}:force_original_aspect_ratio=decrease:force_divisible_by=2,"
                    f"pad={w}:{h}:(ow-iw)/2:(oh-ih)/2,setsar=1[s{i}]")
                graph.append(f"[{label}][s{i}]overlay=eof_action=pass[t{i}]")
                label = f"t{i}"
            labels.append(label)
        if len(labels) > 1:
            layout = "|".join(f"{n % cols * w}_{n // cols * h}" for n in range(len(labels)))
            graph.append("".join(f"[{label}]" for label in labels)
                         + f"xstack=inputs={len(labels)}:layout={layout}:fill=black[v]")
        else:
            graph.append(f"[{labels[0]}]null[v]")
        outputs += ["-map", "[v]", "-c:v", "libx264", "-preset", "veryfast", "-crf", "26",
                    "-maxrate", "1500k", "-bufsize", "3000k", "-pix_fmt", "yuv420p"]
    voices = [i for i, file in enumerate(files) if file.kind == "audio"]
    if voices:
        for i in voices:
            delay = round(files[i].offset_s * AUDIO_RATE)
            graph.append(f"[{i}:a]aformat=sample_rates={AUDIO_RATE}:channel_layouts=mono,"
                         f"adelay=delays={delay}S:all=1[a{i}]")
        # No normalising: people mostly talk in turn, and amix's would make each quieter;
        # the limiter keeps voices that overlap from clipping.
        graph.append("".join(f"[a{i}]" for i in voices)
                     + f"amix=inputs={len(voices)}:duration=longest:normalize=0,"
                     "alimiter=limit=0.95:level=disabled,apad[a]")
        outputs += ["-map", "[a]", "-c:a", "aac", "-b:a", "96k"]
    return [*argv, "-filter_complex", ";".join(graph), *outputs, "-t", f"{duration_s:.3f}",
            "-movflags", "+faststart", "-f", "mp4", str(out)]


async def run_ffmpeg(argv: list[str], timeout_s: float) -> None:
    """Run ffmpeg as a subprocess (the loop goes on meanwhile); killed on timeout or when the
    caller is cancelled."""
    process = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE)
    try:
        _, stderr = await asyncio.wait_for(process.communicate(), timeout_s)
    except BaseException as exc:
        if process.returncode is None:
            process.kill()
            await process.wait()
        if isinstance(exc, TimeoutError):
            raise RecordingError(f"composing took over {timeout_s:.0f} s") from exc
        raise
    if process.returncode != 0:
        raise RecordingError(f"ffmpeg exited with {process.returncode}: "
                             f"{stderr[-500:].decode(errors='replace').strip()}")


def _ice_server(server: RTCIceServer | Mapping[str, Any]) -> RTCIceServer:
    if isinstance(server, RTCIceServer):
        return server
    return RTCIceServer(urls=server["urls"], username=server.get("username"),
                        credential=server.get("credential"))


class Recorder:
    """Records one call (see the module's docstring): one connection per participant, driven
    by the call's signaling; `stop` stores the result. One event loop; not thread-safe."""

    def __init__(self, *, media_id: str, owner_id: str, s3: Any, uploads_bucket: str,
                 ice_servers: Iterable[RTCIceServer | Mapping[str, Any]] = (),
                 max_s: float = 4 * 3600.0) -> None:
        self.media_id, self.owner_id = media_id, owner_id
        self._s3, self._bucket = s3, uploads_bucket
        # Explicit, even when empty: aiortc's default would quietly use a public STUN server.
        self._config = RTCConfiguration(iceServers=[_ice_server(s) for s in ice_servers])
        self._max_s = max_s
        self._dir: Path | None = None
        self._peers: dict[str, RTCPeerConnection] = {}
        self._receivers: set[asyncio.Task[None]] = set()
        self._writers: list[_TrackWriter] = []
        self._started: float | None = None  # loop time of the first frame anyone sent
        self._last = 0.0  # loop time of the latest frame
        self._limit: asyncio.TimerHandle | None = None
        self._stopping: asyncio.Task[float] | None = None
        self._stop_begun = asyncio.Event()

    async def offer(self, peer_id: str) -> str:
        """A new receive-only connection (audio and video) toward a participant, replacing
        any earlier one; returns its offer SDP with every candidate in it."""
        if self._stopping is not None:
            raise RecordingError("the recording has stopped")
        await self.drop(peer_id)
        pc = RTCPeerConnection(self._config)
        self._peers[peer_id] = pc
        for kind in ("audio", "video"):
            pc.addTransceiver(kind, direction="recvonly")
        pc.on("track", functools.partial(self._on_track, peer_id))
        await pc.setLocalDescription(await pc.createOffer())
        if self._stopping is not None:  # stopped while gathering: the connection is not needed
            await pc.close()
            raise RecordingError("the recording has stopped")
        return pc.localDescription.sdp

    async def answer(self, peer_id: str, sdp: str) -> None:
        """Apply a participant's answer to the recorder's offer."""
        pc = self._peers.get(peer_id)
        if pc is None:
            raise LookupError(f"no offer was made to {peer_id}")
        await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="answer"))

    async def candidate(self, peer_id: str, candidate: Mapping[str, Any]) -> None:
        """Add a participant's trickled ICE candidate ({candidate, sdpMid, sdpMLineIndex}).
        The empty end-of-candidates, and stragglers after the participant left, are skipped."""
        line = (candidate.get("candidate") or "").strip().removeprefix("a=")
        pc = self._peers.get(peer_id)
        if not line or pc is None:
            return
        kind, _, value = line.partition(":")
        try:
            if kind != "candidate":
                raise ValueError("not a candidate line")
            ice = candidate_from_sdp(value)
        except (ValueError, IndexError) as exc:
            raise ValueError(f"unreadable ICE candidate {line[:100]!r}") from exc
        ice.sdpMid = candidate.get("sdpMid")
        ice.sdpMLineIndex = candidate.get("sdpMLineIndex")
        await pc.addIceCandidate(ice)

    async def drop(self, peer_id: str) -> None:
        """That participant left: stop receiving from them (what they sent stays)."""
        pc = self._peers.pop(peer_id, None)
        if pc is not None:
            await pc.close()

    async def stop(self) -> float:
        """Stop, compose and upload; returns the recording's duration in seconds. Stopping
        again, or after the recorder stopped itself at `max_s`, gives the same outcome."""
        return await asyncio.shield(self._begin_stop())

    async def wait(self) -> float:
        """Wait until the recording is stored, by `stop` or by itself at `max_s`; returns
        its duration (or raises what storing it raised)."""
        await self._stop_begun.wait()
        return await asyncio.shield(self._begin_stop())

    def _begin_stop(self) -> "asyncio.Task[float]":
        if self._stopping is None:
            self._stop_begun.set()
            self._stopping = asyncio.create_task(self._store())
            self._stopping.add_done_callback(self._report)
        return self._stopping

    def _report(self, task: "asyncio.Task[float]") -> None:
        if task.cancelled():
            log.warning("recording %s: storing was cancelled", self.media_id)
        elif task.exception() is not None:
            log.error("recording %s failed: %s", self.media_id, task.exception())
        else:
            log.info("recording %s stored: %.1f s", self.media_id, task.result())

    def _on_track(self, peer_id: str, track: MediaStreamTrack) -> None:
        if self._stopping is None:
            task = asyncio.create_task(self._receive(peer_id, track))
            self._receivers.add(task)
            task.add_done_callback(self._receivers.discard)

    async def _receive(self, peer_id: str, track: MediaStreamTrack) -> None:
        """Hand a track's frames to its writer until the track ends or the recording stops."""
        loop = asyncio.get_running_loop()
        writer: _TrackWriter | None = None
        first = 0.0
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                break
            now = loop.time()
            if self._started is None:
                self._started = now
                self._limit = loop.call_later(self._max_s, self._reach_limit)
            if self._stopping is not None or now - self._started > self._max_s:
                break
            if writer is None:
                if self._dir is None:
                    self._dir = Path(tempfile.mkdtemp(prefix=f"recording-{self.media_id}-"))
                name = f"{len(self._writers):03d}-{track.kind}.mkv"
                writer = _TrackWriter(self._dir / name, track.kind, peer_id, now - self._started)
                self._writers.append(writer)
                first = now
            writer.put(frame, now - first)
            self._last = now
        if writer is not None:
            await writer.close()

    def _reach_limit(self) -> None:
        log.info("recording %s reached its limit of %.0f s; stopping", self.media_id,
                 self._max_s)
        self._begin_stop()

    async def _store(self) -> float:
        if self._limit is not None:
            self._limit.cancel()
        peers, self._peers = list(self._peers.values()), {}
        await asyncio.gather(*(pc.close() for pc in peers), return_exceptions=True)
        if self._receivers:  # their tracks ended with the connections
            _, late = await asyncio.wait(set(self._receivers), timeout=10)
            for task in late:
                task.cancel()
        await asyncio.gather(*(writer.close() for writer in self._writers))
        try:
            files = [w.file for w in self._writers if w.written and not w.failed]
            if self._started is None or not files:
                raise NothingRecorded("no participant sent anything")
            duration = round(max(min(self._last - self._started, self._max_s), 1 / FPS), 3)
            video = any(f.kind == "video" for f in files)
            out = self._dir / "recording.mp4"
            await run_ffmpeg(compose_command(files, duration, out),
                             timeout_s=max(300.0, 2 * duration))
            await self._s3.upload_file(
                str(out), self._bucket, RECORDINGS + self.media_id, ExtraArgs={
                    "ContentType": "video/mp4" if video else "audio/mp4",
                    "Metadata": {"owner": self.owner_id}})
            return duration
        finally:
            if self._dir is not None:
                await asyncio.to_thread(shutil.rmtree, self._dir, True)
