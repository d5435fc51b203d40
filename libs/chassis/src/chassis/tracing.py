"""OpenTelemetry: one tracer provider per process, W3C context in headers and message attributes."""

import functools
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from opentelemetry import context, propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

_configured = False


def configure_tracing(service_name: str) -> None:
    """Install the SDK provider so spans get real ids; with OTEL_EXPORTER_OTLP_ENDPOINT (or
    its _TRACES_ variant) set, spans are also sent there over OTLP/HTTP in batches (on AWS the
    ADOT collector beside each task passes them on to X-Ray)."""
    global _configured
    if _configured:
        return
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    if any(os.environ.get(f"OTEL_EXPORTER_OTLP_{kind}ENDPOINT") for kind in ("", "TRACES_")):
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
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
