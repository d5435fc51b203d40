"""Message search as the caller may see it: only channels they are a member of now.

The engine gets the caller's channels (or the one asked for) and, for `from:`, the ids of
the named senders, and filters by them before paginating, so pages are full. The rows are
then read with the membership checked again: a removal that commits between the two reads
hides the message instead of showing it.
"""

from datetime import datetime
from typing import Any

from pydantic import BaseModel
from sqlalchemy import and_, bindparam, select
from sqlalchemy.ext.asyncio import AsyncSession

from chassis.auth import User
from chassis.pagination import Page
from chassis.problems import not_found

from .models import chat_members, chat_messages, users
from .search import MessageScope, SearchEngine
from .search.query import parse_message_query
from .views import Author


class MessageView(BaseModel):
    id: str
    channel_id: str
    seq: int
    sender: Author
    text: str
    created_at: datetime
    edited_at: datetime | None


_VIEWER = bindparam("viewer")
_MY_CHANNELS = select(chat_members.c.channel_id).where(chat_members.c.user_id == _VIEWER)
_USER_IDS = select(users.c.user_id).where(users.c.username.in_(bindparam("names",
                                                                        expanding=True)))
_FOUND = (select(chat_messages, users.c.username, users.c.display_name, users.c.avatar_url)
          .select_from(chat_messages.join(chat_members, and_(
              chat_members.c.channel_id == chat_messages.c.channel_id,
              chat_members.c.user_id == _VIEWER))
              .outerjoin(users, users.c.user_id == chat_messages.c.sender_id))
          .where(chat_messages.c.id.in_(bindparam("ids", expanding=True)),
                 chat_messages.c.deleted.is_(False)))


def message_view(row: Any) -> MessageView:
    username = row.username or ""
    return MessageView(
        id=row.id, channel_id=row.channel_id, seq=row.seq, text=row.text,
        sender=Author(user_id=row.sender_id, username=username,
                      display_name=row.display_name or username, avatar_url=row.avatar_url),
        created_at=row.created_at, edited_at=row.edited_at)


async def search_messages(session: AsyncSession, engine: SearchEngine, viewer: User, q: str, *,
                          channel_id: str | None, limit: int,
                          cursor: str | None) -> Page[MessageView]:
    """One page of the caller's messages matching `q`, newest first; a 404 problem for a
    `channel_id` the caller is not a member of (or that does not exist)."""
    query = parse_message_query(q)
    channels = frozenset((await session.execute(_MY_CHANNELS, {"viewer": viewer.id})).scalars())
    if channel_id is not None:
        if channel_id not in channels:
            raise not_found("channel")
        channels = frozenset({channel_id})
    senders = None
    if query.authors:
        senders = frozenset((await session.execute(
            _USER_IDS, {"names": list(query.authors)})).scalars())
    hits = await engine.search_messages(q, MessageScope(channels, senders), limit=limit,
                                        cursor=cursor)
    rows = (await session.execute(_FOUND, {"viewer": viewer.id, "ids": hits.ids})).all()
    by_id = {row.id: message_view(row) for row in rows}
    return Page(items=[by_id[i] for i in hits.ids if i in by_id], next_cursor=hits.next_cursor)
