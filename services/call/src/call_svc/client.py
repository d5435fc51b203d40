"""A call participant in Python: the signaling protocol of /ws/calls and a peer-to-peer mesh of
aiortc connections. Tests and benchmarks use it; so can a bot that joins calls.

It follows the protocol's mesh rule: on `joined`, it offers to everyone already in the call
except recorders; it answers every offer it receives. aiortc gathers its candidates before it
sends a description (no trickle), and it adds the candidates a browser trickles.
"""

import asyncio
import contextlib
import json
import logging
from collections import Counter
from collections.abc import Callable
from typing import Any

import websockets
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.contrib.media import MediaRelay

from .sdp import check_candidate

log = logging.getLogger("call.client")


def rtc_configuration(ice_servers: list[dict[str, Any]]) -> RTCConfiguration:
    """The API's `ice_servers` as aiortc's configuration (never aiortc's public default)."""
    return RTCConfiguration(iceServers=[
        RTCIceServer(urls=s["urls"], username=s.get("username"), credential=s.get("credential"))
        for s in ice_servers])


class CallPeer:
    """One participant: its socket, its connection to each other participant, and what it
    receives from each (frames counted per kind)."""

    def __init__(self, url: str, token: str, *, tracks: list[MediaStreamTrack] = (),
                 ice_servers: list[dict[str, Any]] = (),
                 on_frame: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.url = url
        self.token = token
        self.config = rtc_configuration(list(ice_servers))
        self.relay = MediaRelay()
        self.tracks = list(tracks)
        self.pcs: dict[str, RTCPeerConnection] = {}
        self.connected: dict[str, asyncio.Event] = {}
        self.received: dict[str, Counter[str]] = {}
        self.frames: list[dict[str, Any]] = []
        self.on_frame = on_frame
        self.ended = asyncio.Event()
        self._ws: Any = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._joined = asyncio.Event()

    async def join(self) -> dict[str, Any]:
        """Connect, authenticate, join; returns the `joined` frame."""
        self._ws = await websockets.connect(self.url, max_size=1 << 20)
        await self._send({"type": "auth", "token": self.token})
        self._spawn(self._read())
        await self._send({"type": "join"})
        await asyncio.wait_for(self._joined.wait(), 10)
        return next(f for f in self.frames if f["type"] == "joined")

    async def leave(self) -> None:
        with contextlib.suppress(Exception):
            await self._send({"type": "leave"})
        await self.close()

    async def close(self) -> None:
        for pc in list(self.pcs.values()):
            await pc.close()
        if self._ws is not None:
            await self._ws.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def link(self, peer_id: str) -> asyncio.Event:
        """Set once the connection with `peer_id` is ICE-connected."""
        return self.connected.setdefault(peer_id, asyncio.Event())

    # --- signaling --------------------------------------------------------------------------

    async def _send(self, frame: dict[str, Any]) -> None:
        await self._ws.send(json.dumps(frame))

    async def _read(self) -> None:
        with contextlib.suppress(websockets.ConnectionClosed):
            async for raw in self._ws:
                frame = json.loads(raw)
                self.frames.append(frame)
                if self.on_frame:
                    self.on_frame(frame)
                try:
                    await self._on(frame)
                except Exception:
                    log.exception("handling %s failed", frame.get("type"))
        self.ended.set()

    async def _on(self, frame: dict[str, Any]) -> None:
        kind = frame["type"]
        if kind == "joined":
            self._joined.set()
            for peer_id in frame["participants"]:
                if peer_id not in frame.get("recorders", ()):
                    self._spawn(self._offer(peer_id))
        elif kind == "offer":
            pc = self._connection(frame["from"])
            await pc.setRemoteDescription(RTCSessionDescription(frame["sdp"], "offer"))
            self._add_tracks(pc)
            await pc.setLocalDescription(await pc.createAnswer())
            await self._send({"type": "answer", "to": frame["from"],
                              "sdp": pc.localDescription.sdp})
        elif kind == "answer" and frame["from"] in self.pcs:
            await self.pcs[frame["from"]].setRemoteDescription(
                RTCSessionDescription(frame["sdp"], "answer"))
        elif kind == "candidate" and frame["from"] in self.pcs:
            candidate = check_candidate(frame["candidate"])
            if candidate is not None:
                await self.pcs[frame["from"]].addIceCandidate(candidate)
        elif kind == "participant_left" and frame["user_id"] in self.pcs:
            await self.pcs.pop(frame["user_id"]).close()
        elif kind == "ended":
            self.ended.set()

    async def _offer(self, peer_id: str) -> None:
        pc = self._connection(peer_id)
        self._add_tracks(pc)
        await pc.setLocalDescription(await pc.createOffer())
        await self._send({"type": "offer", "to": peer_id, "sdp": pc.localDescription.sdp})

    # --- media ------------------------------------------------------------------------------

    def _connection(self, peer_id: str) -> RTCPeerConnection:
        if peer_id in self.pcs:
            return self.pcs[peer_id]
        pc = self.pcs[peer_id] = RTCPeerConnection(self.config)
        connected = self.link(peer_id)
        counts = self.received.setdefault(peer_id, Counter())

        @pc.on("iceconnectionstatechange")
        def _state() -> None:
            if pc.iceConnectionState in ("connected", "completed"):
                connected.set()

        @pc.on("track")
        def _track(track: MediaStreamTrack) -> None:
            self._spawn(self._consume(track, counts))

        return pc

    def _add_tracks(self, pc: RTCPeerConnection) -> None:
        for track in self.tracks:
            pc.addTrack(self.relay.subscribe(track, buffered=False))

    async def _consume(self, track: MediaStreamTrack, counts: Counter[str]) -> None:
        with contextlib.suppress(Exception):
            while True:
                await track.recv()
                counts[track.kind] += 1

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
