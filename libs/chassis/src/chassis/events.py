"""The versioned event envelope, the catalog of event types, and their JSON Schema."""

from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field
from ulid import ULID

from .db import utcnow
from .tracing import current_trace_headers

ENVELOPE_VERSION = 1


class Envelope(BaseModel):
    """Every integration event, as it travels over SNS/SQS and into the archive."""

    model_config = ConfigDict(frozen=True)

    id: str = Field(description="ULID: unique and sortable by time")
    type: str = Field(description="past tense, '<area>.<verb-ed>', e.g. 'graph.followed'")
    version: int = Field(description="version of the schema of `data` for this type")
    occurred_at: datetime
    producer: str = Field(description="the service that published it")
    actor: str | None = Field(None, description="user id of who caused it, if a user did")
    subject: str = Field(description="the aggregate it is about: its order is kept")
    data: dict[str, Any]
    trace: dict[str, str] = Field(default_factory=dict, description="W3C trace context")


class EventData(BaseModel):
    """Base of every event's `data` model; subclasses are registered with `@event_type`."""

    model_config = ConfigDict(extra="forbid")

    @classmethod
    def routing(cls, data: dict[str, Any]) -> dict[str, str]:
        """Message attributes (besides `event_type`) that subscriptions may filter on, from
        the event's data as published, so that a consumer is not sent what it would drop."""
        return {}


def routing_attributes(type_name: str, data: dict[str, Any]) -> dict[str, str]:
    """The routing attributes of a published event whose type this process knows."""
    entry = CATALOG.get(type_name)
    return entry[1].routing(data) if entry else {}


T = TypeVar("T", bound=type[EventData])
CATALOG: dict[str, tuple[int, type[EventData], str]] = {}


def event_type(name: str, *, version: int = 1, producer: str) -> Callable[[T], T]:
    """Register a data model as the schema of event `name` at `version`."""

    def register(model: T) -> T:
        if name in CATALOG and CATALOG[name][1] is not model:
            raise ValueError(f"event type {name} registered twice")
        CATALOG[name] = (version, model, producer)
        model.__event_type__ = name  # type: ignore[attr-defined]
        return model

    return register


def new_event(data: EventData, *, producer: str, subject: str, actor: str | None) -> Envelope:
    """An envelope around `data`, stamped with a fresh id, the time and the current trace."""
    name = type(data).__event_type__  # type: ignore[attr-defined]
    version = CATALOG[name][0]
    return Envelope(
        id=str(ULID()), type=name, version=version, occurred_at=utcnow(), producer=producer,
        actor=actor, subject=subject, data=data.model_dump(mode="json"),
        trace=current_trace_headers(),
    )


def parse_data(envelope: Envelope, model: type[EventData]) -> EventData:
    return model.model_validate(envelope.data)


def catalog_schema(producer: str | None = None) -> dict[str, Any]:
    """JSON Schema of the envelope and of each registered type's `data` (the event catalog)."""
    events = {}
    for name in sorted(CATALOG):
        version, model, owner = CATALOG[name]
        if producer and owner != producer:
            continue
        schema = model.model_json_schema()
        schema["x-event-version"] = version
        schema["x-producer"] = owner
        events[name] = schema
    envelope = Envelope.model_json_schema()
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "asyncsns event catalog",
        "envelope": envelope,
        "message": {
            "description": "An SQS message's body (raw delivery; the `Message` of an SNS "
                           "notification otherwise): one envelope, or a batch of envelopes of "
                           "one type and routing in publishing order, as the outbox relay "
                           "sends bursts. Consumers apply each event of a batch.",
            "oneOf": [envelope, {"type": "array", "items": envelope, "minItems": 2}],
        },
        "events": events,
    }


def rfc3339(moment: datetime | None) -> str | None:
    """UTC with a `Z`, as pydantic writes times in events and responses."""
    return moment.isoformat().replace("+00:00", "Z") if moment else None


def json_ready(value: Any) -> Any:
    """Times as RFC 3339 with `Z`, recursively: what responses and frames carry."""
    if isinstance(value, datetime):
        return rfc3339(value)
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_ready(v) for v in value]
    return value
