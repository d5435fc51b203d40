"""What a user does in chat, the same over HTTP and over a WebSocket: run the command's unit of
work, then fan the change out to the members' live sessions.

The store is the truth and the fan-out is best effort: a change is committed (with its event)
before it is published, so a lost publish delays a frame (sessions fill gaps from the store)
but loses nothing.
"""

import functools
import re
from typing import Any

from sqlalchemy import select

from chassis.auth import User
from chassis.db import Database
from chassis.events import json_ready
from chassis.problems import Problem, invalid

from . import commands
from .hub import Hub
from .models import members
from .settings import ChatSettings

_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
CLIENT_MSG_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
_MEMBER_IDS = select(members.c.user_id).where(members.c.channel_id == commands._CHANNEL)


def message_frame(message: dict[str, Any]) -> dict[str, Any]:
    return {"type": "message", "seq": message["change_seq"], "message": json_ready(message)}


class Chat:
    def __init__(self, db: Database, hub: Hub, settings: ChatSettings) -> None:
        self.db = db
        self.hub = hub
        self.settings = settings

    def check_text(self, text: Any) -> str:
        if not isinstance(text, str) or not text.strip():
            raise invalid("text", "must be a non-empty string")
        if len(text) > self.settings.text_max:
            raise invalid("text", f"must be at most {self.settings.text_max} characters")
        if _UNSTORABLE.search(text):
            raise invalid("text", "contains a NUL character or an unpaired surrogate")
        return text

    async def send(self, user: User, channel_id: str, client_msg_id: Any,
                   text: Any) -> tuple[dict[str, Any], bool]:
        if not isinstance(client_msg_id, str) or not CLIENT_MSG_ID.match(client_msg_id):
            raise invalid("client_msg_id", "must be 1-64 characters of [A-Za-z0-9_.:-]")
        text = self.check_text(text)
        member_ids = await self.db.run(
            lambda conn: list(conn.execute(_MEMBER_IDS, {"channel": channel_id}).scalars()))
        online = await self.hub.online([m for m in member_ids if m != user.id])
        message, member_ids, new = await self.db.run(functools.partial(
            commands.post_message, channel_id=channel_id, caller=user.id,
            client_msg_id=client_msg_id, text=text, online=online))
        if new:
            await self.hub.publish("message", channel_id, member_ids, message_frame(message),
                                   seq=message["change_seq"])
        return message, new

    async def edit(self, user: User, channel_id: str, seq: int, text: Any) -> dict[str, Any]:
        return await self._change(functools.partial(
            commands.edit_message, channel_id=channel_id, seq=seq, caller=user.id,
            text=self.check_text(text)))

    async def delete(self, user: User, channel_id: str, seq: int) -> dict[str, Any]:
        return await self._change(functools.partial(
            commands.delete_message, channel_id=channel_id, seq=seq, caller=user.id))

    async def react(self, user: User, channel_id: str, seq: int, emoji: str,
                    on: bool) -> None:
        await self._change(functools.partial(commands.react, channel_id=channel_id, seq=seq,
                                             caller=user.id, emoji=emoji, on=on))

    async def _change(self, unit: Any) -> dict[str, Any]:
        changed = await self.db.run(unit)
        if changed is None:
            return {}
        message, member_ids = changed
        await self.hub.publish("message", message["channel_id"], member_ids,
                               message_frame(message), seq=message["change_seq"])
        return message

    async def read(self, user: User, channel_id: str, seq: Any) -> int:
        if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
            raise invalid("seq", "must be a whole number, 0 or more")
        marker = await self.db.run(functools.partial(
            commands.mark_read, channel_id=channel_id, caller=user.id, seq=seq))
        member_ids = await self.db.run(
            lambda conn: list(conn.execute(_MEMBER_IDS, {"channel": channel_id}).scalars()))
        await self.hub.publish("read", channel_id, member_ids, {
            "type": "read", "channel_id": channel_id, "user_id": user.id, "seq": marker})
        return marker

    async def typing(self, user: User, channel_id: str) -> None:
        member_ids = await self.db.run(
            lambda conn: list(conn.execute(_MEMBER_IDS, {"channel": channel_id}).scalars()))
        if user.id not in member_ids:
            raise Problem(404, "channel not found")
        others = [m for m in member_ids if m != user.id]
        await self.hub.publish("typing", channel_id, others, {
            "type": "typing", "channel_id": channel_id, "user_id": user.id})

    async def channel_changed(self, channel: dict[str, Any], also: list[str] = ()) -> None:
        """Tell the members (and anyone just removed) that a channel changed."""
        shared = {k: v for k, v in channel.items()
                  if k not in ("last_read_seq", "unread_count")}  # those are each member's
        await self.hub.publish("channel", channel["id"], [*channel["member_ids"], *also],
                               {"type": "channel", "channel": json_ready(shared)})
