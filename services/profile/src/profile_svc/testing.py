"""Events of this service as other services' tests feed them to their consumers: built from
the real event models, so a consumer's test breaks when the contract changes."""

from collections.abc import Callable
from typing import Any

from chassis.events import Envelope, new_event
from chassis.testing import CognitoPool, TestUser, new_user

from . import events


def profile_created(user_id: str, username: str) -> Envelope:
    """`profile.created` for a new account."""
    return new_event(events.ProfileCreated(
        user_id=user_id, username=username, display_name=username,
        created_at="2026-01-01T00:00:00Z"), producer=events.PRODUCER, subject=f"user:{user_id}",
        actor=user_id)


async def known_user(cognito: CognitoPool, db: Any, record: Callable[[Any, Envelope], None],
                     prefix: str = "u") -> TestUser:
    """A new Cognito user whose `profile.created` a consumer's `record` has applied on `db`
    (as if its queue had delivered it)."""
    user = await new_user(cognito, prefix)
    created = profile_created(user.id, user.username)
    await db.run(lambda conn: record(conn, created))
    return user
