"""Event handlers that build the read models and feed the search index.

Each handler is a synchronous unit of work (`chassis.consumer.Apply`) that commits with the
consumer's inbox row. Handlers are order-safe: they compare the event's version with the
row's, apply only what is newer, and move counters only on real state changes. The search
index is written first, outside the transaction: it keeps the highest version per document,
so if the unit then fails, the redelivery's second write changes nothing. Chat events have
their own module, `chat`; the row helpers all handlers share are in `rows`.
"""

from typing import Any

from sqlalchemy import (
    String,
    Table,
    and_,
    bindparam,
    delete,
    insert,
    or_,
    select,
    union,
    update,
)
from sqlalchemy.engine import Connection

from chassis.cache import ViewCache
from chassis.consumer import Apply
from chassis.db import Database, DriverStatement
from chassis.events import Envelope
from post_svc import events as post_events
from profile_svc import events as profile_events

from . import chat
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
from .rows import NEVER, STATEMENTS, create_missing, key_where, locked, newer, set_values
from .search import PostDoc, SearchEngine, UserDoc

EDGE_EVENTS = {
    "graph.followed": ("follow", True), "graph.unfollowed": ("follow", False),
    "graph.blocked": ("block", True), "graph.unblocked": ("block", False),
    "graph.muted": ("mute", True), "graph.unmuted": ("mute", False),
}
# What is left of a deleted post: who wrote it and where it was, no content.
TOMBSTONE = {"author_username": "", "text": "", "visibility": "public", "reply_to_author_id": None,
             "media_ids": [], "media": [], "content_warning": None, "hashtags": [],
             "mentions": [],
             "version": 0, "created_at": None, "edited_at": None, "deleted": True,
             "fanned_out": False}


def _add(table: Table, column: str) -> Any:
    return (update(table).where(key_where(table))
            .values({column: table.c[column] + bindparam("delta")}))


def _bump(conn: Connection, table: Table, key: dict[str, Any], column: str, delta: int) -> None:
    """Move a counter; its row is created first if missing (rarely: the update is tried
    first, so the usual case is one statement)."""
    statement = STATEMENTS.get(conn, f"bump:{table.name}:{column}", lambda _: _add(table, column))
    params = {**{f"k_{k}": v for k, v in key.items()}, "delta": delta}
    if conn.execute(statement, params).rowcount == 0:
        create_missing(conn, table, key)
        conn.execute(statement, params)


def bump(conn: Connection, user_id: str, column: str, delta: int) -> None:
    _bump(conn, users, {"user_id": user_id}, column, delta)


def bump_post(conn: Connection, post_id: str, column: str, delta: int) -> None:
    _bump(conn, post_stats, {"post_id": post_id}, column, delta)


# (user_id, post_id, author_id) rows; on conflict the post is already there
_TIMELINE_ADD = DriverStatement(lambda insert_: insert_(timeline).on_conflict_do_nothing(),
                                order=("user_id", "post_id", "author_id"))

_POST_ID = bindparam("post_id")
_DELETE_FOR_POST = {table.name: delete(table).where(table.c.post_id == _POST_ID)
                    for table in (post_tags, post_mentions, post_versions)}
_FOLLOWERS = select(edges.c.source).where(edges.c.kind == "follow",
                                          edges.c.target == bindparam("author"), edges.c.active)
# A post is only in its author's and their followers' home timelines: unfollowing and
# blocking take it out of the others'. So those are where it is looked for, by key.
_HOLDERS = union(_FOLLOWERS, select(bindparam("author", type_=String)))
_OUT_OF_TIMELINES = delete(timeline).where(timeline.c.user_id.in_(_HOLDERS),
                                           timeline.c.post_id == _POST_ID)
_FOLLOWERS_COUNT = select(users.c.followers_count).where(users.c.user_id == bindparam("user"))
_RECENT = (select(posts.c.id).where(
    posts.c.author_id == bindparam("author"), posts.c.deleted.is_(False), posts.c.fanned_out,
    posts.c.visibility.in_(("public", "followers")))
    .order_by(posts.c.id.desc()).limit(bindparam("limit")))
_UNFOLLOWED = delete(timeline).where(timeline.c.user_id == bindparam("follower"),
                                     timeline.c.author_id == bindparam("followee"))
_BLOCKED = delete(timeline).where(or_(
    and_(timeline.c.user_id == bindparam("a"), timeline.c.author_id == bindparam("b")),
    and_(timeline.c.user_id == bindparam("b"), timeline.c.author_id == bindparam("a"))))
_NAMED = select(users.c.user_id).where(users.c.username.in_(bindparam("names", expanding=True)))
_TAGGED = insert(post_tags)
_MENTIONED = insert(post_mentions)
_SET_CREATED = update(users).where(users.c.user_id == bindparam("user"),
                                   users.c.created_at.is_(None)).values(
                                       created_at=bindparam("created_at"))


