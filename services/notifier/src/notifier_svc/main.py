"""Wiring: build the notifier's app from its settings (uvicorn --factory)."""

import asyncio

import aiohttp
from fastapi import FastAPI

from chassis.app import ServiceSpec, create_app

from . import api, inbox
from .delivery import Dispatcher
from .models import metadata
from .settings import NotifierSettings
from .streams import Streams


def build_app(settings: NotifierSettings | None = None) -> FastAPI:
    """The notifier: notifications from events, an inbox and stream, and pushes."""
    settings = settings or NotifierSettings()
    holder: dict[str, Dispatcher] = {}

    async def told(user_ids: list[str]) -> None:
        holder["dispatcher"].wake()
        await app.state.streams.changed(user_ids)

    async def start(app: FastAPI) -> None:
        kwargs = settings.aws_client_kwargs()
        sns = await app.state.exit_stack.enter_async_context(app.state.aws.client("sns", **kwargs))
        sqs = await app.state.exit_stack.enter_async_context(app.state.aws.client("sqs", **kwargs))
        dlq = (await sqs.get_queue_url(QueueName=settings.queue_prefix + settings.push_dlq)
               )["QueueUrl"]
        app.state.sns, app.state.dlq_url = sns, dlq
        app.state.streams = Streams(app.state.redis)
        # Its own pool, as wide as the pushes in flight: connections to a push service are
        # reused instead of closed when more run at once than the shared client keeps.
        http = await app.state.exit_stack.enter_async_context(aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=2 * settings.push_concurrency),
            timeout=aiohttp.ClientTimeout(total=None)))
        dispatcher = Dispatcher(db=app.state.db, http=http, sns=sns, sqs=sqs,
                                settings=settings, dlq_url=dlq)
        holder["dispatcher"] = app.state.dispatcher = dispatcher
        # Pushes come from the consumers' deliveries: they go out from the same process,
        # woken by its commits (a process that only serves requests has nothing to send).
        if not settings.serve_only:
            app.state.tasks["push-dispatcher"] = asyncio.create_task(dispatcher.run())
        app.state.tasks["streams"] = asyncio.create_task(app.state.streams.run())

    app = create_app(settings, ServiceSpec(
        name="notifier", metadata=metadata, routers=[api.router], on_startup=start,
        consumers=inbox.handlers(told),
        description="Notifications: inbox, real-time stream, Web Push and mobile push."))
    return app
