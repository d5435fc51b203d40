"""Events the profile service publishes (topic profile-events)."""

from datetime import datetime

from chassis.events import EventData, event_type

PRODUCER = "profile"


@event_type("profile.created", producer=PRODUCER)
class ProfileCreated(EventData):
    user_id: str
    username: str
    display_name: str
    created_at: datetime


@event_type("profile.updated", producer=PRODUCER)
class ProfileUpdated(EventData):
    user_id: str
    username: str
    display_name: str
    bio: str
    avatar_media_id: str | None
    avatar_url: str | None


class EdgeEvent(EventData):
    """A change to the directed edge actor → target."""

    actor_id: str
    target_id: str


@event_type("graph.followed", producer=PRODUCER)
class Followed(EdgeEvent):
    """`actor_id` now follows `target_id`."""


@event_type("graph.unfollowed", producer=PRODUCER)
class Unfollowed(EdgeEvent):
    """`actor_id` no longer follows `target_id` (also sent when a block removes a follow)."""


@event_type("graph.blocked", producer=PRODUCER)
class Blocked(EdgeEvent):
    """`actor_id` blocked `target_id`; follows both ways were removed."""


@event_type("graph.unblocked", producer=PRODUCER)
class Unblocked(EdgeEvent):
    """`actor_id` lifted a block on `target_id`."""


@event_type("graph.muted", producer=PRODUCER)
class Muted(EdgeEvent):
    """`actor_id` muted `target_id`."""


@event_type("graph.unmuted", producer=PRODUCER)
class Unmuted(EdgeEvent):
    """`actor_id` unmuted `target_id`."""
