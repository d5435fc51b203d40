"""A caller's trace runs through the request's logs and into the events the request creates."""

import asyncio
import json
import logging
import os

import structlog
from fastapi import APIRouter
from pydantic import BaseModel

from chassis.events import EventData, event_type, new_event

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{CALLER_SPAN}-01"

router = APIRouter()


@event_type("test.note-taken", producer="chassis-tests")
class NoteTaken(EventData):
    text: str


class Taken(BaseModel):
    trace: dict[str, str]


@router.post("/notes")
async def take_note() -> Taken:
    """Log through structlog and stdlib logging, and create an event."""
    structlog.get_logger("test").info("note taken", via="structlog")
    logging.getLogger("test.stdlib").info("note taken via stdlib")
    event = new_event(NoteTaken(text="hi"), producer="chassis-tests", subject="n-1", actor=None)
    return Taken(trace=event.trace)


def _json_lines(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


async def test_logs_of_a_traced_request_carry_the_callers_trace_id(serve, capsys):
    async with serve(router, log_json=True) as client:
        response = await client.post("/notes", headers={"traceparent": TRACEPARENT})
    assert response.status_code == 200, response.text
    lines = [line for line in _json_lines(capsys.readouterr().out)
             if line.get("event", "").startswith("note taken")]
    assert len(lines) == 2
    assert {line["trace_id"] for line in lines} == {TRACE_ID}
    assert {line["service"] for line in lines} == {"chassis-tests"}
    assert all(line["span_id"] != CALLER_SPAN for line in lines)


async def test_an_event_created_in_a_traced_request_carries_that_trace(serve):
    async with serve(router) as client:
        response = await client.post("/notes", headers={"traceparent": TRACEPARENT})
    traceparent = response.json()["trace"]["traceparent"]
    version, trace_id, parent_span, _flags = traceparent.split("-")
    assert (version, trace_id) == ("00", TRACE_ID)
    assert parent_span != CALLER_SPAN


async def test_the_server_span_is_a_child_of_the_callers_span(serve, spans):
    spans.clear()
    async with serve(router) as client:
        await client.post("/notes", headers={"traceparent": TRACEPARENT})
    (server,) = [s for s in spans.get_finished_spans() if s.name == "POST /notes"]
    assert format(server.context.trace_id, "032x") == TRACE_ID
    assert format(server.parent.span_id, "016x") == CALLER_SPAN


async def test_a_request_without_a_traceparent_starts_a_new_trace(serve):
    async with serve(router) as client:
        response = await client.post("/notes")
    trace_id = response.json()["trace"]["traceparent"].split("-")[1]
    assert trace_id != TRACE_ID and int(trace_id, 16) != 0


async def test_spans_are_exported_over_otlp_when_an_endpoint_is_set(tmp_path):
    """A process configured with OTEL_EXPORTER_OTLP_ENDPOINT sends its spans to a collector
    (here a local receiver standing in for the ADOT sidecar) before it exits."""
    import subprocess
    import sys

    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    from chassis.testing import live

    received: list[ExportTraceServiceRequest] = []

    async def collect(request: Request) -> Response:
        received.append(ExportTraceServiceRequest.FromString(await request.body()))
        return Response(status_code=200)

    collector = Starlette(routes=[Route("/v1/traces", collect, methods=["POST"])])
    script = ("from chassis.tracing import configure_tracing, tracer\n"
              "configure_tracing('svc-under-test')\n"
              "with tracer().start_as_current_span('work'): pass\n")
    async with live(collector) as server:
        done = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-c", script], capture_output=True, timeout=60,
            env={**os.environ, "OTEL_EXPORTER_OTLP_ENDPOINT": server.url})
    assert done.returncode == 0, done.stderr
    spans = [span for request in received for resource in request.resource_spans
             for scope in resource.scope_spans for span in scope.spans]
    assert [span.name for span in spans] == ["work"]
    attributes = {a.key: a.value.string_value
                  for a in received[0].resource_spans[0].resource.attributes}
    assert attributes["service.name"] == "svc-under-test"
