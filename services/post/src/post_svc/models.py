"""The post service's tables: posts, their earlier versions, likes, media, and a copy of the
social graph (blocks and follows)."""

from datetime import datetime

from sqlalchemy import JSON, ForeignKey, Index, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from chassis.db import UTCDateTime, new_metadata

ID = String(26)  # a ULID
USER_ID = String(64)


class Base(DeclarativeBase):
    metadata = new_metadata()


class Post(Base):
    """A post as it stands now; a deleted one keeps its row (and `seq`) with `deleted_at` set."""

    __tablename__ = "posts"
    __table_args__ = (Index("ix_posts_author", "author_id", "created_at"),)

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    author_id: Mapped[str] = mapped_column(USER_ID)
    author_username: Mapped[str] = mapped_column(String(128))
    text: Mapped[str] = mapped_column(Text)
    visibility: Mapped[str] = mapped_column(String(16))
    reply_to: Mapped[str | None] = mapped_column(ID, nullable=True)
    reply_to_author_id: Mapped[str | None] = mapped_column(USER_ID, nullable=True)
    media_ids: Mapped[list[str]] = mapped_column(JSON)
    media: Mapped[list[dict]] = mapped_column(JSON, default=list, doc="views of media_ids")
    published: Mapped[bool] = mapped_column(
        default=True, doc="false while media it carries are still being processed")
    content_warning: Mapped[str | None] = mapped_column(Text, nullable=True)
    hashtags: Mapped[list[str]] = mapped_column(JSON)
    mentions: Mapped[list[str]] = mapped_column(JSON)
    version: Mapped[int] = mapped_column(default=1)
    seq: Mapped[int] = mapped_column(default=1)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    edited_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class Media(Base):
    """An upload and what processing made of it. The original sits in the private uploads
    bucket under `originals/{id}`; variants go to the public media bucket once all are made.
    `post_id` is the post it is attached to: media belong to at most one post."""

    __tablename__ = "media"
    # the sweep of uploads never finished reads the oldest pending ones
    __table_args__ = (Index("ix_media_post", "post_id"),
                      Index("ix_media_status_created", "status", "created_at"))

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    owner_id: Mapped[str] = mapped_column(USER_ID)
    kind: Mapped[str] = mapped_column(String(8))
    content_type: Mapped[str] = mapped_column(String(100))
    size: Mapped[int] = mapped_column(doc="bytes, as declared when the upload was requested")
    filename: Mapped[str | None] = mapped_column(String(255), nullable=True)
    alt_text: Mapped[str | None] = mapped_column(Text, nullable=True)
    status: Mapped[str] = mapped_column(String(12), doc="pending|processing|ready|failed")
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    width: Mapped[int | None] = mapped_column(nullable=True)
    height: Mapped[int | None] = mapped_column(nullable=True)
    duration_s: Mapped[float | None] = mapped_column(nullable=True)
    blurhash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    variants: Mapped[dict[str, str]] = mapped_column(JSON, default=dict, doc="name -> URL")
    post_id: Mapped[str | None] = mapped_column(ID, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class PostVersion(Base):
    """An earlier text of a post, kept when the author edits it."""

    __tablename__ = "post_versions"

    post_id: Mapped[str] = mapped_column(ForeignKey("posts.id"), primary_key=True)
    version: Mapped[int] = mapped_column(primary_key=True)
    text: Mapped[str] = mapped_column(Text)
    content_warning: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, doc="when this version was written")


class Like(Base):
    __tablename__ = "likes"

    post_id: Mapped[str] = mapped_column(ForeignKey("posts.id"), primary_key=True)
    user_id: Mapped[str] = mapped_column(USER_ID, primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class Block(Base):
    """The profile service's blocks, as its events told us (`blocked` false after an unblock).

    The row outlives an unblock so that `changed_at` can turn away an older event delivered
    late: a block that arrives after its own unblock must not bring the block back.
    """

    __tablename__ = "blocks"

    blocker_id: Mapped[str] = mapped_column(USER_ID, primary_key=True)
    blocked_id: Mapped[str] = mapped_column(USER_ID, primary_key=True)
    blocked: Mapped[bool]
    changed_at: Mapped[datetime] = mapped_column(UTCDateTime)


class Follow(Base):
    """The profile service's follows, as its events told us (`following` false after an
    unfollow; the row stays so that `changed_at` turns away older events delivered late).
    Followers-only posts take replies and likes from followers only."""

    __tablename__ = "follows"

    follower_id: Mapped[str] = mapped_column(USER_ID, primary_key=True)
    followee_id: Mapped[str] = mapped_column(USER_ID, primary_key=True)
    following: Mapped[bool]
    changed_at: Mapped[datetime] = mapped_column(UTCDateTime)
