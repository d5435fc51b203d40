"""Event handlers that build the read models and feed the search index.

Each handler is a synchronous unit of work (`chassis.consumer.Apply`) that commits with the
consumer's inbox row. Handlers are order-safe: they compare the event's version with the
row's, apply only what is newer, and move counters only on real state changes. The search
index is written first, outside the transaction: it keeps the highest version per document,
so if the unit then fails, the redelivery's second write changes nothing.
"""

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Table, and_, delete, insert, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from chassis.consumer import Apply
from chassis.db import Database
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

EDGE_EVENTS = {
    "graph.followed": ("follow", True), "graph.unfollowed": ("follow", False),
    "graph.blocked": ("block", True), "graph.unblocked": ("block", False),
    "graph.muted": ("mute", True), "graph.unmuted": ("mute", False),
}
NEVER = datetime(1970, 1, 1, tzinfo=UTC)
# What is left of a deleted post: who wrote it and where it was, no content.
TOMBSTONE = {"author_username": "", "text": "", "visibility": "public", "reply_to_author_id": None,
             "media_ids": [], "content_warning": None, "hashtags": [], "mentions": [],
             "version": 0, "created_at": None, "edited_at": None, "deleted": True,
             "fanned_out": False}


def upsert(conn: Connection, table: Table) -> Any:
    """INSERT that can say ON CONFLICT, in the connection's dialect."""
    return (postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert)(table)


def locked(conn: Connection, table: Table, key: dict[str, Any], placeholder: dict[str, Any],
           *columns: Any) -> Any:
    """The row with `key`, created as `placeholder` if missing, locked for this transaction.

    Concurrent handlers of one aggregate (a post's create and its edit, say) then take turns
    on the row instead of racing to insert it. SQLite has one writer at a time anyway.
    """
    conn.execute(upsert(conn, table).values(**key, **placeholder)
                 .on_conflict_do_nothing(index_elements=list(key)))
    where = and_(*(table.c[name] == value for name, value in key.items()))
    return conn.execute(select(*columns).where(where).with_for_update()).one()


def ensure_user(conn: Connection, user_id: str) -> None:
    """A users row to count on, even before the user's profile event has arrived."""
    conn.execute(upsert(conn, users).values(user_id=user_id)
                 .on_conflict_do_nothing(index_elements=["user_id"]))


def bump(conn: Connection, user_id: str, column: str, delta: int) -> None:
    ensure_user(conn, user_id)
    conn.execute(update(users).where(users.c.user_id == user_id)
                 .values({column: users.c[column] + delta}))


def bump_post(conn: Connection, post_id: str, column: str, delta: int) -> None:
    conn.execute(upsert(conn, post_stats).values(post_id=post_id)
                 .on_conflict_do_nothing(index_elements=["post_id"]))
    conn.execute(update(post_stats).where(post_stats.c.post_id == post_id)
                 .values({column: post_stats.c[column] + delta}))


def newer(at: datetime, event_id: str, row: Any) -> bool:
    """Whether an event (time, id) is newer than what last changed `row`."""
    return (at, event_id) > (row.changed_at or NEVER, row.changed_by or "")


def post_doc(state: post_events.PostState) -> PostDoc:
    return PostDoc(
        post_id=state.post_id, author_id=state.author_id,
        author_username=state.author_username, text=state.text,
        content_warning=state.content_warning, hashtags=tuple(state.hashtags),
        mentions=tuple(state.mentions), visibility=state.visibility,
        has_media=bool(state.media_ids), reply_to=state.reply_to,
        created_at=state.created_at, version=state.seq)


def _profile(envelope: Envelope) -> profile_events.ProfileCreated | profile_events.ProfileUpdated:
    model = (profile_events.ProfileCreated if envelope.type == "profile.created"
             else profile_events.ProfileUpdated)
    return model.model_validate(envelope.data)


