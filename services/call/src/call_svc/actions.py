"""What a participant does in a call, the same over HTTP and over the signaling socket: run the
command's unit of work, then tell the call's peers on every replica.

The store is the truth: a change is committed (with its event) before peers hear of it.
"""

import asyncio
import functools
import logging
from typing import Any

from chassis.db import Database, utcnow
from chassis.events import json_ready

from . import commands
from .hub import Hub
from .settings import CallSettings

log = logging.getLogger("call.actions")


def in_call(view: dict[str, Any]) -> list[str]:
    """Who is in the call now: joined people, then joined recorders."""
    return [p["user_id"] for p in view["participants"] if p["state"] == "joined"]


class Calls:
    def __init__(self, db: Database, hub: Hub, settings: CallSettings) -> None:
        self.db = db
        self.hub = hub
        self.settings = settings

    async def join(self, user_id: str, call_id: str) -> dict[str, Any]:
        view, answered = await self.db.run(functools.partial(commands.join, call_id=call_id,
                                                              user=user_id))
        await self.hub.send(call_id, {"type": "participant_joined", "user_id": user_id,
                                      "recorder": commands.is_recorder(user_id)}, skip=user_id)
        if answered:
            await self.hub.send(call_id, {"type": "call", "call": json_ready(view)})
        return view

    async def leave(self, user_id: str, call_id: str) -> dict[str, Any]:
        view = await self.db.run(functools.partial(commands.leave, call_id=call_id,
                                                   user=user_id))
        await self.hub.send(call_id, {"type": "participant_left", "user_id": user_id},
                            skip=user_id)
        await self.ended_if_over(view)
        return view

    async def decline(self, user_id: str, call_id: str) -> dict[str, Any]:
        view = await self.db.run(functools.partial(commands.decline, call_id=call_id,
                                                   user=user_id))
        await self.hub.send(call_id, {"type": "declined", "user_id": user_id}, skip=user_id)
        await self.ended_if_over(view)
        return view

    async def ended_if_over(self, view: dict[str, Any]) -> None:
        if view["state"] == "ended":
            await self.hub.send(view["id"], {"type": "ended", "reason": view["end_reason"]})

    async def ring_out(self) -> None:
        """Every `sweep_interval_s`: calls whose ring deadline passed stop ringing (on every
        replica; each call changes once, under its lock)."""
        while True:
            try:
                changed = await self.db.run(lambda conn: commands.ring_out(conn, utcnow()))
                for view in changed:
                    await self.hub.send(view["id"], {"type": "call", "call": json_ready(view)})
                    await self.ended_if_over(view)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("ringing out due calls failed; trying again", exc_info=True)
            await asyncio.sleep(self.settings.sweep_interval_s)
