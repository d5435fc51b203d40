"""Live streams: WHIP publishers in; HLS in S3 and WHEP viewers out (aiortc + PyAV).

A publisher's tracks go through one MediaRelay per stream. The HLS packager is one of its
consumers and every WHEP viewer another, so the publisher sends once however many watch.
PyAV encodes and muxes on one thread per stream, away from the event loop. Each finished
segment is uploaded before the playlist that names it, so a player never asks for a segment
that is not there yet; the event playlist keeps every segment, so the stream stays watchable
as video on demand after #EXT-X-ENDLIST.
"""

import asyncio
import fractions
import logging
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import av
from aiortc import (
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCRtpReceiver,
    RTCSessionDescription,
)
from aiortc.contrib.media import MediaRelay
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.sdp import SessionDescription
from av.video.frame import PictureType

from chassis.problems import Problem

from .sdp import check_sdp
from .settings import CallSettings

log = logging.getLogger("call_svc.studio")

PLAYLIST = "index.m3u8"
PLAYLIST_TYPE = "application/vnd.apple.mpegurl"
SEGMENT_TYPE = "video/mp2t"
PLAYLIST_CACHE = "public, max-age=1"  # a live playlist changes every segment
SEGMENT_CACHE = "public, max-age=31536000, immutable"
VIDEO_TIME_BASE = fractions.Fraction(1, 90_000)  # MPEG-TS counts in 90 kHz ticks
AUDIO_RATE = 48_000
AUDIO_TIME_BASE = fractions.Fraction(1, AUDIO_RATE)
AUDIO_RESYNC_S = 0.25  # audio this far behind the clock (lost packets) jumps ahead
_STREAM_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")  # it becomes part of S3 keys and URLs

Callback = Callable[[str], Awaitable[None]]


# The media bucket serves its `media/` prefix at MEDIA_BASE_URL (through the gateway or the
# CDN), as the post service's variants are.
SERVED_PREFIX = "media/"


def hls_url(settings: CallSettings, stream_id: str) -> str:
    """Where players find a stream's HLS playlist, while live and afterwards."""
    return f"{settings.media_base_url}/live/{stream_id}/{PLAYLIST}"


@dataclass
class Published:
    """Segments the muxer finished since the last update, and the playlist naming them."""

    segments: list[Path]
    playlist: bytes


