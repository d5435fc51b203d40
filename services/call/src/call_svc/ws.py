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
import json
import logging
from typing import Any

from fastapi import WebSocket, WebSocketDisconnect
from starlette.websockets import WebSocketState

from chassis.auth import User
from chassis.problems import Problem, invalid

from . import commands
from .actions import Calls, in_call, json_ready
from .hub import encode
from .sdp import check_candidate, check_sdp

log = logging.getLogger("call.ws")

AUTH_FAILED, FORBIDDEN_ORIGIN, NOT_FOUND, TOO_SLOW, REPLACED, TOO_BIG = (
    4401, 4403, 4404, 4408, 4409, 1009)
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
        self.closing: int | None = None
        self.queue: asyncio.Queue[Any] = asyncio.Queue(calls.settings.ws_send_queue_max)

    def deliver(self, frame: dict[str, Any]) -> None:
        if self.closing is not None:
            return
        try:
            self.queue.put_nowait(frame)
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
            frame = await self.queue.get()
            if frame is _STOP:
                break
            await self.ws.send_text(encode(frame))
            if frame.get("type") == "ended":
                self.joined = False
                self.closing = self.closing or 1000
                break
        with contextlib.suppress(Exception):
            await self.ws.close(code=self.closing or 1000)


class DirectSocket:
    """Serves /ws/calls/... ahead of FastAPI's routing (as the chat service does)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "websocket" and scope["path"].startswith(PREFIX):
            await call_socket(WebSocket(scope, receive, send),
                              scope["path"].removeprefix(PREFIX))
            return
        await self.app(scope, receive, send)


async def _authenticate(ws: WebSocket, calls: Calls) -> User | None:
    settings = calls.settings
    try:
        raw = await asyncio.wait_for(ws.receive_text(), settings.ws_auth_timeout_s)
        frame = json.loads(raw)
        if not isinstance(frame, dict) or frame.get("type") != "auth":
            raise ValueError("the first frame must be auth")
        token = frame.get("token")
        if not isinstance(token, str) or len(token) > settings.max_body_bytes:
            raise ValueError("no token")
        return await ws.app.state.verifier.verify(token)
    except (TimeoutError, ValueError, KeyError, Problem, WebSocketDisconnect):
        return None
    except Exception:
        log.warning("authentication of a signaling connection failed", exc_info=True)
        return None


async def call_socket(ws: WebSocket, call_id: str) -> None:
    calls: Calls = ws.app.state.calls
    settings = calls.settings
    origin = ws.headers.get("origin")
    if settings.ws_allowed_origins and origin and origin not in settings.ws_allowed_origins:
        await ws.close(code=FORBIDDEN_ORIGIN)
        return
    await ws.accept()
    user = await _authenticate(ws, calls)
    if user is None:
        await ws.close(code=AUTH_FAILED, reason="authentication failed")
        return
    try:
        if not 1 <= len(call_id) <= 64 or commands.is_recorder(user.id):
            raise Problem(404, "call not found")
        view = await calls.db.run(lambda conn: commands.call_view(conn, call_id, user.id))
    except Problem as problem:
        await ws.send_text(encode(_error("not_found", problem.detail)))
        await ws.close(code=NOT_FOUND, reason="not invited to this call")
        return
    session = Session(ws, user, call_id, calls)
    replaced = calls.hub.attach(call_id, session)
    if replaced is not None:
        replaced.stop(REPLACED)
    writer = asyncio.create_task(session.write())
    session.deliver({"type": "ready", "user_id": user.id, "call": json_ready(view)})
    if view["state"] == "ended":
        session.deliver({"type": "ended", "reason": view["end_reason"]})
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
    limit = calls.settings.ws_frame_max_bytes
    while session.closing is None:
        try:
            message = await ws.receive()
        except (WebSocketDisconnect, RuntimeError):
            return
        if message["type"] == "websocket.disconnect":
            return
        raw = message.get("text")
        if raw is None and message.get("bytes") is not None:
            raw = message["bytes"].decode("utf-8", "replace")
        if raw is None:
            continue
        if len(raw) > limit:
            session.closing = TOO_BIG
            await ws.close(code=TOO_BIG, reason=f"frames are at most {limit} bytes")
            return
        try:
            frame = json.loads(raw)
        except ValueError:
            session.deliver(_error("bad_json", "the frame is not JSON"))
            continue
        if not isinstance(frame, dict) or not isinstance(frame.get("type"), str):
            session.deliver(_error("bad_frame", "a frame is a JSON object with a type"))
            continue
        try:
            await _handle(frame, session, calls)
        except Problem as problem:
            body = problem.body(None)
            session.deliver(_error(_code(problem), body.get("detail", ""), frame,
                                   errors=body.get("errors")))
        except Exception:
            log.exception("handling a %s frame failed", frame.get("type"))
            session.deliver(_error("internal", "that did not work; try again", frame))


async def _handle(frame: dict[str, Any], session: Session, calls: Calls) -> None:
    kind, user_id, call_id = frame["type"], session.user_id, session.call_id
    if kind == "ping":
        session.deliver({"type": "pong"})
    elif kind == "join":
        view = await calls.join(user_id, call_id)
        session.joined = True
        others = [u for u in in_call(view) if u != user_id]
        session.deliver({"type": "joined", "participants": others,
                         "recorders": [u for u in others if commands.is_recorder(u)],
                         "call": json_ready(view)})
    elif kind == "leave":
        session.joined = False
        await calls.leave(user_id, call_id)
        session.deliver({"type": "left"})
        session.stop(1000)
    elif kind == "decline":
        await calls.decline(user_id, call_id)
        session.deliver({"type": "declined", "user_id": user_id})
        session.stop(1000)
    elif kind in ("offer", "answer", "candidate"):
        await _relay(kind, frame, session, calls)
    else:
        session.deliver(_error("unknown_type", f"unknown frame type {kind!r}", frame))


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
    joined = await calls.db.run(functools.partial(commands.joined_ids,
                                                  call_id=session.call_id))
    if to == session.user_id or to not in joined:
        raise Problem(404, f"{to} is not in this call", errors=[
            {"field": "to", "message": "not a participant in the call"}])
    await calls.hub.send(session.call_id, out, to=to)


def _code(problem: Problem) -> str:
    return {403: "forbidden", 404: "not_found", 409: "conflict",
            413: "too_large"}.get(problem.status, "invalid")


def _error(code: str, detail: str, frame: dict[str, Any] | None = None,
           **extra: Any) -> dict[str, Any]:
    error = {"type": "error", "code": code, "detail": detail}
    if frame is not None:
        if isinstance(frame.get("type"), str):
            error["in_reply_to"] = frame["type"]
        if isinstance(frame.get("to"), str):
            error["to"] = frame["to"]
    return error | {k: v for k, v in extra.items() if v is not None}
