"""Signaling sessions at /ws/calls/{call_id}.

The first frame must be `{"type": "auth", "token": ...}` within `ws_auth_timeout_s`; a bad
token closes with 4401, a call the user is not invited to with 4404 (after an `error` frame),
a browser Origin not allowed with 4403, a frame over `ws_frame_max_bytes` with 1009. Then:

- `join`: the user is in the call; the answer is `joined {participants, call}` with everyone
  already in it, and they hear `participant_joined {user_id}`. The one who joins sends an
  offer to each participant already there (except recorders, which offer to newcomers
  themselves); the others answer.
- `offer|answer {to, sdp}`, `candidate {to, candidate}` go to the named participant, on
  whatever replica holds them, as `offer|answer|candidate {from, ...}`. Both ends must be in
  the call; a description must parse as WebRTC SDP (see `sdp`).
- `leave` (or closing the socket while joined), `decline`; everyone hears
  `participant_left`, `declined`, and `ended {reason}` when the call is over.
Bad frames get an `error` frame naming the problem; the session goes on.
"""

import asyncio
import contextlib
import functools
import logging
from typing import Any

from fastapi import WebSocket
from starlette.websockets import WebSocketState

from chassis.auth import User
from chassis.problems import Problem, invalid
from chassis.sockets import (
    SendQueue,
    accept,
    error_frame,
    incoming,
    problem_frame,
)

from . import commands
from .actions import Calls, in_call, json_ready
from .hub import encode
from .sdp import check_candidate, check_sdp

log = logging.getLogger("call.ws")

NOT_FOUND, TOO_SLOW, REPLACED = 4404, 4408, 4409
ECHO = ("to",)  # what an error frame repeats of the frame it answers
PREFIX = "/ws/calls/"
_STOP = object()


class Session:
    """One participant's connection: a bounded queue of frames and the task writing them."""

    def __init__(self, ws: WebSocket, user: User, call_id: str, calls: Calls) -> None:
        self.ws = ws
        self.user_id = user.id
        self.call_id = call_id
        self.calls = calls
        self.joined = False
        # Who is in the call as this session has heard (`joined`, then participant_joined and
        # _left frames): a relay to one of them needs no trip to the store.
        self.members: set[str] = set()
        self.closing: int | None = None
        self.queue: SendQueue = SendQueue(calls.settings.ws_send_queue_max)

    def send(self, frame: dict[str, Any]) -> None:
        """A frame of this session's own (an answer to one of the client's)."""
        self.deliver(frame["type"], frame.get("user_id"), encode(frame).encode())

    def deliver(self, kind: str, user_id: str | None, frame: bytes) -> None:
        if self.closing is not None:
            return
        if kind == "participant_joined":
            self.members.add(user_id)
        elif kind == "participant_left":
            self.members.discard(user_id)
        try:
            self.queue.put_nowait((kind, frame))
        except asyncio.QueueFull:
            log.info("dropping %s's signaling session: it does not keep up", self.user_id)
            self.stop(TOO_SLOW)

    def stop(self, code: int) -> None:
        """Close once the frames already queued are written (the `ended` frame among them)."""
        if self.closing is None:
            self.closing = code
            with contextlib.suppress(asyncio.QueueFull):
                self.queue.put_nowait(_STOP)

    async def write(self) -> None:
        while True:
            item = await self.queue.get()
            if item is _STOP:
                break
            kind, frame = item
            await self.ws.send_text(frame.decode())
            if kind == "ended":
                self.joined = False
                self.closing = self.closing or 1000
                break
        with contextlib.suppress(Exception):
            await self.ws.close(code=self.closing or 1000)