class HlsPackager:
    """Encodes one stream's frames to H.264/AAC HLS files. Call it from one thread only."""

    def __init__(self, directory: Path, segment_s: float, kinds: set[str],
                 publish: Callable[[Published], None]) -> None:
        self._dir = directory
        self._segment_s = segment_s
        self._segment_ticks = round(segment_s / VIDEO_TIME_BASE)
        self._lead = "video" if "video" in kinds else "audio"
        self._kinds = kinds
        self._publish = publish
        self._container: Any = None
        self._video: Any = None
        self._audio: Any = None
        self._resampler = av.AudioResampler(format="fltp", layout="stereo", rate=AUDIO_RATE)
        self._t0 = 0.0
        self._last_video_pts = -1
        self._next_key = 0
        self._next_audio_pts: int | None = None
        self._seen: tuple[int, int] | None = None
        self._listed = 0

    def write(self, kind: str, frame: Any, arrived: float) -> None:
        """Encode a frame that arrived at `arrived` (time.monotonic()), timed by arrival."""
        if self._container is None:
            if kind != self._lead:
                return  # the video's size is needed to start: audio before it is dropped
            self._open(frame, arrived)
        if kind == "video":
            self._write_video(frame, arrived)
        else:
            self._write_audio(frame, arrived)
        self._collect()

    def finish(self) -> None:
        """Flush the encoders and close the playlist with #EXT-X-ENDLIST."""
        if self._container is None:
            return
        for stream in (self._video, self._audio):
            if stream is not None:
                self._mux(stream.encode(None))
        self._container.close()
        self._container = None
        self._collect()

    def _open(self, frame: Any, arrived: float) -> None:
        self._t0 = arrived
        self._container = av.open(str(self._dir / PLAYLIST), mode="w", format="hls", options={
            "hls_time": str(self._segment_s),
            "hls_playlist_type": "event",  # every segment stays listed
            "hls_list_size": "0",
            "hls_flags": "temp_file+independent_segments",  # files appear whole or not at all
            "hls_segment_filename": str(self._dir / "seg%05d.ts"),
        })
        if "video" in self._kinds:
            self._video = self._container.add_stream("libx264", rate=30, options={
                "preset": "ultrafast", "tune": "zerolatency", "forced-idr": "1",
                "sc_threshold": "0", "g": "100000",  # keyframes only where _write_video asks
            })
            self._video.width, self._video.height = frame.width & ~1, frame.height & ~1
            self._video.pix_fmt = "nv12"
            self._video.codec_context.time_base = VIDEO_TIME_BASE
        if "audio" in self._kinds:
            self._audio = self._container.add_stream("aac", rate=AUDIO_RATE)
            self._audio.layout = "stereo"

    def _write_video(self, frame: Any, arrived: float) -> None:
        pts = round((arrived - self._t0) / VIDEO_TIME_BASE)
        if pts <= self._last_video_pts:
            return
        self._last_video_pts = pts
        # reformat to nv12 always makes a new frame: the relay hands this one to the viewers'
        # encoders too, which set its pts and picture type from other threads.
        own = frame.reformat(width=self._video.width, height=self._video.height, format="nv12")
        own.pts, own.time_base = pts, VIDEO_TIME_BASE
        if pts >= self._next_key:  # a keyframe every segment_s: the HLS muxer cuts there
            own.pict_type = PictureType.I
            self._next_key = (pts // self._segment_ticks + 1) * self._segment_ticks
        self._mux(self._video.encode(own))

    def _write_audio(self, frame: Any, arrived: float) -> None:
        due = round((arrived - self._t0) * AUDIO_RATE)
        for own in self._resampler.resample(frame):  # new frames: fltp, 48 kHz, stereo
            pts = self._next_audio_pts
            if pts is None or due - pts > AUDIO_RESYNC_S * AUDIO_RATE:
                pts = max(due, pts or 0)
            own.pts, own.time_base = pts, AUDIO_TIME_BASE
            self._next_audio_pts = pts + own.samples
            self._mux(self._audio.encode(own))

    def _mux(self, packets: list[Any]) -> None:
        for packet in packets:
            self._container.mux(packet)

    def _collect(self) -> None:
        """Publish the playlist whenever the muxer rewrote it (once per finished segment)."""
        playlist = self._dir / PLAYLIST
        try:
            stat = playlist.stat()
        except FileNotFoundError:
            return
        if (stat.st_mtime_ns, stat.st_size) == self._seen:
            return
        self._seen = (stat.st_mtime_ns, stat.st_size)
        text = playlist.read_bytes()
        names = [line for line in text.decode().splitlines() if line and line[0] != "#"]
        self._publish(Published([self._dir / name for name in names[self._listed:]], text))
        self._listed = len(names)


@dataclass(eq=False)
class _Stream:
    """One live stream held by this replica."""

    id: str
    pc: RTCPeerConnection
    directory: Path
    relay: MediaRelay = field(default_factory=MediaRelay)
    tracks: list[MediaStreamTrack] = field(default_factory=list)
    viewers: dict[str, RTCPeerConnection] = field(default_factory=dict)
    encoder: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(1, thread_name_prefix="hls"))
    uploads: asyncio.Queue[Published | None] = field(default_factory=asyncio.Queue)
    packager: HlsPackager | None = None
    pumps: list[asyncio.Task[None]] = field(default_factory=list)
    uploader: asyncio.Task[None] | None = None
    started: bool = False
    finishing: asyncio.Task[None] | None = None

    @property
    def ending(self) -> bool:
        return self.finishing is not None


