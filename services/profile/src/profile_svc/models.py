"""The profile service's tables: profiles and the social graph."""

from datetime import datetime

from sqlalchemy import ForeignKey, Index, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from chassis.db import UTCDateTime, new_metadata, utcnow


class Base(DeclarativeBase):
    metadata = new_metadata()


class Profile(Base):
    __tablename__ = "profiles"

    user_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    username: Mapped[str] = mapped_column(String(30), unique=True)
    email: Mapped[str] = mapped_column(String(320))
    display_name: Mapped[str] = mapped_column(String(50))
    bio: Mapped[str] = mapped_column(String(500), default="")
    avatar_media_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    avatar_url: Mapped[str | None] = mapped_column(String(1024), nullable=True)
    followers_count: Mapped[int] = mapped_column(default=0)
    following_count: Mapped[int] = mapped_column(default=0)
    posts_count: Mapped[int] = mapped_column(default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class _Edge:
    """A directed edge between two users, newest first in lists."""

    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Follow(_Edge, Base):
    __tablename__ = "follows"
    __table_args__ = (Index("ix_follows_followee", "followee_id", "created_at"),
                      Index("ix_follows_follower", "follower_id", "created_at"))

    follower_id: Mapped[str] = mapped_column(ForeignKey("profiles.user_id"), primary_key=True)
    followee_id: Mapped[str] = mapped_column(ForeignKey("profiles.user_id"), primary_key=True)


class Block(_Edge, Base):
    __tablename__ = "blocks"
    __table_args__ = (Index("ix_blocks_blocked", "blocked_id"),)

    blocker_id: Mapped[str] = mapped_column(ForeignKey("profiles.user_id"), primary_key=True)
    blocked_id: Mapped[str] = mapped_column(ForeignKey("profiles.user_id"), primary_key=True)


class Mute(_Edge, Base):
    __tablename__ = "mutes"

    muter_id: Mapped[str] = mapped_column(ForeignKey("profiles.user_id"), primary_key=True)
    muted_id: Mapped[str] = mapped_column(ForeignKey("profiles.user_id"), primary_key=True)


class CountedPost(Base):
    """A post the author's `posts_count` has counted (live) or that was deleted first, kept
    so that duplicated and reordered post events count each post once."""

    __tablename__ = "counted_posts"

    post_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    author_id: Mapped[str] = mapped_column(String(64))
    live: Mapped[bool]


class Upload(Base):
    """A settled upload as the post service's `media.ready`/`media.failed` told us: what an
    `avatar_media_id` may name. Uploads still being processed are not here yet."""

    __tablename__ = "uploads"

    media_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner_id: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(8))
    ready: Mapped[bool]
    avatar_url: Mapped[str | None] = mapped_column(String(1024), nullable=True)
    error: Mapped[str | None] = mapped_column(String(500), nullable=True)
