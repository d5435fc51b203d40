"""OpenTelemetry: one tracer provider per process, W3C context in headers and message attributes."""

import functools
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from opentelemetry import context, propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, Sampler, SamplingResult


class _RecordedWhenRead(Sampler):
    """Drops every span until a processor reads them, then samples as configured.

    A dropped span still gets its ids (for the logs, and to pass on in headers and message
    attributes) at half the cost per request of a recorded one."""

    def __init__(self) -> None:
        self.when_read: Sampler = ALWAYS_OFF
        self._active: Sampler = ALWAYS_OFF

    def start_recording(self) -> None:
        self._active = self.when_read

    def should_sample(self, *args, **kwargs) -> SamplingResult:  # type: ignore[no-untyped-def]
        return self._active.should_sample(*args, **kwargs)

    def get_description(self) -> str:
        return f"RecordedWhenRead({self._active.get_description()})"


_sampler = _RecordedWhenRead()
_provider: TracerProvider | None = None


def configure_tracing(service_name: str) -> None:
    """Install the SDK provider so spans get real ids; with OTEL_EXPORTER_OTLP_ENDPOINT (or
    its _TRACES_ variant) set, spans are also sent there over OTLP/HTTP in batches (on AWS the
    ADOT collector beside each task passes them on to X-Ray; OTEL_TRACES_SAMPLER applies).
    Without an exporter, spans are not recorded (see _RecordedWhenRead)."""
    global _provider
    if _provider is not None:
        return
    # The sampler OTEL_TRACES_SAMPLER names (parent-based, always on, by default).
    _sampler.when_read = TracerProvider(shutdown_on_exit=False).sampler
    _provider = TracerProvider(resource=Resource.create({"service.name": service_name}),
                               sampler=_sampler)
    trace.set_tracer_provider(_provider)
    if any(os.environ.get(f"OTEL_EXPORTER_OTLP_{kind}ENDPOINT") for kind in ("", "TRACES_")):
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        export_spans(BatchSpanProcessor(OTLPSpanExporter()))


def export_spans(processor: SpanProcessor) -> None:
    """Record spans from now on and hand each finished one to `processor`."""
    if _provider is None:
        raise RuntimeError("configure_tracing first")
    _provider.add_span_processor(processor)
    _sampler.start_recording()


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
