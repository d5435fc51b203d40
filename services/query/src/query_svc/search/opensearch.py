"""OpenSearchEngine: the search interface over an OpenSearch cluster (opensearch-py, async).

Documents are indexed with id = post (user, message) id and external versioning, so OpenSearch
itself keeps the highest version: a duplicated or late write answers 409, which is the
normal outcome here, not an error. What is sent is built in `opensearch_bodies`.
"""

import contextlib
import time
from datetime import timedelta
from typing import Any

from opensearchpy import AsyncOpenSearch
from opensearchpy.exceptions import ConflictError, NotFoundError, RequestError

from . import Hits, MessageDoc, MessageScope, PostDoc, UserDoc, Viewer
from . import cursor as cursors
from .opensearch_bodies import (
    message_request,
    message_search_body,
    messages_index_body,
    post_request,
    post_search_body,
    posts_index_body,
    tombstone_request,
    user_request,
    user_search_body,
    users_index_body,
)
from .query import parse_message_query, parse_post_query, parse_user_query
from .ranking import RECENCY_HALF_LIFE

_POST_KEY = (float, int, str)  # _score, created_at (epoch ms), post_id
_USER_KEY = (float, int, str, str)  # _score (the tier), followers_count, username, user_id
_MESSAGE_KEY = (int, str)  # created_at (epoch ms), message_id


class OpenSearchEngine:
    """Posts in index `{prefix}posts`, users in `{prefix}users`, chat messages in
    `{prefix}messages`."""

    def __init__(self, url: str, prefix: str = "asyncsns-", *, refresh_interval: str = "250ms",
                 half_life: timedelta = RECENCY_HALF_LIFE, client: Any | None = None) -> None:
        self._url = url
        self.posts_index = f"{prefix}posts"
        self.users_index = f"{prefix}users"
        self.messages_index = f"{prefix}messages"
        self._refresh_interval = refresh_interval
        self._half_life_ms = half_life / timedelta(milliseconds=1)
        self._client = client  # tests may pass a stand-in; start() builds the real one

    def _indexes(self) -> tuple[tuple[str, dict[str, Any]], ...]:
        return ((self.posts_index, posts_index_body(self._refresh_interval)),
                (self.users_index, users_index_body(self._refresh_interval)),
                (self.messages_index, messages_index_body(self._refresh_interval)))

    @property
    def client(self) -> Any:
        if self._client is None:
            raise RuntimeError("OpenSearchEngine.start() was not awaited")
        return self._client

    async def start(self) -> None:
        """Connect, and create the indexes that do not exist yet."""
        if self._client is None:
            self._client = AsyncOpenSearch(hosts=[self._url])
        for name, body in self._indexes():
            if not await self.client.indices.exists(index=name):
                try:
                    await self.client.indices.create(index=name, body=body)
                except RequestError as exc:  # another replica created it first
                    if exc.error != "resource_already_exists_exception":
                        raise

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def reset(self) -> None:
        """Delete and recreate every index (tests, rebuilds)."""
        for name, body in self._indexes():
            with contextlib.suppress(NotFoundError):
                await self.client.indices.delete(index=name, ignore_unavailable=True)
            await self.client.indices.create(index=name, body=body)

    async def refresh(self) -> None:
        """Make every acknowledged write visible now instead of within `refresh_interval`."""
        await self.client.indices.refresh(
            index=f"{self.posts_index},{self.users_index},{self.messages_index}")

    async def _versioned(self, request: dict[str, Any]) -> None:
        with contextlib.suppress(ConflictError):  # an equal or newer version is stored
            await self.client.index(**request)

    async def index_post(self, doc: PostDoc) -> None:
        await self._versioned(post_request(self.posts_index, doc))

    async def delete_post(self, post_id: str, version: int) -> None:
        await self._versioned(tombstone_request(self.posts_index, post_id, version))

    async def index_user(self, doc: UserDoc) -> None:
        await self._versioned(user_request(self.users_index, doc))

    async def index_message(self, doc: MessageDoc) -> None:
        await self._versioned(message_request(self.messages_index, doc))

    async def search_posts(self, q: str, viewer: Viewer, *, limit: int,
                           cursor: str | None) -> Hits:
        cursors.check_limit(limit)
        query = parse_post_query(q)
        position = cursors.decode("posts", q, cursor, _POST_KEY, anchored=True)
        anchor = position.anchor if position else time.time_ns() // 1_000_000
        body = post_search_body(query, viewer, limit=limit + 1, anchor_ms=anchor,
                                half_life_ms=self._half_life_ms,
                                after=position.key if position else None)
        hits = (await self.client.search(index=self.posts_index, body=body))["hits"]["hits"]
        return _page("posts", q, hits, limit, anchor)

    async def search_users(self, q: str, viewer: Viewer, *, limit: int,
                           cursor: str | None) -> Hits:
        cursors.check_limit(limit)
        query = parse_user_query(q)
        position = cursors.decode("users", q, cursor, _USER_KEY, anchored=False)
        body = user_search_body(query, viewer, limit=limit + 1,
                                after=position.key if position else None)
        hits = (await self.client.search(index=self.users_index, body=body))["hits"]["hits"]
        return _page("users", q, hits, limit, None)

    async def search_messages(self, q: str, scope: MessageScope, *, limit: int,
                              cursor: str | None) -> Hits:
        cursors.check_limit(limit)
        query = parse_message_query(q)
        position = cursors.decode("messages", q, cursor, _MESSAGE_KEY, anchored=False)
        if not scope.channel_ids or scope.sender_ids == frozenset():
            return Hits([], None)
        body = message_search_body(query, scope, limit=limit + 1,
                                   after=position.key if position else None)
        hits = (await self.client.search(index=self.messages_index, body=body))["hits"]["hits"]
        return _page("messages", q, hits, limit, None)


def _page(kind: str, q: str, hits: list[dict[str, Any]], limit: int,
          anchor: int | None) -> Hits:
    """Hits for one page; asked for limit + 1, so a next page exists iff one more came back."""
    if len(hits) <= limit:
        return Hits([hit["_id"] for hit in hits], None)
    hits = hits[:limit]
    last = cursors.Position(list(hits[-1]["sort"]), anchor)
    return Hits([hit["_id"] for hit in hits], cursors.encode(kind, q, last))
