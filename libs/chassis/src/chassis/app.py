"""The app factory: one place that wires a service from its settings, inside the lifespan."""

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aioboto3
import httpx
from botocore.config import Config
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.asyncio import Redis
from sqlalchemy import MetaData

from . import collector
from .auth import JWKSCache, TokenVerifier
from .consumer import Consumer, Decode, Handler, envelope_of
from .db import Database
from .observability import ObservabilityMiddleware, configure_logging, watch_loop_lag
from .outbox import Doorbell, OutboxRelay
from .problems import Problem, install_problem_handlers, problem_response
from .settings import ServiceSettings
from .tracing import configure_tracing

log = logging.getLogger("chassis.app")
Hook = Callable[[FastAPI], Awaitable[None]]


@dataclass
class ServiceSpec:
    """What a service brings: its tables, routes, the queues it consumes, extra wiring."""

    name: str
    metadata: MetaData
    routers: list[APIRouter]
    consumers: dict[str, dict[str, Handler]] = field(default_factory=dict)
    decoders: dict[str, Decode] = field(default_factory=dict)  # queue -> non-event messages
    on_startup: Hook | None = None
    on_shutdown: Hook | None = None
    description: str = ""


def create_app(settings: ServiceSettings, spec: ServiceSpec) -> FastAPI:
    """Build the service's ASGI app; nothing connects until the lifespan starts."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            await _start(app, settings, spec, stack)
            try:
                yield
            finally:
                if spec.on_shutdown:
                    await spec.on_shutdown(app)
                await _stop_tasks(app.state.tasks)

    # The chassis middleware traces and measures each request; FastAPI's native telemetry
    # (0.165+) would add a second server span per request. Older versions ignore the key.
    app = FastAPI(title=f"asyncsns {spec.name}", description=spec.description, lifespan=lifespan,
                  version="0.1.0", telemetry={"tracing": False, "metrics": False, "logs": False})
    app.state.settings = settings
    install_problem_handlers(app)
    app.add_middleware(ObservabilityMiddleware, service=spec.name,
                       max_body_bytes=settings.max_body_bytes)
    app.include_router(_operations_router())
    for router in spec.routers:
        app.include_router(router)
    return app


async def _start(app: FastAPI, settings: ServiceSettings, spec: ServiceSpec,
                 stack: contextlib.AsyncExitStack) -> None:
    configure_logging(spec.name, level=settings.log_level, json=settings.log_json)
    configure_tracing(spec.name)
    db = Database(settings.database_url)
    stack.push_async_callback(db.dispose)
    await db.create_all(spec.metadata)
    http = await stack.enter_async_context(httpx.AsyncClient())
    jwks = JWKSCache(settings.cognito_jwks_url, http=http,
                     min_refresh_interval_s=settings.jwks_min_refresh_interval_s)
    app.state.db = db
    app.state.exit_stack = stack
    app.state.http = http
    app.state.jwks = jwks
    app.state.verifier = TokenVerifier(jwks, issuer=settings.cognito_issuer,
                                       client_id=settings.cognito_client_id)
    app.state.aws = aioboto3.Session()
    app.state.redis = None
    if settings.redis_url:
        app.state.redis = Redis.from_url(settings.redis_url)
        stack.push_async_callback(app.state.redis.aclose)
    app.state.tasks = {"loop-lag": asyncio.create_task(watch_loop_lag(spec.name))}
    app.state.relay = None
    app.state.consumers = []
    # The service's own wiring comes before the loops that may call into it.
    if spec.on_startup:
        await spec.on_startup(app)
    aws_kwargs = settings.aws_client_kwargs()
    # A process that only serves requests leaves the relay and the consumers to another
    # process of its service (SERVE_ONLY).
    if settings.events_topic_arn and not settings.serve_only:
        sns = await stack.enter_async_context(app.state.aws.client("sns", **aws_kwargs))
        # Named after the service that owns the outbox, not this app: a service's worker
        # process shares its database, outbox and so its relay lease (one publishes at a time).
        relay = OutboxRelay(service=settings.service_name, db=db, metadata=spec.metadata, sns=sns,
                            topic_arn=settings.events_topic_arn,
                            poll_interval_s=settings.outbox_poll_interval_s,
                            batch_size=settings.outbox_batch_size)
        db.on_events_committed.append(relay.wake)
        app.state.relay = relay
        app.state.tasks["outbox-relay"] = asyncio.create_task(relay.run())
    elif db.file is not None:
        # The relay runs in another process on the same file: wake it after each commit.
        doorbell = Doorbell(db.file)
        stack.callback(doorbell.close)
        db.on_events_committed.append(doorbell.ring)
    # The queues the deployment has (CONSUME_QUEUES, from the topology); a service may bring
    # handlers for a queue a deployment leaves out. Unset: all of them.
    consumers = {} if settings.serve_only else {
        queue: handlers for queue, handlers in spec.consumers.items()
        if not settings.consume_queues or queue in settings.consume_queues}
    if consumers:
        # Each consumer keeps one connection in a 20 s long poll; botocore's default pool of
        # ten would make the deletes and the other queues' receives wait for one.
        pool = Config(max_pool_connections=len(consumers) + 10)
        sqs = await stack.enter_async_context(
            app.state.aws.client("sqs", config=pool, **aws_kwargs))
        for queue, handlers in consumers.items():
            url = (await sqs.get_queue_url(QueueName=settings.queue_prefix + queue))["QueueUrl"]
            consumer = Consumer(
                service=spec.name, name=queue, queue_url=url, sqs=sqs, db=db,
                metadata=spec.metadata, handlers=handlers,
                wait_time_s=settings.consumer_wait_time_s,
                concurrency=settings.consumer_concurrency,
                retry_base_s=settings.consumer_retry_base_s,
                max_backoff_s=settings.consumer_max_backoff_s,
                visibility_timeout_s=settings.consumer_visibility_timeout_s,
                decode=spec.decoders.get(queue, envelope_of))
            app.state.consumers.append(consumer)
            app.state.tasks[f"consumer:{queue}"] = asyncio.create_task(consumer.run())
        app.state.tasks["queue-metrics"] = asyncio.create_task(
            _sample_depths(app.state.consumers, settings.metrics_poll_interval_s))
    # Everything built so far lives as long as the process: out of the collector's passes.
    collector.settle()


async def _sample_depths(consumers: list[Consumer], interval: float) -> None:
    while True:
        for consumer in consumers:
            try:
                await consumer.sample_depths()
            except Exception:
                log.warning("could not sample depth of %s", consumer.name, exc_info=True)
        await asyncio.sleep(interval)


async def _stop_tasks(tasks: dict[str, asyncio.Task[Any]]) -> None:
    for task in tasks.values():
        task.cancel()
    await asyncio.gather(*tasks.values(), return_exceptions=True)


def _operations_router() -> APIRouter:
    router = APIRouter(include_in_schema=False)

    @router.get("/healthz")
    async def healthz() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @router.get("/readyz")
    async def readyz(request: Request) -> Response:
        """Readiness: the database answers and every background loop is running."""
        checks: dict[str, str] = {}
        try:
            await asyncio.wait_for(request.app.state.db.ping(), timeout=2)
            checks["database"] = "ok"
        except Exception as exc:
            checks["database"] = f"failed: {type(exc).__name__}"
        if request.app.state.redis is not None:
            try:
                await asyncio.wait_for(request.app.state.redis.ping(), timeout=2)
                checks["redis"] = "ok"
            except Exception as exc:
                checks["redis"] = f"failed: {type(exc).__name__}"
        for name, task in request.app.state.tasks.items():
            checks[name] = "stopped" if task.done() else "ok"
        if all(v == "ok" for v in checks.values()):
            return JSONResponse({"status": "ok", "checks": checks})
        return problem_response(Problem(503, "not ready", checks=checks), request)

    @router.get("/metrics")
    async def metrics() -> Response:
        """Prometheus metrics of this process."""
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return router
