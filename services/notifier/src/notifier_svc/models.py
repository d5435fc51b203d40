"""The notifier's tables: notifications with per-user seq, preferences, push subscriptions and
push jobs, and copies of users, blocks and mutes from the profile service."""

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Index,
    Integer,
    String,
    Table,
    Text,
    UniqueConstraint,
)

from chassis.db import UTCDateTime, new_metadata
from chassis.graphcopy import EdgeCopy

ID, USER_ID = 26, 64
metadata = new_metadata()

users = Table(
    "users", metadata,
    Column("user_id", String(USER_ID), primary_key=True),
    Column("username", String(30), nullable=False),
    Column("display_name", String(50), nullable=False, default=""),
    Column("avatar_url", String(1024)),
    Index("ix_users_username", "username"),
)

# Each change to a user's notifications takes the user's next seq: the inbox is ordered by
# it, the SSE stream resumes from it (Last-Event-ID), "read up to" compares with it.
inboxes = Table(
    "inboxes", metadata,
    Column("user_id", String(USER_ID), primary_key=True),
    Column("last_seq", Integer, nullable=False, default=0),
    Column("read_seq", Integer, nullable=False, default=0),
)

notifications = Table(
    "notifications", metadata,
    Column("id", String(ID), primary_key=True),
    Column("user_id", String(USER_ID), nullable=False),
    Column("type", String(16), nullable=False),
    # Likes of one post, follows of one user: while unread, later ones join the same row.
    Column("group_key", String(128)),
    Column("actor_ids", JSON, nullable=False),  # newest first
    Column("actor_count", Integer, nullable=False, default=1),
    Column("subject", JSON, nullable=False),  # {post_id} | {channel_id, message_id} | {call_id}
    Column("seq", Integer, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Index("ix_notifications_user_seq", "user_id", "seq"),
    Index("ix_notifications_group", "user_id", "group_key"),
)

preferences = Table(
    "preferences", metadata,
    Column("user_id", String(USER_ID), primary_key=True),
    Column("types", JSON, nullable=False),  # type -> bool; missing means on
    Column("previews", Boolean, nullable=False, default=False),
)

subscriptions = Table(
    "subscriptions", metadata,
    Column("id", String(ID), primary_key=True),
    Column("user_id", String(USER_ID), nullable=False),
    Column("kind", String(8), nullable=False),  # webpush | apns | fcm
    Column("endpoint", String(2048)),  # Web Push
    Column("p256dh", String(128)),
    Column("auth", String(64)),
    Column("token", String(4096)),  # APNs / FCM device token
    Column("endpoint_arn", String(512)),  # its SNS platform endpoint
    Column("created_at", UTCDateTime, nullable=False),
    UniqueConstraint("user_id", "kind", "endpoint", "token", name="uq_subscriptions_device"),
    Index("ix_subscriptions_user", "user_id"),
)

push_jobs = Table(
    "push_jobs", metadata,
    Column("id", Integer().with_variant(BigInteger(), "postgresql"), primary_key=True,
           autoincrement=True),
    Column("event_id", String(64), nullable=False),
    Column("notification_id", String(ID), nullable=False),
    Column("subscription_id", String(ID), nullable=False),
    Column("status", String(8), nullable=False),  # pending | done | failed
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_at", UTCDateTime, nullable=False),
    Column("last_error", Text),
    Column("created_at", UTCDateTime, nullable=False),
    # At-least-once input never pushes twice: one job per event and device.
    UniqueConstraint("event_id", "subscription_id", name="uq_push_jobs_event_device"),
    Index("ix_push_jobs_due", "status", "next_at"),
    # a device's jobs go with it (unsubscribed, or gone at the push service)
    Index("ix_push_jobs_subscription", "subscription_id"),
)

blocks = EdgeCopy(metadata, "blocks", ("blocker_id", "blocked_id", "blocked"),
                  on_event="graph.blocked", off_event="graph.unblocked")
mutes = EdgeCopy(metadata, "mutes", ("muter_id", "muted_id", "muted"),
                 on_event="graph.muted", off_event="graph.unmuted")
follows = EdgeCopy(metadata, "follows", ("follower_id", "followee_id", "following"),
                   on_event="graph.followed", off_event="graph.unfollowed")
