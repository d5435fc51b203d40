"""Post commands: each a synchronous unit of work that writes a change and its event together.

`Database.run` runs them in one transaction (on SQLite's writer thread, or over the async
driver elsewhere). A command on an existing post first locks that post's row, so the
changes to one post, the `seq` each gets and the order of their events all agree.
"""

from typing import Any

from sqlalchemy import Exists, bindparam, delete, exists, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Row
from ulid import ULID

from chassis.db import utcnow
from chassis.events import EventData, new_event, rfc3339
from chassis.outbox import stage_event
from chassis.problems import invalid, not_found

from . import events, media
from .domain import Draft, Revision, can_see, check_author, check_not_blocked
from .models import Base, Block, Follow, Like, Post, PostVersion

OUTBOX = Base.metadata.tables["outbox"]

# Statements are built once: building SQLAlchemy expressions per request costs more CPU than
# running them, and table-level (Core) statements skip the ORM's session bookkeeping.
_POSTS, _VERSIONS, _LIKES, _BLOCKS, _FOLLOWS = (
    m.__table__ for m in (Post, PostVersion, Like, Block, Follow))
_ID, _USER = bindparam("id"), bindparam("user")
_BLOCKED_BY_AUTHOR: Exists = exists().where(
    _BLOCKS.c.blocker_id == _POSTS.c.author_id, _BLOCKS.c.blocked_id == _USER,
    _BLOCKS.c.blocked)
_FOLLOWS_AUTHOR: Exists = exists().where(
    _FOLLOWS.c.follower_id == _USER, _FOLLOWS.c.followee_id == _POSTS.c.author_id,
    _FOLLOWS.c.following)
_CURRENT = select(_POSTS, _BLOCKED_BY_AUTHOR.label("blocked_by_author"),
                  _FOLLOWS_AUTHOR.label("follows_author")).where(_POSTS.c.id == _ID)
# FOR NO KEY UPDATE: changes to one post queue up; replies' FOR SHARE on a parent waits too.
_FOR_CHANGE = _CURRENT.with_for_update(key_share=True)
# FOR SHARE: the parent cannot be deleted between this check and the reply's commit.
_PARENT = (select(_POSTS.c.author_id, _POSTS.c.deleted_at, _POSTS.c.published,
                  _POSTS.c.visibility,
                  _POSTS.c.mentions, _BLOCKED_BY_AUTHOR.label("blocked_by_author"),
                  _FOLLOWS_AUTHOR.label("follows_author"))
           .where(_POSTS.c.id == _ID).with_for_update(read=True))
_INSERT_POST = insert(_POSTS)
_INSERT_VERSION = insert(_VERSIONS)
_UPDATE_POST = update(_POSTS).where(_POSTS.c.id == bindparam("post_id"))
_INSERT_LIKE = {"sqlite": sqlite.insert(_LIKES).on_conflict_do_nothing(),
                "postgresql": postgresql.insert(_LIKES).on_conflict_do_nothing()}
_DELETE_VERSIONS = delete(_VERSIONS).where(_VERSIONS.c.post_id == _ID)
_DELETE_LIKE = delete(_LIKES).where(_LIKES.c.post_id == _ID, _LIKES.c.user_id == _USER)
# The post's columns that `PostState` carries under the same names (its id is `post_id`).
_STATE_COLUMNS = [name for name in events.PostState.model_fields if name != "post_id"]


