"""WebSocket sessions at /ws/chat.

The first frame must be `{"type": "auth", "token": ...}` within `ws_auth_timeout_s` (never a
token in the URL): otherwise the socket closes with 4401. A browser's Origin must be one of
`ws_allowed_origins` when that is set (4403). Frames over `ws_frame_max_bytes` close it with
1009; bad JSON, unknown types and bad fields get an `error` frame and the session goes on.

Everything a session sends goes through its own bounded queue and one writer task, in order.
A client that lets the queue fill is dropped (4408) rather than slowing anyone else. The
writer also keeps each channel's frames gapless: it remembers the last seq it sent per
channel, skips what it sent already and, seeing a seq beyond the next one, first sends what
lies between from the store. After `sync` a client has every change after its cursors.
"""

import asyncio
import contextlib
import logging
from typing import Any

from fastapi import WebSocket
from starlette.websockets import WebSocketState

from chassis.auth import User
from chassis.problems import Problem
from chassis.sockets import (
    SendQueue,
    accept,
    error_frame,
    incoming,
    problem_frame,
)

from . import commands
from .actions import Chat, json_ready, message_frame
from .hub import DROPPED, GAP_FILLS, Throttle, encode

log = logging.getLogger("chat.ws")

TOO_SLOW = 4408
ECHO = ("client_msg_id", "channel_id")  # what an error frame repeats of the frame it answers
_STOP = object()


class Session:
    """One authenticated connection: its send queue, its writer, its per-channel cursors."""

    def __init__(self, ws: WebSocket, user: User, chat: Chat) -> None:
        self.ws = ws
        self.user = user
        self.user_id = user.id
        self.chat = chat
        self.queue: SendQueue = SendQueue(chat.settings.ws_send_queue_max)
        # channel -> the seq past which live frames are judged: at first the channel's seq when
        # the session began, then the last one sent
        self.sent: dict[str, int] = {}
        self.delivered: dict[str, int] = {}  # channel -> the last seq really sent
        self.closing: int | None = None
        self.writer: asyncio.Task[None] | None = None

    # --- what others hand to this session (never blocks) ----------------------------------

    def offer(self, kind: str, channel_id: str, seq: int | None, frame: bytes) -> None:
        self._put((kind, channel_id, seq, frame))

    def send(self, frame: dict[str, Any]) -> None:
        self._put(("direct", None, None, encode(frame)))

    async def catch_up(self) -> None:
        """After the fan-out was interrupted: every channel, from where live frames were."""
        self._put(("sync", None, None, dict(self.sent)))

    def request_sync(self, cursors: dict[str, int]) -> None:
        self._put(("sync", None, None, cursors))

    def _put(self, item: Any) -> None:
        if self.closing is not None:
            return
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:
            DROPPED.inc()
            log.info("dropping %s's session: %d frames waiting", self.user_id, self.queue.qsize())
            self.closing = TOO_SLOW
            with contextlib.suppress(asyncio.QueueFull):
                self.queue.get_nowait()
                self.queue.put_nowait(_STOP)
            if self.writer is not None:
                # It may be waiting for the socket to drain, which a stalled client never does.
                self.writer.cancel()

    # --- the writer -----------------------------------------------------------------------

    async def write(self) -> None:
        while True:
            item = await self.queue.get()
            if item is _STOP:
                return
            kind, channel_id, seq, payload = item
            if kind == "sync":
                await self._sync(payload)
            elif kind == "message":
                await self._message(channel_id, seq, payload)
            else:
                await self.ws.send_text(payload.decode())

    async def _message(self, channel_id: str, seq: int, frame: bytes) -> None:
        page = self.chat.settings.sync_page_max
        # A channel joined since the session began: its latest page comes along (the rest of
        # its history is a GET away).
        last = self.sent.get(channel_id, max(0, seq - page))
        if seq <= last:
            return  # sent already (by a sync or a gap fill)
        if seq > last + 1:
            await self._fill(channel_id, last, seq)
            if self.sent.get(channel_id, 0) >= seq:
                return
        await self._send(channel_id, seq, frame)

    async def _send(self, channel_id: str, seq: int, frame: bytes) -> None:
        """Each seq at most once per connection, in increasing order."""
        self.sent[channel_id] = max(self.sent.get(channel_id, 0), seq)
        if seq > self.delivered.get(channel_id, 0):
            self.delivered[channel_id] = seq
            await self.ws.send_text(frame.decode())

    async def _fill(self, channel_id: str, after: int, upto: int) -> None:
        """Send the changes between `after` and `upto` from the store, in seq order, a page
        at a time."""
        page = self.chat.settings.sync_page_max
        GAP_FILLS.inc()
        while True:
            changes = await self.chat.db.run(
                lambda conn, a=after: commands.changes_since(conn, channel_id, a, page))
            for message in changes:
                if message["change_seq"] > upto:
                    break
                after = message["change_seq"]
                await self._send(channel_id, after, encode(message_frame(message)))
            if len(changes) < page or after >= upto - 1 or changes[-1]["change_seq"] > upto:
                break
        # Changes superseded by later ones leave no row of their own: past them all now.
        self.sent[channel_id] = max(self.sent.get(channel_id, after), upto - 1)

    async def _sync(self, cursors: dict[str, int]) -> None:
        """Every change after each cursor, for the caller's channels among them; channels
        not named start from 0. Ends with a `synced` frame with the new cursors and the
        channels that have more than one page left (fetch them over HTTP)."""
        page = self.chat.settings.sync_page_max
        user = self.user_id

        def read(conn: Any) -> dict[str, list[dict[str, Any]]]:
            mine = commands.channel_ids_of(conn, user)
            return {c: commands.changes_since(conn, c, cursors.get(c, 0), page + 1)
                    for c in mine}

        changes = await self.chat.db.run(read)
        more = []
        for channel_id, listed in changes.items():
            if len(listed) > page:
                more.append(channel_id)
                listed = listed[:page]
            for message in listed:
                await self._send(channel_id, message["change_seq"],
                                 encode(message_frame(message)))
        await self.ws.send_text(encode({"type": "synced", "cursors": {
            c: max(cursors.get(c, 0), self.delivered.get(c, 0)) for c in changes},
            "more": more}).decode())


