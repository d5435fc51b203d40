"""The query service's read models: built from events only, rebuilt by replaying the archive.

Every row that events change carries the version that wrote it, so an event older than what
a row already holds is ignored: posts and likes by the post's `seq`, graph edges and
profiles by the event's time and id. Counters move only when a row changes state (a like
becomes active, a post goes live or is deleted), so duplicates never count twice.
Chat channels keep the time and id of the membership event that last set their members,
messages their `change_seq` (see `chat`).
"""

from sqlalchemy import JSON, Boolean, Column, Index, Integer, String, Table, Text, text

from chassis.db import UTCDateTime, new_metadata

metadata = new_metadata()
ID = 64

users = Table(
    "users", metadata,
    Column("user_id", String(ID), primary_key=True),
    Column("username", String(30), nullable=False, default=""),
    Column("display_name", String(50), nullable=False, default=""),
    Column("bio", String(500), nullable=False, default=""),
    Column("avatar_url", String(1024)),
    Column("created_at", UTCDateTime),
    Column("followers_count", Integer, nullable=False, default=0),
    Column("following_count", Integer, nullable=False, default=0),
    Column("posts_count", Integer, nullable=False, default=0),
    Column("changed_at", UTCDateTime),
    Column("changed_by", String(26)),
    Index("ix_users_username", "username"),
)

EDGE_KINDS = ("follow", "block", "mute")
# follow / block / mute edges, source -> target, kept (inactive) after they end so that a late
# older event cannot revive them.
edges = Table(
    "edges", metadata,
    Column("kind", String(8), primary_key=True),
    Column("source", String(ID), primary_key=True),
    Column("target", String(ID), primary_key=True),
    Column("active", Boolean, nullable=False),
    Column("changed_at", UTCDateTime, nullable=False),
    Column("changed_by", String(26), nullable=False),
    # Whom a user follows (blocks, mutes) and who follows them, each read from an index
    # alone: `active` is in both. Without statistics, SQLite prefers an index that covers a
    # query over one that narrows it more, so the source side needs its own besides the key.
    Index("ix_edges_source", "kind", "source", "active", "target"),
    Index("ix_edges_target", "kind", "target", "active", "source"),
)

posts = Table(
    "posts", metadata,
    Column("id", String(ID), primary_key=True),  # ULID: sorts by creation time
    Column("author_id", String(ID), nullable=False),
    Column("author_username", String(30), nullable=False, default=""),
    Column("text", Text, nullable=False, default=""),
    Column("visibility", String(10), nullable=False, default="public"),
    Column("reply_to", String(ID)),
    Column("reply_to_author_id", String(ID)),
    Column("media_ids", JSON, nullable=False, default=list),
    Column("media", JSON, nullable=False, default=list),  # the media views, all ready
    Column("content_warning", String(500)),
    Column("hashtags", JSON, nullable=False, default=list),
    Column("mentions", JSON, nullable=False, default=list),
    Column("version", Integer, nullable=False, default=0),
    Column("seq", Integer, nullable=False),
    Column("created_at", UTCDateTime),
    Column("edited_at", UTCDateTime),
    Column("deleted", Boolean, nullable=False, default=False),
    Column("fanned_out", Boolean, nullable=False, default=True),
    Index("ix_posts_author", "author_id", "id"),
    Index("ix_posts_reply_to", "reply_to", "id"),
    Index("ix_posts_public", "visibility", "id"),
    # The few posts not fanned out (their authors have very many followers), which home
    # timelines merge in at read time: one probe per followed author finds them. The
    # constant `fanned_out` column makes the query's `fanned_out IS 0` one more equality it
    # serves, so that SQLite picks it over ix_posts_author without statistics too.
    Index("ix_posts_unfanned", "author_id", "fanned_out", "id",
          sqlite_where=text("fanned_out IS 0"), postgresql_where=text("fanned_out IS false")),
)

# Counters of a post, separate so that a like or reply arriving before its post still counts.
post_stats = Table(
    "post_stats", metadata,
    Column("post_id", String(ID), primary_key=True),
    Column("like_count", Integer, nullable=False, default=0),
    Column("reply_count", Integer, nullable=False, default=0),
)

post_versions = Table(
    "post_versions", metadata,
    Column("post_id", String(ID), primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("text", Text, nullable=False),
    Column("content_warning", String(500)),
    Column("created_at", UTCDateTime, nullable=False),
)

likes = Table(
    "likes", metadata,
    Column("post_id", String(ID), primary_key=True),
    Column("user_id", String(ID), primary_key=True),
    Column("active", Boolean, nullable=False),
    Column("seq", Integer, nullable=False),
)

post_tags = Table(
    "post_tags", metadata,
    Column("tag", String(200), primary_key=True),
    Column("post_id", String(ID), primary_key=True),
    Index("ix_post_tags_post", "post_id"),  # an edit or a delete drops the post's tags
)

post_mentions = Table(
    "post_mentions", metadata,
    Column("post_id", String(ID), primary_key=True),
    Column("username", String(30), primary_key=True),
    Index("ix_post_mentions_username", "username", "post_id"),
)

# Home timelines, fanned out on write and bounded per user. One B-tree, by reader then post:
# a new post's rows go at the end of each reader's range. Removing an author's posts from a
# reader's timeline scans that reader's few hundred rows; an index on (reader, author), whose
# rows land all over the tree, made fanning out five times dearer in SQLite.
timeline = Table(
    "timeline", metadata,
    Column("user_id", String(ID), primary_key=True),
    Column("post_id", String(ID), primary_key=True),
    Column("author_id", String(ID), nullable=False),
    sqlite_with_rowid=False,
)

# Chat: who is in each channel now, and the messages as message search shows them.
chat_channels = Table(
    "chat_channels", metadata,
    Column("channel_id", String(ID), primary_key=True),
    Column("changed_at", UTCDateTime, nullable=False),  # of the membership event applied
    Column("changed_by", String(26), nullable=False),
)

chat_members = Table(
    "chat_members", metadata,
    Column("channel_id", String(ID), primary_key=True),
    Column("user_id", String(ID), primary_key=True),
    Index("ix_chat_members_user", "user_id", "channel_id"),
)

chat_messages = Table(
    "chat_messages", metadata,
    Column("id", String(ID), primary_key=True),
    Column("channel_id", String(ID), nullable=False),
    Column("seq", Integer, nullable=False),
    Column("sender_id", String(ID), nullable=False),
    Column("text", Text, nullable=False, default=""),
    Column("created_at", UTCDateTime, nullable=False),
    Column("edited_at", UTCDateTime),
    Column("deleted", Boolean, nullable=False, default=False),
    Column("change_seq", Integer, nullable=False),  # the newest change applied
)
