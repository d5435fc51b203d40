"""OpenTelemetry: one tracer provider per process, W3C context in headers and message attributes."""

import functools
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from opentelemetry import context, propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider

_configured = False


def configure_tracing(service_name: str) -> None:
    """Install the SDK provider so spans get real ids (exporters are added by deployment)."""
    global _configured
    if _configured:
        return
    resource = Resource.create({"service.name": service_name})
    trace.set_tracer_provider(TracerProvider(resource=resource))
    _configured = True


@functools.cache
def tracer() -> trace.Tracer:
    """The process's tracer; looked up once, as the lookup is costly on every request."""
    return trace.get_tracer("asyncsns")


def current_trace_headers() -> dict[str, str]:
    """The current context as W3C `traceparent`/`tracestate` entries."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier


@contextmanager
def span_from(carrier: Mapping[str, str], name: str, kind: trace.SpanKind) -> Iterator[trace.Span]:
    """A span that continues the trace found in `carrier` (HTTP headers or message attributes)."""
    token = context.attach(propagate.extract(dict(carrier)))
    try:
        with tracer().start_as_current_span(name, kind=kind) as span:
            yield span
    finally:
        context.detach(token)


def current_ids() -> tuple[str | None, str | None]:
    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return None, None
    return format(ctx.trace_id, "032x"), format(ctx.span_id, "016x")