class Projector:
    """The query service's event handlers, writing to its tables and its search engine."""

    def __init__(self, *, fanout_threshold: int, follow_backfill: int,
                 search: SearchEngine | None = None, db: Database | None = None) -> None:
        self.search = search  # both set when the service starts
        self.db = db
        self.fanout_threshold = fanout_threshold
        self.follow_backfill = follow_backfill
        self.grown: set[str] = set()  # home timelines written to since the last trim

    def handlers(self) -> dict[str, dict[str, Apply]]:
        """Handlers per queue, as the chassis consumer takes them."""
        profile = Apply(self.on_profile, before=self.index_profile)
        edge = Apply(self.on_edge)
        post = Apply(self.on_post_state, before=self.index_post)
        like = Apply(self.on_like)
        return {
            "query-profile": {"profile.created": profile, "profile.updated": profile,
                              **dict.fromkeys(EDGE_EVENTS, edge)},
            "query-post": {"post.created": post, "post.edited": post,
                           "post.deleted": Apply(self.on_post_deleted,
                                                 before=self.unindex_post),
                           "post.liked": like, "post.unliked": like},
        }

    def all_handlers(self) -> dict[str, Apply]:
        merged: dict[str, Apply] = {}
        for handlers in self.handlers().values():
            merged.update(handlers)
        return merged

    # search (before each unit) ------------------------------------------------------------

    async def index_profile(self, envelope: Envelope) -> None:
        data = _profile(envelope)
        async with self.db.sessions() as session:
            followers = (await session.execute(select(users.c.followers_count).where(
                users.c.user_id == data.user_id))).scalar()
        await self.search.index_user(UserDoc(
            user_id=data.user_id, username=data.username, display_name=data.display_name,
            bio=getattr(data, "bio", ""), followers_count=followers or 0,
            version=int(envelope.occurred_at.timestamp() * 1_000_000)))

    async def index_post(self, envelope: Envelope) -> None:
        await self.search.index_post(post_doc(post_events.PostState.model_validate(
            envelope.data)))

    async def unindex_post(self, envelope: Envelope) -> None:
        data = post_events.PostDeleted.model_validate(envelope.data)
        await self.search.delete_post(data.post_id, data.seq)

    # profiles -----------------------------------------------------------------------------

    def on_profile(self, conn: Connection, envelope: Envelope) -> None:
        data = _profile(envelope)
        row = locked(conn, users, {"user_id": data.user_id}, {},
                     users.c.changed_at, users.c.changed_by)
        if isinstance(data, profile_events.ProfileCreated):  # whenever it arrives
            conn.execute(update(users).where(users.c.user_id == data.user_id,
                                             users.c.created_at.is_(None))
                         .values(created_at=data.created_at))
        if not newer(envelope.occurred_at, envelope.id, row):
            return
        values: dict[str, Any] = {
            "username": data.username, "display_name": data.display_name,
            "changed_at": envelope.occurred_at, "changed_by": envelope.id}
        if isinstance(data, profile_events.ProfileUpdated):
            values.update(bio=data.bio, avatar_url=data.avatar_url)
        conn.execute(update(users).where(users.c.user_id == data.user_id).values(values))

    # graph --------------------------------------------------------------------------------

    def on_edge(self, conn: Connection, envelope: Envelope) -> None:
        data = profile_events.EdgeEvent.model_validate(envelope.data)
        kind, active = EDGE_EVENTS[envelope.type]
        source, target = data.actor_id, data.target_id
        key = {"kind": kind, "source": source, "target": target}
        row = locked(conn, edges, key, {"active": False, "changed_at": NEVER, "changed_by": ""},
                     edges.c.active, edges.c.changed_at, edges.c.changed_by)
        if not newer(envelope.occurred_at, envelope.id, row):
            return
        conn.execute(update(edges).where(
            edges.c.kind == kind, edges.c.source == source, edges.c.target == target)
            .values(active=active, changed_at=envelope.occurred_at, changed_by=envelope.id))
        if row.active == active:
            return
        if kind == "follow":
            self._follow_changed(conn, source, target, active)
        elif kind == "block" and active:
            conn.execute(delete(timeline).where(or_(
                and_(timeline.c.user_id == source, timeline.c.author_id == target),
                and_(timeline.c.user_id == target, timeline.c.author_id == source))))

    def _follow_changed(self, conn: Connection, follower: str, followee: str,
                        active: bool) -> None:
        # Bumping the followee's counter locks their users row, as a new post of theirs does
        # before fanning out: a follow and a post never miss each other.
        delta = 1 if active else -1
        for user_id, column in sorted({follower: "following_count",
                                       followee: "followers_count"}.items()):
            bump(conn, user_id, column, delta)
        if not active:
            conn.execute(delete(timeline).where(timeline.c.user_id == follower,
                                                timeline.c.author_id == followee))
            return
        recent = conn.execute(select(posts.c.id).where(
            posts.c.author_id == followee, posts.c.deleted.is_(False), posts.c.fanned_out,
            posts.c.visibility.in_(("public", "followers")))
            .order_by(posts.c.id.desc()).limit(self.follow_backfill)).scalars().all()
        if recent:
            conn.execute(upsert(conn, timeline).on_conflict_do_nothing(), [
                {"user_id": follower, "post_id": post_id, "author_id": followee}
                for post_id in recent])
            self.grown.add(follower)

    # posts --------------------------------------------------------------------------------

    @staticmethod
    def _lock_post(conn: Connection, post_id: str, author_id: str) -> Any:
        """The post's row, locked; seq 0 means no event about it was applied yet."""
        return locked(conn, posts, {"id": post_id},
                      {"author_id": author_id, "seq": 0, "deleted": False},
                      posts.c.seq, posts.c.deleted, posts.c.reply_to)

    def on_post_state(self, conn: Connection, envelope: Envelope) -> None:
        state = post_events.PostState.model_validate(envelope.data)
        row = self._lock_post(conn, state.post_id, state.author_id)
        if row.deleted:
            return  # a delete outranks every version of the post
        conn.execute(upsert(conn, post_versions).values(
            post_id=state.post_id, version=state.version, text=state.text,
            content_warning=state.content_warning,
            created_at=state.edited_at or state.created_at).on_conflict_do_nothing())
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
            followers = conn.execute(select(users.c.followers_count).where(
                users.c.user_id == state.author_id)).scalar()
            values["fanned_out"] = (followers or 0) < self.fanout_threshold
        conn.execute(update(posts).where(posts.c.id == state.post_id).values(values))
        if row.seq == 0:
            self._went_live(conn, state, values["fanned_out"])
        conn.execute(delete(post_tags).where(post_tags.c.post_id == state.post_id))
        conn.execute(delete(post_mentions).where(post_mentions.c.post_id == state.post_id))
        if state.hashtags:
            conn.execute(insert(post_tags), [{"tag": tag, "post_id": state.post_id}
                                             for tag in state.hashtags])
        if state.mentions:
            conn.execute(insert(post_mentions), [{"post_id": state.post_id, "username": name}
                                                 for name in state.mentions])

    def _went_live(self, conn: Connection, state: post_events.PostState,
                   fanned_out: bool) -> None:
        """Count the new post and fan it out to its author's and followers' home timelines
        (direct posts reach the people they mention at read time)."""
        bump(conn, state.author_id, "posts_count", 1)
        if state.reply_to:
            bump_post(conn, state.reply_to, "reply_count", 1)
        user_ids = {state.author_id}
        if fanned_out and state.visibility != "direct":
            user_ids.update(conn.execute(select(edges.c.source).where(
                edges.c.kind == "follow", edges.c.target == state.author_id,
                edges.c.active)).scalars())
        conn.execute(upsert(conn, timeline).on_conflict_do_nothing(), [
            {"user_id": user_id, "post_id": state.post_id, "author_id": state.author_id}
            for user_id in user_ids])
        self.grown.update(user_ids)

    def on_post_deleted(self, conn: Connection, envelope: Envelope) -> None:
        data = post_events.PostDeleted.model_validate(envelope.data)
        row = self._lock_post(conn, data.post_id, data.author_id)
        if row.seq >= data.seq:
            return
        conn.execute(update(posts).where(posts.c.id == data.post_id).values(
            **TOMBSTONE, author_id=data.author_id, reply_to=data.reply_to, seq=data.seq))
        if row.seq > 0 and not row.deleted:
            bump(conn, data.author_id, "posts_count", -1)
            if row.reply_to:
                bump_post(conn, row.reply_to, "reply_count", -1)
        for table in (timeline, post_tags, post_mentions, post_versions):
            conn.execute(delete(table).where(table.c.post_id == data.post_id))

    def on_like(self, conn: Connection, envelope: Envelope) -> None:
        data = post_events.LikeChange.model_validate(envelope.data)
        active = envelope.type == "post.liked"
        key = {"post_id": data.post_id, "user_id": data.user_id}
        row = locked(conn, likes, key, {"active": False, "seq": 0}, likes.c.active, likes.c.seq)
        if row.seq >= data.seq:
            return
        conn.execute(update(likes).where(likes.c.post_id == data.post_id,
                                         likes.c.user_id == data.user_id)
                     .values(active=active, seq=data.seq))
        if row.active != active:
            bump_post(conn, data.post_id, "like_count", 1 if active else -1)
