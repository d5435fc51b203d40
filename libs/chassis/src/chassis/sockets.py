"""What every WebSocket endpoint of the services shares: serving it ahead of FastAPI's
routing, authentication by the first frame, reading JSON frames within a size limit, and the
`error` frames a session answers bad frames with.

The conventions: the first frame is `{"type": "auth", "token": ...}` within a deadline (never
a token in the URL); a frame over the limit closes the socket with 1009; a frame that is not a
JSON object with a string `type`, or that a handler refuses with a Problem, gets an `error`
frame and the session goes on.
"""

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any

from fastapi import WebSocket, WebSocketDisconnect

from .auth import User
from .problems import Problem

log = logging.getLogger("chassis.sockets")
AUTH_FAILED, FORBIDDEN_ORIGIN, TOO_BIG = 4401, 4403, 1009
Serve = Callable[[WebSocket], Awaitable[None]]


class DirectSocket:
    """ASGI middleware serving WebSockets on `path` (or under it, with `prefix=True`) ahead of
    FastAPI's exception handling and routing: those layers add nothing to a WebSocket, and
    their frames would stay alive as long as each connection."""

    def __init__(self, app: Any, *, path: str, serve: Serve, prefix: bool = False) -> None:
        self.app = app
        self.path = path
        self.serve = serve
        self.prefix = prefix

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "websocket" and (
                scope["path"].startswith(self.path) if self.prefix
                else scope["path"] == self.path):
            await self.serve(WebSocket(scope, receive, send))
            return
        await self.app(scope, receive, send)


class SendQueue:
    """What waits for one connection's writer: a bounded FIFO with a single reader, taking
    asyncio.Queue's `put_nowait`/`get_nowait`/`get`/`qsize` (QueueFull when full).

    asyncio.Queue keeps three deques, 2.2 KiB, for every connection, idle or not (7 % of an
    idle chat connection); this keeps a list, empty while the connection is idle.
    """

    __slots__ = ("_items", "_head", "_maxsize", "_waiter")

    def __init__(self, maxsize: int) -> None:
        self._items: list[Any] = []
        self._head = 0  # items before it were taken
        self._maxsize = maxsize
        self._waiter: asyncio.Future[None] | None = None

    def qsize(self) -> int:
        return len(self._items) - self._head

    def put_nowait(self, item: Any) -> None:
        if self.qsize() >= self._maxsize:
            raise asyncio.QueueFull
        self._items.append(item)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def get_nowait(self) -> Any:
        if self._head == len(self._items):
            raise asyncio.QueueEmpty
        item = self._items[self._head]
        self._head += 1
        if self._head == len(self._items):
            self._items, self._head = [], 0
        elif self._head >= self._maxsize:  # never empty: let go of what was taken
            del self._items[:self._head]
            self._head = 0
        return item

    async def get(self) -> Any:
        while self._head == len(self._items):
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self.get_nowait()


def origin_allowed(ws: WebSocket, allowed: Iterable[str]) -> bool:
    """A browser's Origin must be listed when a list is set (native clients send none)."""
    allowed, origin = tuple(allowed), ws.headers.get("origin")
    return not allowed or not origin or origin in allowed


async def accept(ws: WebSocket, settings: Any) -> User | None:
    """Accept a connection from an allowed Origin and authenticate it by its first frame; the
    user, or None once the socket is closed (4403 for the Origin, 4401 for the token).
    `settings` has `ws_allowed_origins`, `ws_auth_timeout_s` and `max_body_bytes`."""
    if not origin_allowed(ws, settings.ws_allowed_origins):
        await ws.close(code=FORBIDDEN_ORIGIN)
        return None
    await ws.accept()
    user = await authenticate(ws, timeout_s=settings.ws_auth_timeout_s,
                              max_bytes=settings.max_body_bytes)
    if user is None:
        await ws.close(code=AUTH_FAILED, reason="authentication failed")
    return user


async def authenticate(ws: WebSocket, *, timeout_s: float, max_bytes: int) -> User | None:
    """The user the first frame's access token names, or None (no frame in time, not an auth
    frame, a bad token)."""
    try:
        raw = await asyncio.wait_for(ws.receive_text(), timeout_s)
        frame = json.loads(raw)
        if not isinstance(frame, dict) or frame.get("type") != "auth":
            raise ValueError("the first frame must be auth")
        token = frame.get("token")
        if not isinstance(token, str) or len(token) > max_bytes:
            raise ValueError("no token")
        return await ws.app.state.verifier.verify(token)
    except (TimeoutError, ValueError, KeyError, Problem, WebSocketDisconnect):
        return None
    except Exception:
        log.warning("authenticating a WebSocket failed", exc_info=True)
        return None


async def incoming(ws: WebSocket, max_bytes: int
                   ) -> AsyncIterator[tuple[dict[str, Any] | None, dict[str, Any] | None]]:
    """(frame, None) for each good frame, (None, error frame) for a bad one, until the client
    goes; a frame over `max_bytes` closes the socket (1009) and ends it."""
    while True:
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
        if len(raw) > max_bytes:
            await ws.close(code=TOO_BIG, reason=f"frames are at most {max_bytes} bytes")
            return
        try:
            frame = json.loads(raw)
        except ValueError:
            yield None, error_frame("bad_json", "the frame is not JSON")
            continue
        if not isinstance(frame, dict) or not isinstance(frame.get("type"), str):
            yield None, error_frame("bad_frame", "a frame is a JSON object with a type")
            continue
        yield frame, None


def error_frame(code: str, detail: str, frame: dict[str, Any] | None = None,
                echo: Iterable[str] = (), **extra: Any) -> dict[str, Any]:
    """An `error` frame; `in_reply_to` is the bad frame's type, and the fields named in
    `echo` are copied from it so the client knows which of its frames failed."""
    error = {"type": "error", "code": code, "detail": detail}
    if frame is not None:
        for key in ("type", *echo):
            if isinstance(frame.get(key), str):
                error["in_reply_to" if key == "type" else key] = frame[key]
    return error | {k: v for k, v in extra.items() if v is not None}


def problem_frame(problem: Problem, frame: dict[str, Any],
                  echo: Iterable[str] = ()) -> dict[str, Any]:
    """The `error` frame for a Problem a handler raised (its field errors included)."""
    code = {403: "forbidden", 404: "not_found", 409: "conflict",
            413: "too_large"}.get(problem.status, "invalid")
    return error_frame(code, problem.detail, frame, echo, errors=problem.extra.get("errors"))
