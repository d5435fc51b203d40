"""Events the post service publishes (topic post-events).

Every event about a post carries the post's `seq`, a counter the post service raises on
each change to that post (edit, delete, like, unlike). Consumers apply an event only if its
`seq` is newer than what they hold, so duplicated or reordered deliveries converge on the
same state, and an edit that arrives after the delete cannot bring a post back.
"""

from datetime import datetime
from typing import Any, Literal

from pydantic import Field

from chassis.events import EventData, event_type

PRODUCER = "post"
Visibility = Literal["public", "followers", "direct"]
MediaKind = Literal["image", "video", "audio"]


class MediaView(EventData):
    """A processed upload as clients see it (`GET /api/media/{id}`, and inside post views)."""

    media_id: str
    kind: MediaKind
    status: Literal["pending", "processing", "ready", "failed"]
    alt_text: str | None = None
    width: int | None = None
    height: int | None = None
    duration_s: float | None = None
    blurhash: str | None = None
    variants: dict[str, str] = Field(default_factory=dict, description="name -> URL")
    error: str | None = None


class PostState(EventData):
    """The whole post as it stands after the change (event-carried state)."""

    post_id: str
    author_id: str
    author_username: str
    text: str
    visibility: Visibility
    reply_to: str | None = None
    reply_to_author_id: str | None = None
    media_ids: list[str] = Field(default_factory=list)
    media: list[MediaView] = Field(default_factory=list, description="of media_ids, all ready")
    content_warning: str | None = None
    hashtags: list[str] = Field(default_factory=list, description="normalized (NFKC, casefold)")
    mentions: list[str] = Field(default_factory=list, description="usernames, lowercase")
    version: int = Field(description="1 for the original text, +1 per edit")
    seq: int = Field(description="raised on every change to the post; newer wins")
    created_at: datetime
    edited_at: datetime | None = None


@event_type("post.created", producer=PRODUCER)
class PostCreated(PostState):
    """A new post (or reply) was published: at once, or, when it carries media, once every
    one of them is processed (those that failed are left out)."""

    @classmethod
    def routing(cls, data: dict[str, Any]) -> dict[str, str]:
        """`notify: yes` when it replies to someone else or mentions anyone: the notifier is
        sent only those (most posts tell nobody)."""
        replied = data.get("reply_to_author_id") not in (None, data.get("author_id"))
        return {"notify": "yes"} if replied or data.get("mentions") else {}


@event_type("post.edited", producer=PRODUCER)
class PostEdited(PostState):
    """The author changed the text or content warning; `version` is the new version."""


@event_type("post.deleted", producer=PRODUCER)
class PostDeleted(EventData):
    """The author deleted the post; nothing with a lower `seq` may bring it back."""

    post_id: str
    author_id: str
    reply_to: str | None = None
    seq: int
    deleted_at: datetime


class LikeChange(EventData):
    post_id: str
    post_author_id: str
    user_id: str
    seq: int


@event_type("post.liked", producer=PRODUCER)
class PostLiked(LikeChange):
    """`user_id` liked the post."""

    @classmethod
    def routing(cls, data: dict[str, Any]) -> dict[str, str]:
        """`notify: yes` unless the author liked their own post."""
        return {"notify": "yes"} if data.get("user_id") != data.get("post_author_id") else {}


@event_type("post.unliked", producer=PRODUCER)
class PostUnliked(LikeChange):
    """`user_id` took back a like."""


class MediaSettled(MediaView):
    owner_id: str
    content_type: str


@event_type("media.ready", producer=PRODUCER)
class MediaReady(MediaSettled):
    """An upload was checked and processed; its variants are served at `variants`."""


@event_type("media.failed", producer=PRODUCER)
class MediaFailed(MediaSettled):
    """An upload was refused (`error` says why); nothing of it is served."""
