"""Event handlers that build the read models and feed the search index.

Each handler runs inside the consumer's transaction (inbox row + side effects commit
together). Handlers are order-safe: they compare the event's version with the row's, apply
only what is newer, and move counters only on real state changes. The search index is
written last, inside the transaction: if the commit then fails, the redelivery rewrites the
same version, which the engine ignores.
"""

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Table, and_, delete, insert, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from chassis.events import Envelope
from post_svc import events as post_events
from profile_svc import events as profile_events

from .models import (
    edges,
    likes,
    post_mentions,
    post_stats,
    post_tags,
    post_versions,
    posts,
    timeline,
    users,
)
from .search import PostDoc, SearchEngine, UserDoc

Handler = Callable[[AsyncSession, Envelope], Awaitable[None]]
EDGE_EVENTS = {
    "graph.followed": ("follow", True), "graph.unfollowed": ("follow", False),
    "graph.blocked": ("block", True), "graph.unblocked": ("block", False),
    "graph.muted": ("mute", True), "graph.unmuted": ("mute", False),
}


def upsert(session: AsyncSession, table: Any) -> Any:
    """INSERT that can say ON CONFLICT, in the session's dialect."""
    dialect = session.bind.dialect.name
    return (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table)


async def locked(session: AsyncSession, table: Table, key: dict[str, Any],
                 placeholder: dict[str, Any], *columns: Any) -> Any:
    """The row with `key`, created as `placeholder` if missing, locked for this transaction.

    Concurrent handlers of one aggregate (a post's create and its edit, say) then take turns
    on the row instead of racing to insert it. SQLite has one writer at a time anyway.
    """
    await session.execute(upsert(session, table).values(**key, **placeholder)
                          .on_conflict_do_nothing(index_elements=list(key)))
    where = and_(*(table.c[name] == value for name, value in key.items()))
    return (await session.execute(select(*columns).where(where).with_for_update())).one()


async def ensure_user(session: AsyncSession, user_id: str) -> None:
    """A users row to count on, even before the user's profile event has arrived."""
    await session.execute(upsert(session, users).values(user_id=user_id)
                          .on_conflict_do_nothing(index_elements=["user_id"]))


async def bump(session: AsyncSession, user_id: str, column: str, delta: int) -> None:
    await ensure_user(session, user_id)
    await session.execute(update(users).where(users.c.user_id == user_id)
                          .values({column: users.c[column] + delta}))


async def bump_post(session: AsyncSession, post_id: str, column: str, delta: int) -> None:
    await session.execute(upsert(session, post_stats).values(post_id=post_id)
                          .on_conflict_do_nothing(index_elements=["post_id"]))
    await session.execute(update(post_stats).where(post_stats.c.post_id == post_id)
                          .values({column: post_stats.c[column] + delta}))


NEVER = datetime(1970, 1, 1, tzinfo=UTC)
# What is left of a deleted post: who wrote it and where it was, no content.
TOMBSTONE = {"author_username": "", "text": "", "visibility": "public", "reply_to_author_id": None,
             "media_ids": [], "content_warning": None, "hashtags": [], "mentions": [],
             "version": 0, "created_at": None, "edited_at": None, "deleted": True,
             "fanned_out": False}


def newer(at: datetime, event_id: str, row: Any) -> bool:
    """Whether an event (time, id) is newer than what last changed `row`."""
    return (at, event_id) > (row.changed_at or NEVER, row.changed_by or "")


