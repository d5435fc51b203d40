"""JSON logs with trace ids, Prometheus metrics, and the HTTP middleware that feeds both."""

import asyncio
import logging
import sys
import time
from typing import Any

import structlog
from fastapi import HTTPException
from opentelemetry import trace
from prometheus_client import Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .problems import Problem, problem_response
from .tracing import current_ids, span_from

HTTP_LATENCY = Histogram(
    "http_request_duration_seconds", "HTTP request latency",
    ["service", "method", "route", "status"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
OUTBOX_PENDING = Gauge("outbox_pending_events", "Outbox rows not yet published", ["service"])
OUTBOX_LAG = Gauge("outbox_lag_seconds", "Age of the oldest unpublished outbox row", ["service"])
OUTBOX_PUBLISHED = Counter("outbox_published_total", "Events published by the relay", ["service"])
OUTBOX_FAILURES = Counter("outbox_publish_failures_total", "Failed publish attempts", ["service"])
CONSUMER_LAG = Histogram(
    "consumer_lag_seconds", "Time from an event occurring to its handling", ["service", "queue"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
CONSUMED = Counter("consumer_messages_total", "Messages handled", ["service", "queue", "outcome"])
QUEUE_DEPTH = Gauge("queue_depth_messages", "Visible messages waiting", ["service", "queue"])
LOOP_LAG = Histogram(
    "event_loop_lag_seconds", "How late a 50 ms timer fires: time the loop was busy or blocked",
    ["service"], buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1),
)
VIEW_CACHE_READS = Counter(
    "view_cache_reads_total", "Cached view reads: fresh, stale (served, refreshed behind), "
    "miss (loaded) or error (Redis failed; loaded)", ["cache", "outcome"])
DLQ_DEPTH = Gauge("dlq_depth_messages", "Messages in a dead-letter queue", ["service", "queue"])


def _add_trace_ids(_logger: Any, _name: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    trace_id, span_id = current_ids()
    if trace_id:
        event_dict.setdefault("trace_id", trace_id)
        event_dict.setdefault("span_id", span_id)
    return event_dict


async def watch_loop_lag(service: str, interval_s: float = 0.05) -> None:
    """Sample how late the event loop runs a timer; a blocked loop delays every request."""
    loop = asyncio.get_running_loop()
    while True:
        started = loop.time()
        await asyncio.sleep(interval_s)
        LOOP_LAG.labels(service).observe(max(0.0, loop.time() - started - interval_s))


def configure_logging(service: str, *, level: str = "INFO", json: bool = True) -> None:
    """Route stdlib and structlog records through one JSON (or console) renderer."""
    shared = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _add_trace_ids,
        lambda _l, _n, ev: {**ev, "service": service},
    ]
    renderer = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer()
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.format_exc_info, renderer],
    ))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("uvicorn.access", "botocore", "aiobotocore", "werkzeug", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


# The W3C trace context and baggage, and the declared body size.
_READ_HEADERS = frozenset({b"traceparent", b"tracestate", b"baggage", b"content-length"})


class ObservabilityMiddleware:
    """Per request: a server span continuing the caller's trace, a latency sample, a body limit."""

    def __init__(self, app: ASGIApp, *, service: str, max_body_bytes: int) -> None:
        self.app = app
        self.service = service
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # Only the headers read here are decoded (a bearer token alone can be kilobytes).
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]
                   if k in _READ_HEADERS}
        length = headers.get("content-length")
        if length and length.isdigit() and int(length) > self.max_body_bytes:
            response = problem_response(Problem(413, f"body exceeds {self.max_body_bytes} bytes"))
            await response(scope, receive, send)
            return
        status = 500
        started = time.perf_counter()

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        with span_from(headers, f"{scope['method']} {scope['path']}", trace.SpanKind.SERVER):
            try:
                await self.app(scope, _limited(receive, self.max_body_bytes), send_with_status)
            finally:
                route = scope.get("route")
                path = getattr(route, "path", "unmatched")
                HTTP_LATENCY.labels(self.service, scope["method"], path, str(status)).observe(
                    time.perf_counter() - started)


def _limited(receive: Receive, limit: int) -> Receive:
    """Refuse a chunked body that grows past the limit (Content-Length may be absent).

    An HTTPException, because FastAPI turns any other error raised while reading the body
    into a 400; the app's handler renders it as a problem like any other.
    """
    seen = 0

    async def wrapped() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise HTTPException(413, f"body exceeds {limit} bytes")
        return message

    return wrapped