def create_post(conn: Connection, *, author_id: str, author_username: str, draft: Draft,
                media_limits: media.MediaLimits) -> dict[str, Any]:
    """Publish a post (or a reply); returns its state. A post carrying uploads still being
    processed is kept back (`published` false, no event) until they settle."""
    reply_to_author_id = (_parent_author(conn, draft.reply_to, author_id, author_username)
                          if draft.reply_to else None)
    post_id = str(ULID())
    ready, waiting = media.attach(conn, draft.media_ids, owner_id=author_id, post_id=post_id,
                                  limits=media_limits)
    state = {
        "post_id": post_id, "author_id": author_id, "author_username": author_username,
        "text": draft.body.text, "visibility": draft.visibility, "reply_to": draft.reply_to,
        "reply_to_author_id": reply_to_author_id, "media_ids": draft.media_ids,
        "media": ready, "content_warning": draft.content_warning,
        "hashtags": draft.body.hashtags, "mentions": draft.body.mentions, "version": 1,
        "seq": 1, "created_at": utcnow(), "edited_at": None}
    conn.execute(_INSERT_POST, _columns(state) | {"published": not waiting})
    if not waiting:
        _emit(conn, events.PostCreated(**state), post_id, author_id)
    return state | {"published": not waiting}


def publish_waiting(conn: Connection, post_id: str) -> None:
    """Publish a post kept back for its media once none is still being processed: with the
    media that are ready (those that failed are left out), as of now."""
    post = conn.execute(_FOR_CHANGE, {"id": post_id, "user": ""}).first()
    if post is None or post.published or post.deleted_at is not None:
        return
    attached = {row.id: row for row in media.of_post(conn, post_id)}
    if any(row.status in ("pending", "processing") for row in attached.values()):
        return
    ready = [i for i in post.media_ids if i in attached and attached[i].status == "ready"]
    state = _state(post) | {"media_ids": ready,
                            "media": [media.view(attached[i]) for i in ready],
                            "created_at": utcnow()}
    conn.execute(_UPDATE_POST, {"post_id": post_id, "published": True, "media_ids": ready,
                                "media": state["media"], "created_at": state["created_at"]})
    _emit(conn, events.PostCreated(**state), post_id, post.author_id)


def edit_post(conn: Connection, *, post_id: str, caller: str,
              revision: Revision) -> dict[str, Any]:
    """Change a post's text or content warning, keeping the version it replaces."""
    post = _for_change(conn, post_id, caller)
    check_author(post.author_id, caller, "edit")
    state = _state(post)
    if revision.body is not None:
        state.update(text=revision.body.text, hashtags=revision.body.hashtags,
                     mentions=revision.body.mentions)
    if revision.sets_content_warning:
        state["content_warning"] = revision.content_warning
    if (state["text"], state["content_warning"]) == (post.text, post.content_warning):
        return state  # the same words again are not a new version
    conn.execute(_INSERT_VERSION, {
        "post_id": post_id, "version": post.version, "text": post.text,
        "content_warning": post.content_warning,
        "created_at": post.edited_at or post.created_at})
    state.update(version=post.version + 1, seq=post.seq + 1, edited_at=utcnow())
    conn.execute(_UPDATE_POST, {"post_id": post_id} | {
        k: state[k] for k in ("text", "content_warning", "hashtags", "mentions", "version",
                              "seq", "edited_at")})
    if post.published:  # else its post.created, when it comes, carries the edit
        _emit(conn, events.PostEdited(**state), post_id, caller)
    return state | {"published": post.published}


def delete_post(conn: Connection, *, post_id: str, caller: str) -> None:
    """Delete a post: it answers 404 from now on, and its event outranks every earlier one.

    What the author wrote goes with it (every version); the row stays as a tombstone so that
    replies keep their parent's id and the `seq` series goes on.
    """
    post = _for_change(conn, post_id, caller)
    check_author(post.author_id, caller, "delete")
    seq, now = post.seq + 1, utcnow()
    conn.execute(_UPDATE_POST, {"post_id": post_id, "seq": seq, "deleted_at": now, "text": "",
                                "content_warning": None, "hashtags": [], "mentions": [],
                                "media_ids": [], "media": []})
    conn.execute(_DELETE_VERSIONS, {"id": post_id})
    if not post.published:
        return  # nobody heard of it
    _emit(conn, events.PostDeleted(post_id=post_id, author_id=post.author_id,
                                   reply_to=post.reply_to, seq=seq, deleted_at=now),
          post_id, caller)


