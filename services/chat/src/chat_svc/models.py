"""The chat service's tables: channels, members, messages, and a copy of the blocks.

Every change to a channel's messages (a new message, an edit, a delete, a reaction) takes the
channel's next `seq`, under the channel row's lock, so seqs are gapless and increase in commit
order. A message keeps the seq it was posted with (`seq`, its place in the channel) and the
seq of its latest change (`change_seq`): `sync` sends every message whose `change_seq` is past
the client's cursor, so edits made while a client was away reach it too.
"""

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    ForeignKey,
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

channels = Table(
    "channels", metadata,
    Column("id", String(ID), primary_key=True),
    Column("kind", String(8), nullable=False),  # dm | group
    Column("name", String(100)),
    # "<smaller user id>:<larger>" for a DM, so the pair has one channel; NULL for groups.
    Column("dm_key", String(2 * USER_ID + 1), unique=True),
    Column("created_by", String(USER_ID), nullable=False),
    Column("last_seq", Integer, nullable=False, default=0),
    Column("created_at", UTCDateTime, nullable=False),
)

members = Table(
    "members", metadata,
    Column("channel_id", String(ID), ForeignKey("channels.id"), primary_key=True),
    Column("user_id", String(USER_ID), primary_key=True),
    Column("role", String(8), nullable=False),  # owner | member
    Column("last_read_seq", Integer, nullable=False, default=0),
    Column("joined_at", UTCDateTime, nullable=False),
    Index("ix_members_user", "user_id"),
)

messages = Table(
    "messages", metadata,
    Column("channel_id", String(ID), ForeignKey("channels.id"), primary_key=True),
    Column("seq", Integer, primary_key=True),
    Column("id", String(ID), nullable=False, unique=True),
    Column("sender_id", String(USER_ID), nullable=False),
    Column("client_msg_id", String(64), nullable=False),
    Column("text", Text, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("edited_at", UTCDateTime),
    Column("deleted", Boolean, nullable=False, default=False),
    Column("reactions", JSON, nullable=False, default=dict),  # emoji -> [user ids]
    Column("change_seq", Integer, nullable=False),
    UniqueConstraint("channel_id", "sender_id", "client_msg_id", name="uq_messages_client_id"),
    Index("ix_messages_change", "channel_id", "change_seq"),
)

# Everyone who has an account, from `profile.created`: a channel names existing users only.
users = Table(
    "users", metadata,
    Column("user_id", String(USER_ID), primary_key=True),
    Column("username", String(30), nullable=False),
)

blocks = EdgeCopy(metadata, "blocks", ("blocker_id", "blocked_id", "blocked"),
                  on_event="graph.blocked", off_event="graph.unblocked")