class Projector:
    """The query service's event handlers, writing to its tables and its search engine."""

    def __init__(self, *, fanout_threshold: int, follow_backfill: int,
                 search: SearchEngine | None = None) -> None:
        self.search = search  # set when the service starts
        self.fanout_threshold = fanout_threshold
        self.follow_backfill = follow_backfill
        self.grown: set[str] = set()  # home timelines written to since the last trim

    def handlers(self) -> dict[str, dict[str, Handler]]:
        """Handlers per queue, as the chassis consumer takes them."""
        profile: dict[str, Handler] = {"profile.created": self.on_profile,
                                       "profile.updated": self.on_profile}
        profile.update(dict.fromkeys(EDGE_EVENTS, self.on_edge))
        post: dict[str, Handler] = {
            "post.created": self.on_post_state, "post.edited": self.on_post_state,
            "post.deleted": self.on_post_deleted, "post.liked": self.on_like,
            "post.unliked": self.on_like}
        return {"query-profile": profile, "query-post": post}

    def all_handlers(self) -> dict[str, Handler]:
        merged: dict[str, Handler] = {}
        for handlers in self.handlers().values():
            merged.update(handlers)
        return merged

    # profiles -----------------------------------------------------------------------------

    async def on_profile(self, session: AsyncSession, envelope: Envelope) -> None:
        model = (profile_events.ProfileCreated if envelope.type == "profile.created"
                 else profile_events.ProfileUpdated)
        data = model.model_validate(envelope.data)
        row = await locked(session, users, {"user_id": data.user_id}, {},
                           users.c.changed_at, users.c.changed_by)
        if isinstance(data, profile_events.ProfileCreated):  # whenever it arrives
            await session.execute(update(users).where(users.c.user_id == data.user_id,
                                                      users.c.created_at.is_(None))
                                  .values(created_at=data.created_at))
        if not newer(envelope.occurred_at, envelope.id, row):
            return
        values: dict[str, Any] = {
            "username": data.username, "display_name": data.display_name,
            "changed_at": envelope.occurred_at, "changed_by": envelope.id}
        if isinstance(data, profile_events.ProfileUpdated):
            values.update(bio=data.bio, avatar_url=data.avatar_url)
        await session.execute(update(users).where(users.c.user_id == data.user_id)
                              .values(values))
        user = (await session.execute(select(users).where(
            users.c.user_id == data.user_id))).one()
        await self.search.index_user(UserDoc(
            user_id=user.user_id, username=user.username, display_name=user.display_name,
            bio=user.bio, followers_count=user.followers_count,
            version=int(envelope.occurred_at.timestamp() * 1_000_000)))

    # graph --------------------------------------------------------------------------------

    async def on_edge(self, session: AsyncSession, envelope: Envelope) -> None:
        data = profile_events.EdgeEvent.model_validate(envelope.data)
        kind, active = EDGE_EVENTS[envelope.type]
        source, target = data.actor_id, data.target_id
        key = {"kind": kind, "source": source, "target": target}
        row = await locked(session, edges, key,
                           {"active": False, "changed_at": NEVER, "changed_by": ""},
                           edges.c.active, edges.c.changed_at, edges.c.changed_by)
        if not newer(envelope.occurred_at, envelope.id, row):
            return
        await session.execute(update(edges).where(
            edges.c.kind == kind, edges.c.source == source, edges.c.target == target)
            .values(active=active, changed_at=envelope.occurred_at, changed_by=envelope.id))
        if row.active == active:
            return
        if kind == "follow":
            await self._follow_changed(session, source, target, active)
        elif kind == "block" and active:
            await session.execute(delete(timeline).where(or_(
                and_(timeline.c.user_id == source, timeline.c.author_id == target),
                and_(timeline.c.user_id == target, timeline.c.author_id == source))))

    async def _follow_changed(self, session: AsyncSession, follower: str, followee: str,
                              active: bool) -> None:
        # Bumping the followee's counter locks their users row, as a new post of theirs does
        # before fanning out: a follow and a post never miss each other.
        delta = 1 if active else -1
        for user_id, column in sorted({follower: "following_count",
                                       followee: "followers_count"}.items()):
            await bump(session, user_id, column, delta)
        if not active:
            await session.execute(delete(timeline).where(timeline.c.user_id == follower,
                                                         timeline.c.author_id == followee))
            return
        recent = (select(posts.c.id).where(
            posts.c.author_id == followee, posts.c.deleted.is_(False), posts.c.fanned_out,
            posts.c.visibility.in_(("public", "followers")))
            .order_by(posts.c.id.desc()).limit(self.follow_backfill))
        rows = (await session.execute(recent)).scalars().all()
        if rows:
            await session.execute(
                upsert(session, timeline).on_conflict_do_nothing(),
                [{"user_id": follower, "post_id": post_id, "author_id": followee}
                 for post_id in rows])
            self.grown.add(follower)

    # posts --------------------------------------------------------------------------------

    async def _lock_post(self, session: AsyncSession, post_id: str, author_id: str) -> Any:
        """The post's row, locked; seq 0 means no event about it was applied yet."""
        return await locked(session, posts, {"id": post_id},
                            {"author_id": author_id, "seq": 0, "deleted": False},
                            posts.c.seq, posts.c.deleted, posts.c.reply_to)

    async def on_post_state(self, session: AsyncSession, envelope: Envelope) -> None:
        state = post_events.PostState.model_validate(envelope.data)
        row = await self._lock_post(session, state.post_id, state.author_id)
        if row.deleted:
            return  # a delete outranks every version of the post
        await session.execute(
            upsert(session, post_versions).values(
                post_id=state.post_id, version=state.version, text=state.text,
                content_warning=state.content_warning,
                created_at=state.edited_at or state.created_at)
            .on_conflict_do_nothing())
        if row.seq >= state.seq:
            return
        values = {
            "author_id": state.author_id, "author_username": state.author_username,
            "text": state.text, "visibility": state.visibility, "reply_to": state.reply_to,
            "reply_to_author_id": state.reply_to_author_id, "media_ids": state.media_ids,
            "content_warning": state.content_warning, "hashtags": state.hashtags,
            "mentions": state.mentions, "version": state.version, "seq": state.seq,
            "created_at": state.created_at, "edited_at": state.edited_at}
        if row.seq == 0:
            values["fanned_out"] = await self._followers_count(
                session, state.author_id) < self.fanout_threshold
        await session.execute(update(posts).where(posts.c.id == state.post_id).values(values))
        if row.seq == 0:
            await self._went_live(session, state, values["fanned_out"])
        await session.execute(delete(post_tags).where(post_tags.c.post_id == state.post_id))
        await session.execute(delete(post_mentions)
                              .where(post_mentions.c.post_id == state.post_id))
        if state.hashtags:
            await session.execute(insert(post_tags), [
                {"tag": tag, "post_id": state.post_id} for tag in state.hashtags])
        if state.mentions:
            await session.execute(insert(post_mentions), [
                {"post_id": state.post_id, "username": name} for name in state.mentions])
        await self.search.index_post(post_doc(state))

    async def _followers_count(self, session: AsyncSession, user_id: str) -> int:
        count = (await session.execute(select(users.c.followers_count)
                                       .where(users.c.user_id == user_id))).scalar()
        return count or 0

    async def _went_live(self, session: AsyncSession, state: post_events.PostState,
                         fanned_out: bool) -> None:
        """Count the new post and fan it out to its author's and followers' home timelines
        (direct posts reach the people they mention at read time)."""
        await bump(session, state.author_id, "posts_count", 1)
        if state.reply_to:
            await bump_post(session, state.reply_to, "reply_count", 1)
        user_ids = {state.author_id}
        if fanned_out and state.visibility != "direct":
            user_ids.update((await session.execute(select(edges.c.source).where(
                edges.c.kind == "follow", edges.c.target == state.author_id,
                edges.c.active))).scalars())
        await session.execute(upsert(session, timeline).on_conflict_do_nothing(), [
            {"user_id": user_id, "post_id": state.post_id, "author_id": state.author_id}
            for user_id in user_ids])
        self.grown.update(user_ids)

    async def on_post_deleted(self, session: AsyncSession, envelope: Envelope) -> None:
        data = post_events.PostDeleted.model_validate(envelope.data)
        row = await self._lock_post(session, data.post_id, data.author_id)
        if row.seq >= data.seq:
            return
        await session.execute(update(posts).where(posts.c.id == data.post_id).values(
            **TOMBSTONE, author_id=data.author_id, reply_to=data.reply_to, seq=data.seq))
        if row.seq > 0 and not row.deleted:
            await bump(session, data.author_id, "posts_count", -1)
            if row.reply_to:
                await bump_post(session, row.reply_to, "reply_count", -1)
        for table in (timeline, post_tags, post_mentions, post_versions):
            await session.execute(delete(table).where(table.c.post_id == data.post_id))
        await self.search.delete_post(data.post_id, data.seq)

    async def on_like(self, session: AsyncSession, envelope: Envelope) -> None:
        data = post_events.LikeChange.model_validate(envelope.data)
        active = envelope.type == "post.liked"
        key = {"post_id": data.post_id, "user_id": data.user_id}
        row = await locked(session, likes, key, {"active": False, "seq": 0},
                           likes.c.active, likes.c.seq)
        if row.seq >= data.seq:
            return
        await session.execute(update(likes).where(
            likes.c.post_id == data.post_id, likes.c.user_id == data.user_id)
            .values(active=active, seq=data.seq))
        if row.active != active:
            await bump_post(session, data.post_id, "like_count", 1 if active else -1)


def post_doc(state: post_events.PostState) -> PostDoc:
    return PostDoc(
        post_id=state.post_id, author_id=state.author_id,
        author_username=state.author_username, text=state.text,
        content_warning=state.content_warning, hashtags=tuple(state.hashtags),
        mentions=tuple(state.mentions), visibility=state.visibility,
        has_media=bool(state.media_ids), reply_to=state.reply_to,
        created_at=state.created_at, version=state.seq)