def like_post(conn: Connection, *, post_id: str, caller: str, caller_username: str) -> None:
    """`caller` likes the post; liking it again changes nothing. A post they may not see
    answers 404."""
    post = _for_change(conn, post_id, caller)
    if not post.published or not _visible(post, caller, caller_username):
        raise not_found("post")
    check_not_blocked(post.blocked_by_author, "like it")
    added = conn.execute(_INSERT_LIKE[conn.dialect.name],
                         {"post_id": post_id, "user_id": caller, "created_at": utcnow()})
    if added.rowcount:
        _count_like(conn, post, caller, events.PostLiked)


def unlike_post(conn: Connection, *, post_id: str, caller: str) -> None:
    """`caller` takes back a like; not liking it is fine.

    Allowed even to someone the author blocked: taking a like back only removes what the
    author would not want, and refusing it would pin the like to the post.
    """
    post = _for_change(conn, post_id, caller)
    if conn.execute(_DELETE_LIKE, {"id": post_id, "user": caller}).rowcount:
        _count_like(conn, post, caller, events.PostUnliked)


def view(state: dict[str, Any]) -> dict[str, Any]:
    """The post as the API returns it after a write, JSON-ready (it is also stored as the
    response to an Idempotency-Key)."""
    return {"id": state["post_id"], "author_id": state["author_id"], "text": state["text"],
            "visibility": state["visibility"], "reply_to": state["reply_to"],
            "media_ids": state["media_ids"], "media": state.get("media", []),
            "published": state.get("published", True),
            "content_warning": state["content_warning"],
            "hashtags": state["hashtags"], "mentions": state["mentions"],
            "version": state["version"], "created_at": rfc3339(state["created_at"]),
            "edited_at": rfc3339(state["edited_at"])}


def _visible(post: Row[Any], caller: str, caller_username: str) -> bool:
    return can_see(visibility=post.visibility, author_id=post.author_id,
                   mentions=post.mentions, caller=caller, caller_username=caller_username,
                   follows_author=bool(post.follows_author))


def _parent_author(conn: Connection, reply_to: str, caller: str, caller_username: str) -> str:
    """The author of the post replied to: it must exist, the caller must be allowed to see
    it (a post they may not see is as unknown as one that does not exist), and its author
    must not block them."""
    parent = conn.execute(_PARENT, {"id": reply_to, "user": caller}).first()
    if (parent is None or parent.deleted_at is not None or not parent.published
            or not _visible(parent, caller, caller_username)):
        raise invalid("reply_to", "no such post")
    check_not_blocked(parent.blocked_by_author, "reply to it")
    return parent.author_id


def _for_change(conn: Connection, post_id: str, caller: str) -> Row[Any]:
    """The post, locked for this transaction; 404 if it does not exist or was deleted."""
    post = conn.execute(_FOR_CHANGE, {"id": post_id, "user": caller}).first()
    if post is None or post.deleted_at is not None:
        raise not_found("post")
    return post


def _count_like(conn: Connection, post: Row[Any], caller: str,
                event: type[events.LikeChange]) -> None:
    seq = post.seq + 1
    conn.execute(_UPDATE_POST, {"post_id": post.id, "seq": seq})
    _emit(conn, event(post_id=post.id, post_author_id=post.author_id, user_id=caller, seq=seq),
          post.id, caller)


def _state(post: Row[Any]) -> dict[str, Any]:
    """A post row as event-carried state (`PostState`'s fields)."""
    return {"post_id": post.id} | {name: post._mapping[name] for name in _STATE_COLUMNS}


def _columns(state: dict[str, Any]) -> dict[str, Any]:
    return {"id": state["post_id"]} | {name: state[name] for name in _STATE_COLUMNS}


def _emit(conn: Connection, data: EventData, post_id: str, actor: str) -> None:
    emit(conn, data, subject=f"post:{post_id}", actor=actor)


def emit(conn: Connection, data: EventData, *, subject: str, actor: str | None) -> None:
    """Stage an event in the outbox, in the caller's transaction."""
    stage_event(conn, OUTBOX, new_event(data, producer=events.PRODUCER, subject=subject,
                                        actor=actor))
