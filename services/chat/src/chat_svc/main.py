"""Wiring: build the chat service's app from its settings (uvicorn --factory)."""

import asyncio

from fastapi import FastAPI
from sqlalchemy import select

from chassis.app import ServiceSpec, create_app
from chassis.consumer import Apply
from chassis.sockets import DirectSocket

from . import api, commands, ws
from .actions import Chat
from .hub import Hub, Throttle
from .models import blocks, members, metadata
from .settings import ChatSettings

PROFILE_QUEUE = "chat-profile"
_CO_MEMBERS = select(members.c.user_id).distinct().where(members.c.channel_id.in_(
    select(members.c.channel_id).where(members.c.user_id == commands._USER)))


async def _start(app: FastAPI) -> None:
    settings: ChatSettings = app.state.settings
    if app.state.redis is None:
        raise RuntimeError("the chat service needs REDIS_URL: its fan-out runs through Redis")
    hub = Hub(app.state.redis, presence_ttl_s=settings.presence_ttl_s,
              reorder_wait_s=settings.fanout_reorder_wait_s)
    chat = Chat(app.state.db, hub, settings)

    async def announce(user_id: str, online: bool) -> None:
        """Presence goes to the people who share a channel with the user."""
        others = await app.state.db.run(
            lambda conn: list(conn.execute(_CO_MEMBERS, {"user": user_id}).scalars()))
        await hub.publish("presence", "", [u for u in others if u != user_id],
                          {"type": "presence", "user_id": user_id, "online": online})

    hub.on_presence = announce
    app.state.chat = chat
    app.state.typing = Throttle(settings.typing_interval_s)
    app.state.tasks["fanout"] = asyncio.create_task(hub.run())
    app.state.tasks["presence"] = asyncio.create_task(hub.refresh_presence())


def build_app(settings: ChatSettings | None = None) -> FastAPI:
    """The chat service: channels, messages, and live sessions over WebSockets."""
    app = create_app(settings or ChatSettings(), ServiceSpec(
        name="chat", metadata=metadata, routers=[api.router], on_startup=_start,
        consumers={PROFILE_QUEUE: blocks.handlers() | {
            "profile.created": Apply(commands.record_user)}},
        description="Direct and group chat: channels, messages with per-channel seq, "
                    "WebSocket sessions fanned out across replicas through Redis."))
    app.add_middleware(DirectSocket, path="/ws/chat", serve=ws.chat_socket)
    return app
