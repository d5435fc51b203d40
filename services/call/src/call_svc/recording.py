"""Recording a call: the server joins it as a receive-only participant (`recorder:<id>`) on
the replica that took the request, and the call's signaling drives it like any peer.

It offers to everyone in the call when it joins and to each newcomer (clients do not offer
to recorders: `joined` lists them apart); answers and candidates addressed to it reach it
through the hub. `DELETE .../recording` on any replica is passed to the replica that holds
the recorder; the call ending stops it too. The stored file goes to the uploads bucket, where
the post service's media worker makes it a media object owned by whoever started recording.
"""

import asyncio
import contextlib
import functools
import json
import logging
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from chassis.auth import CurrentUser
from chassis.db import DatabaseDep

from . import commands
from .actions import Calls, in_call, json_ready
from .api import CallId
from .recorder import Recorder

log = logging.getLogger("call.recording")
router = APIRouter(prefix="/api/calls", tags=["calls"])


class RecordingPeer:
    """The recorder as a participant of the call, held by the hub on this replica."""

    def __init__(self, calls: Calls, recording: dict[str, Any], recorder: Recorder) -> None:
        self.calls = calls
        self.recording = recording
        self.recorder = recorder
        self.call_id = recording["call_id"]
        self.user_id = commands.recorder_id(recording["id"])
        self._finishing: asyncio.Task[float] | None = None
        self.watcher: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    def deliver(self, kind: str, user_id: str | None, frame: bytes) -> None:
        task = asyncio.create_task(self._on(json.loads(frame)))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def begin(self, participants: list[str]) -> None:
        self.calls.hub.attach(self.call_id, self)
        await self.calls.hub.send(self.call_id, {"type": "participant_joined",
                                                 "user_id": self.user_id, "recorder": True},
                                  skip=self.user_id)
        for peer in participants:
            if not commands.is_recorder(peer):
                await self._offer(peer)

    async def _offer(self, peer: str) -> None:
        sdp = await self.recorder.offer(peer)
        await self.calls.hub.send(self.call_id, {"type": "offer", "from": self.user_id,
                                                 "sdp": sdp}, to=peer)

    async def _on(self, frame: dict[str, Any]) -> None:
        kind = frame.get("type")
        try:
            if kind == "participant_joined" and not frame.get("recorder"):
                await self._offer(frame["user_id"])
            elif kind == "answer":
                await self.recorder.answer(frame["from"], frame["sdp"])
            elif kind == "candidate":
                await self.recorder.candidate(frame["from"], frame["candidate"])
            elif kind == "participant_left":
                await self.recorder.drop(frame["user_id"])
            elif kind == "ended":
                await self.finish()
        except Exception:
            log.warning("recorder of call %s: handling %s failed", self.call_id, kind,
                        exc_info=True)

    async def finish(self) -> float:
        """Stop and store (once, however many ask); the recorder leaves the call."""
        if self._finishing is None:
            self._finishing = asyncio.create_task(self._finish())
        return await asyncio.shield(self._finishing)

    async def _finish(self) -> float:
        error, duration = None, 0.0
        try:
            duration = await self.recorder.stop()
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            log.error("recording %s of call %s failed: %s", self.recording["id"], self.call_id,
                      error)
        await self.calls.db.run(functools.partial(
            commands.finish_recording, recording_id=self.recording["id"], error=error))
        self.calls.hub.detach(self.call_id, self)
        await self.calls.hub.send(self.call_id, {"type": "participant_left",
                                                 "user_id": self.user_id})
        if error is not None:
            raise RuntimeError(error)
        return duration


def _peers(request: Request) -> dict[str, RecordingPeer]:
    return request.app.state.recorders


@router.post("/{call_id}/recording", status_code=201)
async def start_recording(call_id: CallId, user: CurrentUser, db: DatabaseDep,
                          request: Request) -> JSONResponse:
    """Record the call (a participant in it asks): the result becomes a media object."""
    calls: Calls = request.app.state.calls
    settings = calls.settings
    recording = await db.run(functools.partial(
        commands.add_recorder, call_id=call_id, user=user.id, node_id=calls.hub.node_id))
    servers, _ = await request.app.state.ice.for_user(commands.recorder_id(recording["id"]))
    recorder = Recorder(media_id=recording["media_id"], owner_id=user.id,
                        s3=request.app.state.s3, uploads_bucket=settings.uploads_bucket,
                        ice_servers=servers, max_s=settings.recording_max_s)
    peer = RecordingPeer(calls, recording, recorder)
    peers = _peers(request)
    peers[recording["id"]] = peer
    view = await db.run(lambda conn: commands.call_view(conn, call_id, None))
    await peer.begin(in_call(view))

    async def until_stored() -> None:  # by DELETE, the call's end, or the time limit
        with contextlib.suppress(Exception):
            await peer.recorder.wait()
        with contextlib.suppress(Exception):
            await peer.finish()
        peers.pop(recording["id"], None)

    peer.watcher = asyncio.create_task(until_stored())
    return JSONResponse(json_ready(_recording_view(recording)), status_code=201)


@router.delete("/{call_id}/recording")
async def stop_recording(call_id: CallId, user: CurrentUser, db: DatabaseDep,
                         request: Request) -> JSONResponse:
    """Stop recording; answers once the file is stored (the media object follows when the
    media worker has processed it: `GET /api/media/{media_id}`)."""
    recording = await db.run(functools.partial(commands.active_recording, call_id=call_id,
                                               user=user.id))
    hub = request.app.state.hub
    args = {"recording_id": recording["id"]}
    if recording["node_id"] == hub.node_id:
        result = await hub.handlers["stop_recording"](args)
    else:
        result = await hub.request(recording["node_id"], "stop_recording", args, timeout_s=120)
    stored = await db.run(lambda conn: commands.recording_of(conn, recording["id"]))
    return JSONResponse(json_ready(_recording_view(stored) | result))


def handlers(peers: dict[str, RecordingPeer]) -> dict[str, Any]:
    async def stop(args: dict[str, Any]) -> dict[str, Any]:
        peer = peers.get(args["recording_id"])
        if peer is None:
            return {}
        return {"duration_s": await peer.finish()}

    return {"stop_recording": stop}


async def stop_all(peers: dict[str, RecordingPeer]) -> None:
    """Shutting down: what was recorded so far is stored."""
    await asyncio.gather(*(peer.finish() for peer in list(peers.values())),
                         return_exceptions=True)


def _recording_view(recording: dict[str, Any]) -> dict[str, Any]:
    return {k: recording[k] for k in ("id", "call_id", "media_id", "started_by", "state",
                                      "started_at", "stopped_at", "error")
            if k in recording}