class Studio:
    """The live streams this replica ingests over WHIP and serves to WHEP viewers.

    on_started(stream_id) runs when a stream's first frame arrives; on_ended(stream_id) once
    for every accepted ingest, after its final playlist (with #EXT-X-ENDLIST) is in S3.
    """

    def __init__(self, s3: Any, settings: CallSettings, *, on_started: Callback | None = None,
                 on_ended: Callback | None = None,
                 ice_servers: list[RTCIceServer] | None = None) -> None:
        self._s3 = s3
        self._settings = settings
        self._on_started = on_started
        self._on_ended = on_ended
        self._ice_servers = list(ice_servers or [])
        self._streams: dict[str, _Stream] = {}

    def holds(self, stream_id: str) -> bool:
        """Whether the stream is live on this replica (and so can be watched here)."""
        stream = self._streams.get(stream_id)
        return stream is not None and not stream.ending

    def viewer_count(self, stream_id: str) -> int:
        """How many WHEP viewers the stream has here."""
        stream = self._streams.get(stream_id)
        return len(stream.viewers) if stream else 0

    async def ingest(self, stream_id: str, offer_sdp: str) -> str:
        """Take a WHIP publisher's offer; returns the answer. Its media becomes HLS in S3."""
        if not _STREAM_ID.fullmatch(stream_id):
            raise ValueError(f"unusable stream id {stream_id!r}")
        offer = check_sdp(offer_sdp, self._settings.sdp_max_bytes, status=400)
        if not _kinds(offer, ("sendrecv", "sendonly")):
            raise _bad_sdp("no audio or video the server can receive")
        if stream_id in self._streams:
            raise Problem(409, f"stream {stream_id} is already live")
        if len(self._streams) >= self._settings.live_streams_max:
            raise Problem(503, "this server takes no more live streams now")
        pc = self._peer()
        stream = _Stream(stream_id, pc, Path(tempfile.mkdtemp(prefix="asyncsns-live-")))
        self._streams[stream_id] = stream
        pc.on("track", stream.tracks.append)  # emitted inside setRemoteDescription
        try:
            answer = await _answer(pc, offer_sdp)
            if not stream.tracks:
                raise _bad_sdp("no audio or video could be negotiated")
        except BaseException:
            del self._streams[stream_id]
            await pc.close()
            shutil.rmtree(stream.directory, ignore_errors=True)
            raise
        loop = asyncio.get_running_loop()
        stream.packager = HlsPackager(
            stream.directory, self._settings.hls_segment_s, {t.kind for t in stream.tracks},
            lambda update: loop.call_soon_threadsafe(stream.uploads.put_nowait, update))
        stream.uploader = asyncio.create_task(self._upload(stream))

        @pc.on("connectionstatechange")
        async def _on_state() -> None:
            if pc.connectionState == "connected" and not stream.ending:
                self._start_pumps(stream)
            elif pc.connectionState in ("failed", "closed"):
                await self._end(stream)

        return answer

    async def watch(self, stream_id: str, offer_sdp: str) -> tuple[str, str]:
        """Take a WHEP viewer's offer; returns (viewer id, answer) for the stream's tracks."""
        stream = self._streams.get(stream_id)
        if stream is None or stream.ending:
            raise Problem(404, f"stream {stream_id} is not live here")
        offer = check_sdp(offer_sdp, self._settings.sdp_max_bytes, status=400)
        kinds = _kinds(offer, ("sendrecv", "recvonly")) & {t.kind for t in stream.tracks}
        if not kinds:
            raise _bad_sdp("no audio or video to receive that the stream has")
        if len(stream.viewers) >= self._settings.whep_viewers_max:
            raise Problem(503, f"stream {stream_id} has all the WebRTC viewers it can take; "
                               "watch it over HLS")
        viewer_id = uuid.uuid4().hex
        pc = self._peer()
        stream.viewers[viewer_id] = pc  # counts against the limit while negotiating
        # unbuffered: a slow viewer skips to the newest frame instead of queueing them all
        tracks = [stream.relay.subscribe(t, buffered=False) for t in stream.tracks
                  if t.kind in kinds]
        try:
            answer = await _answer(pc, offer_sdp, tracks)
        except BaseException:
            stream.viewers.pop(viewer_id, None)
            await pc.close()
            raise

        @pc.on("connectionstatechange")
        async def _viewer_gone() -> None:
            if pc.connectionState in ("failed", "closed"):
                await self._drop(stream, viewer_id)

        return viewer_id, answer

    async def leave(self, stream_id: str, viewer_id: str) -> None:
        """A WHEP viewer is done (DELETE on its resource)."""
        stream = self._streams.get(stream_id)
        if stream is not None:
            await self._drop(stream, viewer_id)

    async def end(self, stream_id: str) -> None:
        """End a live stream: the publisher is gone or deleted its WHIP resource."""
        stream = self._streams.get(stream_id)
        if stream is not None:
            await self._end(stream)

    async def close(self) -> None:
        """Shut down: end every stream, finishing its HLS."""
        await asyncio.gather(*(self._end(s) for s in list(self._streams.values())))

    def _peer(self) -> RTCPeerConnection:
        return RTCPeerConnection(RTCConfiguration(iceServers=self._ice_servers))

    async def _drop(self, stream: _Stream, viewer_id: str) -> None:
        pc = stream.viewers.pop(viewer_id, None)
        if pc is not None:
            await pc.close()

    def _start_pumps(self, stream: _Stream) -> None:
        """Start reading the publisher's tracks, once it is connected: a track that never
        started receiving never ends either, and would leave the relay's reader hanging."""
        if not stream.pumps:
            stream.pumps = [asyncio.create_task(self._pump(stream, t)) for t in stream.tracks]

    async def _pump(self, stream: _Stream, track: MediaStreamTrack) -> None:
        """Feed one of the publisher's tracks to the packager's thread."""
        # Video unbuffered: when encoding falls behind it skips to the newest frame.
        source = stream.relay.subscribe(track, buffered=track.kind == "audio")
        loop = asyncio.get_running_loop()
        while True:
            try:
                frame = await source.recv()
            except MediaStreamError:
                return
            arrived = time.monotonic()
            if not stream.started:
                stream.started = True
                await _notify(self._on_started, stream.id)
            try:
                await loop.run_in_executor(
                    stream.encoder, stream.packager.write, track.kind, frame, arrived)
            except Exception:
                log.exception("stream %s: packaging %s failed", stream.id, track.kind)
                return

    async def _upload(self, stream: _Stream) -> None:
        """Upload segments, then the playlist naming them, in the order the muxer made them."""
        prefix = f"{SERVED_PREFIX}live/{stream.id}/"
        waiting: list[Path] = []
        while (update := await stream.uploads.get()) is not None:
            waiting += update.segments
            try:
                while waiting:
                    body = await asyncio.to_thread(waiting[0].read_bytes)
                    await self._put(prefix + waiting[0].name, body, SEGMENT_TYPE, SEGMENT_CACHE)
                    waiting.pop(0).unlink()
                await self._put(prefix + PLAYLIST, update.playlist, PLAYLIST_TYPE,
                                PLAYLIST_CACHE)
            except Exception:  # botocore has retried; the next update tries these again
                log.exception("stream %s: upload failed", stream.id)

    async def _put(self, key: str, body: bytes, content_type: str, cache: str) -> None:
        await self._s3.put_object(Bucket=self._settings.media_bucket, Key=key, Body=body,
                                  ContentType=content_type, CacheControl=cache)

    async def _end(self, stream: _Stream) -> None:
        """End the stream once; every caller (DELETE, hang-up, shutdown) waits for its HLS."""
        if stream.finishing is None:
            stream.finishing = asyncio.create_task(self._finish(stream))
        await asyncio.shield(stream.finishing)  # a cancelled caller leaves the HLS finishing

    async def _finish(self, stream: _Stream) -> None:
        """Close the stream's peers, finish and upload its HLS, then tell the owner."""
        try:
            await asyncio.gather(*(pc.close() for pc in stream.viewers.values()))
            stream.viewers.clear()
            await stream.pc.close()
            for pump in stream.pumps:
                pump.cancel()
            await asyncio.gather(*stream.pumps, return_exceptions=True)
            if stream.packager is not None:
                try:
                    await asyncio.get_running_loop().run_in_executor(
                        stream.encoder, stream.packager.finish)
                except Exception:
                    log.exception("stream %s: finishing the HLS failed", stream.id)
            if stream.uploader is not None:
                stream.uploads.put_nowait(None)
                await stream.uploader
        finally:
            stream.encoder.shutdown(wait=False)
            await asyncio.to_thread(shutil.rmtree, stream.directory, True)
            if self._streams.get(stream.id) is stream:
                del self._streams[stream.id]
            await _notify(self._on_ended, stream.id)