async def call_socket(ws: WebSocket) -> None:
    calls: Calls = ws.app.state.calls
    call_id = ws.scope["path"].removeprefix(PREFIX)
    user = await accept(ws, calls.settings)
    if user is None:
        return
    try:
        if not 1 <= len(call_id) <= 64 or commands.is_recorder(user.id):
            raise Problem(404, "call not found")
        view = await calls.db.run(lambda conn: commands.call_view(conn, call_id, user.id))
    except Problem as problem:
        await ws.send_text(encode(error_frame("not_found", problem.detail)))
        await ws.close(code=NOT_FOUND, reason="not invited to this call")
        return
    session = Session(ws, user, call_id, calls)
    replaced = calls.hub.attach(call_id, session)
    if replaced is not None:
        replaced.stop(REPLACED)
    writer = asyncio.create_task(session.write())
    session.send({"type": "ready", "user_id": user.id, "call": json_ready(view)})
    if view["state"] == "ended":
        session.send({"type": "ended", "reason": view["end_reason"]})
    try:
        await _receive(ws, session, calls)
    finally:
        calls.hub.detach(call_id, session)
        if session.joined and session.closing != REPLACED:
            with contextlib.suppress(Exception):
                await calls.leave(user.id, call_id)
        session.stop(session.closing or 1000)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(writer, 2)
        if ws.client_state == WebSocketState.CONNECTED:
            with contextlib.suppress(Exception):
                await ws.close(code=session.closing or 1000)


async def _receive(ws: WebSocket, session: Session, calls: Calls) -> None:
    async for frame, error in incoming(ws, calls.settings.ws_frame_max_bytes):
        if session.closing is not None:
            return
        if frame is None:
            session.send(error)
            continue
        try:
            await _handle(frame, session, calls)
        except Problem as problem:
            session.send(problem_frame(problem, frame, ECHO))
        except Exception:
            log.exception("handling a %s frame failed", frame.get("type"))
            session.send(error_frame("internal", "that did not work; try again", frame, ECHO))


async def _handle(frame: dict[str, Any], session: Session, calls: Calls) -> None:
    kind, user_id, call_id = frame["type"], session.user_id, session.call_id
    if kind == "ping":
        session.send({"type": "pong"})
    elif kind == "join":
        view = await calls.join(user_id, call_id)
        session.joined = True
        others = [u for u in in_call(view) if u != user_id]
        session.members.update(others)
        session.send({"type": "joined", "participants": others,
                         "recorders": [u for u in others if commands.is_recorder(u)],
                         "call": json_ready(view)})
    elif kind == "leave":
        session.joined = False
        await calls.leave(user_id, call_id)
        session.send({"type": "left"})
        session.stop(1000)
    elif kind == "decline":
        await calls.decline(user_id, call_id)
        session.send({"type": "declined", "user_id": user_id})
        session.stop(1000)
    elif kind in ("offer", "answer", "candidate"):
        await _relay(kind, frame, session, calls)
    else:
        session.send(error_frame("unknown_type", f"unknown frame type {kind!r}", frame, ECHO))


async def _relay(kind: str, frame: dict[str, Any], session: Session, calls: Calls) -> None:
    """An offer, answer or candidate for one other participant of the call."""
    to = frame.get("to")
    if not isinstance(to, str) or not 1 <= len(to) <= 64:
        raise invalid("to", "the participant this is for")
    if not session.joined:
        raise Problem(409, "join the call first")
    if kind == "candidate":
        check_candidate(frame.get("candidate"))
        out = {"type": kind, "from": session.user_id, "candidate": frame["candidate"]}
    else:
        check_sdp(frame.get("sdp"), calls.settings.ws_frame_max_bytes)
        out = {"type": kind, "from": session.user_id, "sdp": frame["sdp"]}
    if to not in session.members:  # perhaps a join this session has not heard of yet
        joined = await calls.db.run(functools.partial(commands.joined_ids,
                                                      call_id=session.call_id))
        if to in joined:
            session.members.add(to)
    if to == session.user_id or to not in session.members:
        raise Problem(404, f"{to} is not in this call", errors=[
            {"field": "to", "message": "not a participant in the call"}])
    await calls.hub.send(session.call_id, out, to=to)
