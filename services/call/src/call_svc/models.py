"""The call service's tables: calls and their participants, recordings, live streams, and
copies of what it needs from other services (accounts, blocks, chat channel members).

A call is `ringing` until a callee joins (`active`) and `ended` when everyone has left, every
callee declined, or nobody answered by `ring_deadline`. Each participant is `invited`,
`joined`, `left`, `declined` or `missed`; every change happens under the call row's lock.
"""

from sqlalchemy import JSON, Column, ForeignKey, Index, String, Table

from chassis.db import UTCDateTime, new_metadata
from chassis.graphcopy import EdgeCopy

ID, USER_ID = 26, 64
metadata = new_metadata()

calls = Table(
    "calls", metadata,
    Column("id", String(ID), primary_key=True),
    Column("media", String(8), nullable=False),  # audio | video
    Column("caller_id", String(USER_ID), nullable=False),
    Column("channel_id", String(ID)),
    Column("state", String(8), nullable=False),  # ringing | active | ended
    Column("end_reason", String(12)),  # completed | declined | missed | cancelled
    Column("created_at", UTCDateTime, nullable=False),
    Column("ring_deadline", UTCDateTime, nullable=False),
    Column("answered_at", UTCDateTime),
    Column("ended_at", UTCDateTime),
    Index("ix_calls_ringing", "state", "ring_deadline"),
)

participants = Table(
    "participants", metadata,
    Column("call_id", String(ID), ForeignKey("calls.id"), primary_key=True),
    Column("user_id", String(USER_ID), primary_key=True),
    Column("role", String(8), nullable=False),  # caller | callee
    Column("state", String(8), nullable=False),  # invited | joined | left | declined | missed
    Column("joined_at", UTCDateTime),
    Column("left_at", UTCDateTime),
    Index("ix_participants_user", "user_id"),
)

recordings = Table(
    "recordings", metadata,
    Column("id", String(ID), primary_key=True),
    Column("call_id", String(ID), ForeignKey("calls.id"), nullable=False),
    Column("media_id", String(ID), nullable=False, unique=True),
    Column("started_by", String(USER_ID), nullable=False),
    Column("state", String(10), nullable=False),  # recording | stored | failed
    Column("node_id", String(64), nullable=False),  # the replica whose peer records
    Column("started_at", UTCDateTime, nullable=False),
    Column("stopped_at", UTCDateTime),
    Column("error", String(200)),
    Index("ix_recordings_call", "call_id"),
)

streams = Table(
    "streams", metadata,
    Column("id", String(ID), primary_key=True),
    Column("owner_id", String(USER_ID), nullable=False),
    Column("title", String(200), nullable=False),
    Column("state", String(8), nullable=False),  # created | live | ended
    Column("node_id", String(64)),  # the replica that holds the ingest while live
    Column("created_at", UTCDateTime, nullable=False),
    Column("started_at", UTCDateTime),
    Column("ended_at", UTCDateTime),
    Index("ix_streams_owner", "owner_id"),
)

# Everyone who has an account, from `profile.created`: calls name existing users only.
users = Table(
    "users", metadata,
    Column("user_id", String(USER_ID), primary_key=True),
    Column("username", String(30), nullable=False),
)

# Who is in each chat channel (from chat.channel_created / chat.members_changed, newest wins):
# a call started from a channel rings its other members.
channels = Table(
    "channels", metadata,
    Column("channel_id", String(ID), primary_key=True),
    Column("member_ids", JSON, nullable=False),
    Column("changed_at", UTCDateTime, nullable=False),
)

blocks = EdgeCopy(metadata, "blocks", ("blocker_id", "blocked_id", "blocked"),
                  on_event="graph.blocked", off_event="graph.unblocked")
