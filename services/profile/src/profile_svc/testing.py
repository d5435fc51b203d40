"""Events of this service as other services' tests feed them to their consumers: built from
the real event models, so a consumer's test breaks when the contract changes."""

from chassis.events import Envelope, new_event

from . import events


def profile_created(user_id: str, username: str) -> Envelope:
    """`profile.created` for a new account."""
    return new_event(events.ProfileCreated(
        user_id=user_id, username=username, display_name=username,
        created_at="2026-01-01T00:00:00Z"), producer=events.PRODUCER, subject=f"user:{user_id}",
        actor=user_id)
