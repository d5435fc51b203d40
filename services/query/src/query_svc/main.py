"""Wiring: build the query service's app from its settings (uvicorn --factory)."""

import asyncio

from fastapi import FastAPI

from chassis.app import ServiceSpec, create_app
from chassis.cache import ViewCache

from . import api
from .archive import Archiver
from .models import metadata
from .projections import Projector
from .search.factory import engine_from_url
from .settings import QuerySettings
from .timelines import keep_bounded


def build_app(settings: QuerySettings | None = None) -> FastAPI:
    """The query service: read models, timelines and search, built from every event."""
    settings = settings or QuerySettings()
    projector = Projector(fanout_threshold=settings.fanout_threshold,
                          follow_backfill=settings.follow_backfill)

    async def start(app: FastAPI) -> None:
        stack = app.state.exit_stack
        engine = engine_from_url(settings.resolved_search_url(),
                                 refresh_interval=settings.search_refresh_interval)
        await engine.start()
        stack.push_async_callback(engine.close)
        app.state.search = projector.search = engine
        projector.db = app.state.db
        app.state.home_cache = projector.home_cache = ViewCache(
            app.state.redis, prefix="query:home:v3:", ttl_s=settings.home_cache_ttl_s)
        stack.push_async_callback(app.state.home_cache.close)
        app.state.tasks["timeline-trim"] = asyncio.create_task(keep_bounded(
            app.state.db, projector, settings.timeline_max, settings.timeline_trim_interval_s))
        if settings.archive_queues and not settings.serve_only:
            kwargs = settings.aws_client_kwargs()
            sqs = await stack.enter_async_context(app.state.aws.client("sqs", **kwargs))
            s3 = await stack.enter_async_context(app.state.aws.client("s3", **kwargs))
            for queue in settings.archive_queues:
                name = settings.queue_prefix + queue
                url = (await sqs.get_queue_url(QueueName=name))["QueueUrl"]
                archiver = Archiver(service="query", name=queue, queue_url=url, sqs=sqs, s3=s3,
                                    bucket=settings.archive_bucket, batch=settings.archive_batch,
                                    linger_s=settings.archive_linger_s,
                                    wait_time_s=settings.consumer_wait_time_s)
                app.state.tasks[f"archive:{queue}"] = asyncio.create_task(archiver.run())

    app = create_app(settings, ServiceSpec(
        name="query", metadata=metadata, routers=api.ROUTERS, consumers=projector.handlers(),
        on_startup=start,
        description="The read side: post views, timelines and search, built from events."))
    app.state.projector = projector
    return app
