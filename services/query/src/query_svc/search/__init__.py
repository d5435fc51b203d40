"""Search over posts, users and chat messages: one interface, two engines (embedded SQLite
FTS5, OpenSearch).

The query service's projections feed documents in with `index_post`/`delete_post`/
`index_user`/`index_message`; `GET /api/search` reads with `search_posts`/`search_users`/
`search_messages`. Every write carries a version (the post's `seq`, the profile event's
order, the message's `change_seq`) and an engine keeps the highest it has seen per document,
tombstones included, so duplicated and reordered writes converge.
"""

from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol


@dataclass(frozen=True)
class PostDoc:
    post_id: str
    author_id: str
    author_username: str
    text: str
    content_warning: str | None
    hashtags: tuple[str, ...]
    mentions: tuple[str, ...]
    visibility: str  # public | followers | direct
    has_media: bool
    reply_to: str | None
    created_at: datetime
    version: int


@dataclass(frozen=True)
class UserDoc:
    user_id: str
    username: str
    display_name: str
    bio: str
    followers_count: int
    version: int


@dataclass(frozen=True)
class MessageDoc:
    message_id: str
    channel_id: str
    sender_id: str
    text: str
    created_at: datetime
    version: int  # the message's change_seq
    deleted: bool = False  # a tombstone: leaves the index, keeps the version


@dataclass(frozen=True)
class MessageScope:
    """Where a message search looks: the channels the caller is a member of (or the one of
    them asked for), and, for `from:`, the ids of the named senders (None: anyone). The
    engine filters by both before paginating, so pages are full."""

    channel_ids: frozenset[str]
    sender_ids: frozenset[str] | None = None


@dataclass(frozen=True)
class Viewer:
    """Who is searching, and what that allows: posts are filtered before pagination."""

    user_id: str
    username: str
    following: frozenset[str] = field(default_factory=frozenset)
    excluded: frozenset[str] = field(default_factory=frozenset)  # blocked either way, muted


@dataclass(frozen=True)
class Hits:
    ids: list[str]
    next_cursor: str | None


class SearchEngine(Protocol):
    async def start(self) -> None: ...
    async def close(self) -> None: ...
    async def reset(self) -> None: ...
    async def refresh(self) -> None:
        """Make acknowledged writes searchable now (OpenSearch shows them within its refresh
        interval, the embedded engine at once); for tests and rebuild tools."""
    async def index_post(self, doc: PostDoc) -> None: ...
    async def delete_post(self, post_id: str, version: int) -> None: ...
    async def index_user(self, doc: UserDoc) -> None: ...
    async def search_posts(self, q: str, viewer: Viewer, *, limit: int,
                           cursor: str | None) -> Hits: ...
    async def search_users(self, q: str, viewer: Viewer, *, limit: int,
                           cursor: str | None) -> Hits: ...
    async def index_message(self, doc: MessageDoc) -> None: ...
    async def search_messages(self, q: str, scope: MessageScope, *, limit: int,
                              cursor: str | None) -> Hits:
        """Messages newest first (see `ranking`)."""
