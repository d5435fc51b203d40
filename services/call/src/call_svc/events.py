"""Events the call service publishes (topic call-events)."""

from datetime import datetime
from typing import Literal

from pydantic import Field

from chassis.events import EventData, event_type

PRODUCER = "call"


@event_type("call.ringing", producer=PRODUCER)
class CallRinging(EventData):
    """A call was started: the callees' devices should ring (the notifier pushes)."""

    call_id: str
    caller_id: str
    callee_ids: list[str]
    media: Literal["audio", "video"]
    channel_id: str | None = None
    ring_deadline: datetime = Field(description="it stops ringing then, if nobody answered")


@event_type("call.ended", producer=PRODUCER)
class CallEnded(EventData):
    """A call is over. `reason`: completed (someone answered), declined (every callee did),
    missed (nobody answered in time) or cancelled (the caller gave up first)."""

    call_id: str
    caller_id: str
    reason: Literal["completed", "declined", "missed", "cancelled"]
    participant_ids: list[str] = Field(description="everyone who joined")
    missed_ids: list[str] = Field(default_factory=list, description="callees who never answered")
    created_at: datetime
    answered_at: datetime | None = None
    ended_at: datetime
    duration_s: float = Field(description="from the first answer to the end; 0 if unanswered")


@event_type("live.started", producer=PRODUCER)
class LiveStarted(EventData):
    stream_id: str
    owner_id: str
    title: str
    hls_url: str
    started_at: datetime


@event_type("live.ended", producer=PRODUCER)
class LiveEnded(EventData):
    stream_id: str
    owner_id: str
    hls_url: str = Field(description="the whole stream, kept as a video on demand")
    started_at: datetime | None
    ended_at: datetime
