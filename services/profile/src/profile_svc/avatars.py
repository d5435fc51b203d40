"""Avatars come through the media pipeline: `PATCH /api/profiles/me {avatar_media_id}` names
an upload, and the avatar shows once the post service reports that upload ready.

The upload may settle before or after the profile names it. `media.ready`/`media.failed`
are kept in `uploads`; naming an upload that settled takes effect at once (or is refused:
someone else's, not an image, failed), naming one still being processed waits for its event,
which then sets `avatar_url` and publishes `profile.updated`.
"""

from typing import Any

from pydantic import ConfigDict
from sqlalchemy import select, update
from sqlalchemy.engine import Connection

from chassis.consumer import Apply
from chassis.db import dialect_insert, utcnow
from chassis.events import Envelope, EventData, new_event
from chassis.outbox import stage_event
from chassis.problems import invalid

from .events import PRODUCER, ProfileUpdated
from .models import Base, Profile, Upload

_UPLOADS, _PROFILES = Upload.__table__, Profile.__table__
OUTBOX = Base.metadata.tables["outbox"]
AVATAR_VARIANT = "thumb"


class Settled(EventData):
    """The fields of `media.ready`/`media.failed` this service reads."""

    model_config = ConfigDict(extra="ignore")

    media_id: str
    owner_id: str
    kind: str
    variants: dict[str, str] = {}
    error: str | None = None


def avatar_url_for(upload: Any, user_id: str) -> str | None:
    """The avatar URL of a settled upload the user names; a problem if it cannot be one.
    None: not settled yet (the avatar follows when it is)."""
    if upload is None:
        return None
    if upload.owner_id != user_id:
        raise invalid("avatar_media_id", "is not an upload of yours")
    if upload.kind != "image":
        raise invalid("avatar_media_id", "must be an image")
    if not upload.ready:
        raise invalid("avatar_media_id", f"could not be processed: {upload.error}")
    return upload.avatar_url


def settled(conn: Connection, envelope: Envelope) -> None:
    """Keep the upload; if a profile waits for it as its avatar, show it."""
    media = Settled.model_validate(envelope.data)
    ready = envelope.type == "media.ready"
    row = {"media_id": media.media_id, "owner_id": media.owner_id, "kind": media.kind,
           "ready": ready, "avatar_url": media.variants.get(AVATAR_VARIANT),
           "error": media.error}
    conn.execute(dialect_insert(conn, _UPLOADS).values(row).on_conflict_do_nothing())
    if not ready or media.kind != "image":
        return
    # Locked by user alone: a PATCH naming this upload right now is waited for and seen.
    profile = conn.execute(select(_PROFILES).where(_PROFILES.c.user_id == media.owner_id)
                           .with_for_update()).first()
    if (profile is None or profile.avatar_media_id != media.media_id
            or profile.avatar_url == row["avatar_url"]):
        return
    conn.execute(update(_PROFILES).where(_PROFILES.c.user_id == profile.user_id)
                 .values(avatar_url=row["avatar_url"], updated_at=utcnow()))
    stage_event(conn, OUTBOX, new_event(
        ProfileUpdated(user_id=profile.user_id, username=profile.username,
                       display_name=profile.display_name, bio=profile.bio,
                       avatar_media_id=media.media_id, avatar_url=row["avatar_url"]),
        producer=PRODUCER, subject=f"user:{profile.user_id}", actor=profile.user_id))


def handlers(forget: Any) -> dict[str, Apply]:
    """`media.ready` and `media.failed` on the `profile-post` queue."""

    async def after(envelope: Envelope) -> None:
        await forget(envelope.data["owner_id"])

    unit = Apply(settled, after=after)
    return {"media.ready": unit, "media.failed": unit}
