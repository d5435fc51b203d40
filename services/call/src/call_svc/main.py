"""Wiring: build the call service's app from its settings (uvicorn --factory)."""

import asyncio
import functools
import logging

from fastapi import FastAPI

from chassis.app import ServiceSpec, create_app
from chassis.consumer import Apply
from chassis.sockets import DirectSocket

from . import api, commands, live, recording, ws
from .actions import Calls
from .hub import Hub
from .ice import ice_provider
from .models import blocks, metadata
from .settings import CallSettings
from .studio import Studio, hls_url

PROFILE_QUEUE, CHAT_QUEUE = "call-profile", "call-chat"


async def _start(app: FastAPI) -> None:
    settings: CallSettings = app.state.settings
    # aiortc's ICE logs every candidate pair's progress at INFO: a line per check per call.
    for noisy in ("aioice", "aiortc"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if app.state.redis is None:
        raise RuntimeError("the call service needs REDIS_URL: signaling runs through Redis")
    hub = Hub(app.state.redis)
    app.state.hub = hub
    app.state.calls = Calls(app.state.db, hub, settings)
    app.state.ice = ice_provider(settings, app.state.aws)
    s3 = await app.state.exit_stack.enter_async_context(
        app.state.aws.client("s3", **settings.aws_client_kwargs()))
    app.state.s3 = s3

    async def started(stream_id: str) -> None:
        await app.state.db.run(functools.partial(
            commands.stream_started, stream_id=stream_id, hls_url=hls_url(settings, stream_id)))

    async def ended(stream_id: str) -> None:
        await app.state.db.run(functools.partial(
            commands.end_stream, stream_id=stream_id, hls_url=hls_url(settings, stream_id)))

    studio = app.state.studio = Studio(s3, settings, on_started=started, on_ended=ended)
    app.state.exit_stack.push_async_callback(studio.close)
    hub.handlers.update(live.handlers(studio))
    app.state.recorders = {}
    app.state.exit_stack.push_async_callback(recording.stop_all, app.state.recorders)
    hub.handlers.update(recording.handlers(app.state.recorders))
    app.state.tasks["signaling"] = asyncio.create_task(hub.run())
    app.state.tasks["ring-out"] = asyncio.create_task(app.state.calls.ring_out())


def build_app(settings: CallSettings | None = None) -> FastAPI:
    """The call service: calls, their signaling, recordings and live streams."""
    app = create_app(settings or CallSettings(), ServiceSpec(
        name="call", metadata=metadata, on_startup=_start,
        routers=[api.router, recording.router, live.router],
        consumers={
            PROFILE_QUEUE: blocks.handlers() | {"profile.created": Apply(commands.record_user)},
            CHAT_QUEUE: {"chat.channel_created": Apply(commands.record_channel),
                         "chat.members_changed": Apply(commands.record_channel)}},
        description="Voice and video calls (peer-to-peer, signaled over WebSockets across "
                    "replicas through Redis), TURN credentials, recordings and live streams."))
    app.add_middleware(DirectSocket, path=ws.PREFIX, serve=ws.call_socket, prefix=True)
    return app
