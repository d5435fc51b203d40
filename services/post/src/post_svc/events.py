"""Events the post service publishes (topic post-events).

Every event about a post carries the post's `seq`, a counter the post service raises on
each change to that post (edit, delete, like, unlike). Consumers apply an event only if its
`seq` is newer than what they hold, so duplicated or reordered deliveries converge on the
same state, and an edit that arrives after the delete cannot bring a post back.
"""

from datetime import datetime
from typing import Literal

from pydantic import Field

from chassis.events import EventData, event_type

PRODUCER = "post"
Visibility = Literal["public", "followers", "direct"]


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
    content_warning: str | None = None
    hashtags: list[str] = Field(default_factory=list, description="normalized (NFKC, casefold)")
    mentions: list[str] = Field(default_factory=list, description="usernames, lowercase")
    version: int = Field(description="1 for the original text, +1 per edit")
    seq: int = Field(description="raised on every change to the post; newer wins")
    created_at: datetime
    edited_at: datetime | None = None


@event_type("post.created", producer=PRODUCER)
class PostCreated(PostState):
    """A new post (or reply) was published."""


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


@event_type("post.unliked", producer=PRODUCER)
class PostUnliked(LikeChange):
    """`user_id` took back a like."""