async def chat_socket(ws: WebSocket) -> None:
    chat: Chat = ws.app.state.chat
    user = await accept(ws, chat.settings)
    if user is None:
        return
    session = Session(ws, user, chat)
    # Joined first, then the channels' current seqs as the starting cursors, then the writer:
    # whatever is published meanwhile waits in the queue and is judged against the cursors.
    await chat.hub.join(session)
    session.sent = await chat.db.run(lambda conn: commands.cursors_of(conn, user.id))
    writer = session.writer = asyncio.create_task(session.write())
    session.send({"type": "ready", "user_id": user.id, "cursors": dict(session.sent)})
    reader = asyncio.create_task(_receive(ws, session, chat, ws.app.state.typing))
    try:
        # The writer is stopped when the session is dropped for being too slow (it may be
        # waiting for a socket that never drains): reading stops with it, rather than when a
        # client that reads nothing sends again or stops answering pings (40 s).
        await asyncio.wait({reader, writer}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        reader.cancel()
        await asyncio.wait({reader})
        await chat.hub.leave(session)
        if not writer.done():
            session.closing = session.closing or 1000
            with contextlib.suppress(asyncio.QueueFull):
                session.queue.put_nowait(_STOP)
        await asyncio.wait({writer}, timeout=2)
        writer.cancel()
        if writer.done() and not writer.cancelled() and writer.exception() is not None:
            log.info("%s's session stopped writing: %r", user.id, writer.exception())
        if session.closing and ws.client_state == WebSocketState.CONNECTED:
            # A client that stopped reading may never take the close frame: not for long.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(code=session.closing), 2)
    if not reader.cancelled() and reader.exception() is not None:
        raise reader.exception()


async def _receive(ws: WebSocket, session: Session, chat: Chat, typing: Throttle) -> None:
    async for frame, error in incoming(ws, chat.settings.ws_frame_max_bytes):
        if session.closing is not None:
            return
        if frame is None:
            session.send(error)
            continue
        try:
            await _handle(frame, session, chat, typing)
        except Problem as problem:
            session.send(problem_frame(problem, frame, ECHO))
        except Exception:
            log.exception("handling a %s frame failed", frame.get("type"))
            session.send(error_frame("internal", "that did not work; try again", frame, ECHO))


async def _handle(frame: dict[str, Any], session: Session, chat: Chat, typing: Throttle) -> None:
    kind, user = frame["type"], session.user
    if kind == "ping":
        session.send({"type": "pong"})
    elif kind == "send":
        channel_id = _channel(frame)
        message, _ = await chat.send(user, channel_id, frame.get("client_msg_id"),
                                     frame.get("text"))
        session.send({"type": "ack", "client_msg_id": message["client_msg_id"],
                      "channel_id": channel_id, "seq": message["seq"],
                      "message": json_ready(message)})
    elif kind == "typing":
        channel_id = _channel(frame)
        if typing.allow((user.id, channel_id)):
            await chat.typing(user, channel_id)
    elif kind == "read":
        await chat.read(user, _channel(frame), frame.get("seq"))
    elif kind == "sync":
        cursors = frame.get("cursors", {})
        if not isinstance(cursors, dict) or not all(
                isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool)
                and v >= 0 for k, v in cursors.items()):
            raise Problem(422, "cursors: an object of channel id -> last seq seen",
                          errors=[{"field": "cursors", "message": "channel id -> seq"}])
        session.request_sync(cursors)
    else:
        session.send(error_frame("unknown_type", f"unknown frame type {kind!r}", frame, ECHO))


def _channel(frame: dict[str, Any]) -> str:
    channel_id = frame.get("channel_id")
    if not isinstance(channel_id, str) or not 1 <= len(channel_id) <= 64:
        raise Problem(422, "channel_id: required", errors=[
            {"field": "channel_id", "message": "required"}])
    return channel_id