def post_doc(state: post_events.PostState) -> PostDoc:
    return PostDoc(
        post_id=state.post_id, author_id=state.author_id,
        author_username=state.author_username, text=state.text,
        content_warning=state.content_warning, hashtags=tuple(state.hashtags),
        mentions=tuple(state.mentions), visibility=state.visibility,
        has_media=bool(state.media), reply_to=state.reply_to,
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
        self.home_cache: ViewCache | None = None  # set when the service starts
        # Whose home timeline an event changed, noted by its unit and dropped from the cache
        # once the unit committed.
        self._touched: dict[str, set[str]] = {}

    def handlers(self) -> dict[str, dict[str, Apply]]:
        """Handlers per queue, as the chassis consumer takes them."""
        profile = Apply(self.on_profile, before=self.index_profile)
        edge = Apply(self.on_edge, after=self.forget_homes)
        post = Apply(self.on_post_state, before=self.index_post, after=self.forget_homes)
        like = Apply(self.on_like, after=self.forget_homes)
        return {
            "query-profile": {"profile.created": profile, "profile.updated": profile,
                              **dict.fromkeys(EDGE_EVENTS, edge)},
            "query-post": {"post.created": post, "post.edited": post,
                           "post.deleted": Apply(self.on_post_deleted,
                                                 before=self.unindex_post,
                                                 after=self.forget_homes),
                           "post.liked": like, "post.unliked": like},
            "query-chat": chat.handlers(lambda: self.search),
        }

    def _touch(self, envelope: Envelope, user_ids: Any) -> None:
        self._touched.setdefault(envelope.id, set()).update(user_ids)

    async def forget_homes(self, envelope: Envelope) -> None:
        """Drop the cached home pages the event changed (after its unit committed)."""
        user_ids = self._touched.pop(envelope.id, None)
        if user_ids and self.home_cache is not None:
            await self.home_cache.forget(*user_ids)

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
        row = locked(conn, users, {"user_id": data.user_id}, {}, "changed_at", "changed_by")
        if isinstance(data, profile_events.ProfileCreated):  # whenever it arrives
            conn.execute(_SET_CREATED, {"user": data.user_id, "created_at": data.created_at})
        if not newer(envelope.occurred_at, envelope.id, row):
            return
        values: dict[str, Any] = {
            "username": data.username, "display_name": data.display_name,
            "changed_at": envelope.occurred_at, "changed_by": envelope.id}
        if isinstance(data, profile_events.ProfileUpdated):
            values.update(bio=data.bio, avatar_url=data.avatar_url)
        set_values(conn, users, {"user_id": data.user_id}, values)

    # graph --------------------------------------------------------------------------------

    def on_edge(self, conn: Connection, envelope: Envelope) -> None:
        data = profile_events.EdgeEvent.model_validate(envelope.data)
        kind, active = EDGE_EVENTS[envelope.type]
        source, target = data.actor_id, data.target_id
        key = {"kind": kind, "source": source, "target": target}
        row = locked(conn, edges, key, {"active": False, "changed_at": NEVER, "changed_by": ""},
                     "active", "changed_at", "changed_by")
        if not newer(envelope.occurred_at, envelope.id, row):
            return
        set_values(conn, edges, key, {"active": active, "changed_at": envelope.occurred_at,
                                      "changed_by": envelope.id})
        if row.active == active:
            return
        self._touch(envelope, {source, target} if kind == "block" else {source})
        if kind == "follow":
            self._follow_changed(conn, source, target, active)
        elif kind == "block" and active:
            conn.execute(_BLOCKED, {"a": source, "b": target})

    def _follow_changed(self, conn: Connection, follower: str, followee: str,
                        active: bool) -> None:
        # Bumping the followee's counter locks their users row, as a new post of theirs does
        # before fanning out: a follow and a post never miss each other.
        delta = 1 if active else -1
        for user_id, column in sorted({follower: "following_count",
                                       followee: "followers_count"}.items()):
            bump(conn, user_id, column, delta)
        if not active:
            conn.execute(_UNFOLLOWED, {"follower": follower, "followee": followee})
            return
        recent = conn.execute(_RECENT, {"author": followee,
                                        "limit": self.follow_backfill}).scalars().all()
        _TIMELINE_ADD.many(conn, [(follower, post_id, followee) for post_id in recent])
        if recent:
            self.grown.add(follower)

    # posts --------------------------------------------------------------------------------

    @staticmethod
    def _lock_post(conn: Connection, post_id: str, author_id: str) -> Any:
        """The post's row, locked; seq 0 means no event about it was applied yet."""
        return locked(conn, posts, {"id": post_id},
                      {"author_id": author_id, "seq": 0, "deleted": False},
                      "seq", "deleted", "reply_to")

    def on_post_state(self, conn: Connection, envelope: Envelope) -> None:
        state = post_events.PostState.model_validate(envelope.data)
        values = {
            "author_id": state.author_id, "author_username": state.author_username,
            "text": state.text, "visibility": state.visibility, "reply_to": state.reply_to,
            "reply_to_author_id": state.reply_to_author_id, "media_ids": state.media_ids,
            "media": [m.model_dump(mode="json") for m in state.media],
            "content_warning": state.content_warning, "hashtags": state.hashtags,
            "mentions": state.mentions, "version": state.version, "seq": state.seq,
            "created_at": state.created_at, "edited_at": state.edited_at}
        followers = conn.execute(_FOLLOWERS_COUNT, {"user": state.author_id}).scalar()
        fanned_out = (followers or 0) < self.fanout_threshold
        # Usually no event about the post was applied yet: its whole row goes in at once
        # (a placeholder, a lock and an update cost a post three writes of its row).
        new = STATEMENTS.get(conn, "post:new", lambda insert_: insert_(posts)
                             .on_conflict_do_nothing(index_elements=["id"]))
        if conn.execute(new, {"id": state.post_id, **values,
                              "deleted": False, "fanned_out": fanned_out}).rowcount == 1:
            self._add_version(conn, state)
            self._touch(envelope, self._went_live(conn, state, fanned_out))
            self._add_terms(conn, state)
            return
        row = self._lock_post(conn, state.post_id, state.author_id)
        if row.deleted:
            return  # a delete outranks every version of the post
        self._add_version(conn, state)
        if row.seq >= state.seq:
            return
        if row.seq == 0:
            values["fanned_out"] = fanned_out
        set_values(conn, posts, {"id": state.post_id}, values)
        if row.seq == 0:
            self._touch(envelope, self._went_live(conn, state, fanned_out))
        else:
            self._touch(envelope, conn.execute(_HOLDERS, {"author": state.author_id}).scalars())
            for table in (post_tags, post_mentions):
                conn.execute(_DELETE_FOR_POST[table.name], {"post_id": state.post_id})
        self._add_terms(conn, state)

    @staticmethod
    def _add_version(conn: Connection, state: post_events.PostState) -> None:
        """Keep the text of this version for the post's history (every version, in any
        order: a late one still belongs there)."""
        conn.execute(STATEMENTS.get(conn, "version:add", lambda insert_: insert_(post_versions)
                                    .on_conflict_do_nothing()),
                     {"post_id": state.post_id, "version": state.version, "text": state.text,
                      "content_warning": state.content_warning,
                      "created_at": state.edited_at or state.created_at})

    @staticmethod
    def _add_terms(conn: Connection, state: post_events.PostState) -> None:
        """The post's hashtags and mentions, for tag timelines and direct posts."""
        if state.hashtags:
            conn.execute(_TAGGED, [{"tag": tag, "post_id": state.post_id}
                                   for tag in state.hashtags])
        if state.mentions:
            conn.execute(_MENTIONED, [{"post_id": state.post_id, "username": name}
                                      for name in state.mentions])

    def _went_live(self, conn: Connection, state: post_events.PostState,
                   fanned_out: bool) -> set[str]:
        """Count the new post and fan it out to its author's and followers' home timelines
        (direct posts reach the people they mention at read time); returns whose home
        timelines changed."""
        bump(conn, state.author_id, "posts_count", 1)
        if state.reply_to:
            bump_post(conn, state.reply_to, "reply_count", 1)
        user_ids = {state.author_id}
        if fanned_out and state.visibility != "direct":
            user_ids.update(conn.execute(_FOLLOWERS, {"author": state.author_id})
                            .scalars().all())
        _TIMELINE_ADD.many(conn, [(user_id, state.post_id, state.author_id)
                                  for user_id in user_ids])
        self.grown.update(user_ids)
        if state.visibility == "direct" and state.mentions:
            user_ids.update(conn.execute(_NAMED, {"names": state.mentions}).scalars())
        return user_ids

    def on_post_deleted(self, conn: Connection, envelope: Envelope) -> None:
        data = post_events.PostDeleted.model_validate(envelope.data)
        row = self._lock_post(conn, data.post_id, data.author_id)
        if row.seq >= data.seq:
            return
        set_values(conn, posts, {"id": data.post_id}, {
            **TOMBSTONE, "author_id": data.author_id, "reply_to": data.reply_to,
            "seq": data.seq})
        self._touch(envelope, conn.execute(_HOLDERS, {"author": data.author_id}).scalars())
        if row.seq > 0 and not row.deleted:
            bump(conn, data.author_id, "posts_count", -1)
            if row.reply_to:
                bump_post(conn, row.reply_to, "reply_count", -1)
        conn.execute(_OUT_OF_TIMELINES, {"post_id": data.post_id, "author": data.author_id})
        for statement in _DELETE_FOR_POST.values():
            conn.execute(statement, {"post_id": data.post_id})

    def on_like(self, conn: Connection, envelope: Envelope) -> None:
        data = post_events.LikeChange.model_validate(envelope.data)
        active = envelope.type == "post.liked"
        key = {"post_id": data.post_id, "user_id": data.user_id}
        row = locked(conn, likes, key, {"active": False, "seq": 0}, "active", "seq")
        if row.seq >= data.seq:
            return
        set_values(conn, likes, key, {"active": active, "seq": data.seq})
        self._touch(envelope, {data.user_id})
        if row.active != active:
            bump_post(conn, data.post_id, "like_count", 1 if active else -1)