async def _answer(pc: RTCPeerConnection, offer_sdp: str,
                  tracks: Sequence[MediaStreamTrack] = ()) -> str:
    """Answer an offer, sending `tracks`; aiortc gathers every candidate first (no trickle)."""
    try:
        await pc.setRemoteDescription(RTCSessionDescription(offer_sdp, "offer"))
    except Exception as exc:  # aiortc's many ways of refusing an offer it cannot use
        raise _bad_sdp(f"the offer cannot be used: {exc}") from exc
    for track in tracks:
        pc.addTrack(track)  # takes the offer's transceiver of its kind
    await pc.setLocalDescription(await pc.createAnswer())
    return pc.localDescription.sdp


def _kinds(offer: SessionDescription, directions: tuple[str, ...]) -> set[str]:
    """Kinds of media the offer has in one of `directions` with a codec aiortc handles."""
    kinds = set()
    for media in offer.media:
        direction = media.direction or "sendrecv"
        if media.kind not in ("audio", "video") or direction not in directions:
            continue
        ours = {c.mimeType.lower() for c in RTCRtpReceiver.getCapabilities(media.kind).codecs}
        if any(c.mimeType.lower() in ours for c in media.rtp.codecs if c.name != "rtx"):
            kinds.add(media.kind)
    return kinds


def _bad_sdp(message: str) -> Problem:
    return Problem(400, f"sdp: {message}", errors=[{"field": "sdp", "message": message}])


async def _notify(callback: Callback | None, stream_id: str) -> None:
    if callback is None:
        return
    try:
        await callback(stream_id)
    except Exception:  # the stream goes on; the callback's owner logs its own failures too
        log.exception("stream %s: callback %s failed", stream_id, callback)
