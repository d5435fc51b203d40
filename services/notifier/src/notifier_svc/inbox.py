"""Notifications from events: who is told what, grouped, and the push jobs that go with them.

Every handler is a synchronous unit of work applied once per event (the consumer's inbox), so
at-least-once delivery of events never notifies twice; the push jobs are written in the same
transaction, one per device, unique per event and device. Nobody is told about their own
actions or by people they blocked or muted, nor of a type they turned off.
"""

from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict
from sqlalchemy import bindparam, exists, insert, or_, select, update
from sqlalchemy.engine import Connection
from ulid import ULID

from chassis.consumer import Apply
from chassis.db import dialect_insert, per_dialect, utcnow
from chassis.events import Envelope

from .models import (
    blocks,
    follows,
    inboxes,
    mutes,
    notifications,
    preferences,
    push_jobs,
    subscriptions,
    users,
)

TYPES = ("follow", "mention", "reply", "like", "chat_message", "call")
ACTORS_KEPT = 10
_USER, _ACTOR = bindparam("user"), bindparam("actor")
# Whether the user blocked or muted the actor, and the user's types turned on or off: one query.
_GATE = select(
    or_(exists().where(blocks.table.c.blocker_id == _USER, blocks.table.c.blocked_id == _ACTOR,
                       blocks.table.c.blocked),
        exists().where(mutes.table.c.muter_id == _USER, mutes.table.c.muted_id == _ACTOR,
                       mutes.table.c.muted)).label("silenced"),
    select(preferences.c.types).where(preferences.c.user_id == _USER)
    .scalar_subquery().label("types"))
_UNREAD_GROUP = (select(notifications).where(
    notifications.c.user_id == _USER, notifications.c.group_key == bindparam("group_key"),
    notifications.c.seq > bindparam("read_seq")).with_for_update())
_DEVICES = select(subscriptions.c.id).where(subscriptions.c.user_id == _USER)
_BY_USERNAME = select(users.c.user_id).where(users.c.username.in_(
    bindparam("names", expanding=True)))
_FOLLOWS = select(exists().where(follows.table.c.follower_id == _USER,
                                 follows.table.c.followee_id == _ACTOR,
                                 follows.table.c.following))


_NEW_INBOX = per_dialect(lambda insert_into: insert_into(inboxes).values(
    user_id=_USER, last_seq=0, read_seq=0).on_conflict_do_nothing())
# The user's next seq (making their inbox if need be), with their read seq: one upsert.
_NEXT_SEQ = per_dialect(lambda insert_into: insert_into(inboxes).values(
    user_id=_USER, last_seq=1, read_seq=0).on_conflict_do_update(
    index_elements=[inboxes.c.user_id], set_={"last_seq": inboxes.c.last_seq + 1})
    .returning(inboxes.c.last_seq, inboxes.c.read_seq))
_NEW_NOTIFICATION = insert(notifications)
_REGROUP = update(notifications).where(notifications.c.id == bindparam("group_id")).values(
    {name: bindparam(f"new_{name}")
     for name in ("actor_ids", "actor_count", "subject", "seq", "updated_at")})
_NEW_PUSH_JOBS = per_dialect(lambda insert_into: insert_into(push_jobs).on_conflict_do_nothing())


def ensure_inbox(conn: Connection, user_id: str) -> None:
    conn.execute(_NEW_INBOX(conn), {"user": user_id})


def notify(conn: Connection, *, user_id: str, kind: str, actor_id: str,
           subject: dict[str, Any], event_id: str, group_key: str | None = None) -> bool:
    """Tell `user_id` that `actor_id` did `kind`; False if they are not to be told."""
    if user_id == actor_id:
        return False
    silenced, types = conn.execute(_GATE, {"user": user_id, "actor": actor_id}).one()
    if silenced or (types or {}).get(kind) is False:
        return False
    seq, read_seq = conn.execute(_NEXT_SEQ(conn), {"user": user_id}).one()
    now = utcnow()
    grouped = group_key and conn.execute(_UNREAD_GROUP, {
        "user": user_id, "group_key": group_key, "read_seq": read_seq}).first()
    if grouped:
        actors = [actor_id, *(a for a in grouped.actor_ids if a != actor_id)]
        conn.execute(_REGROUP, {
            "group_id": grouped.id, "new_actor_ids": actors[:ACTORS_KEPT],
            "new_actor_count": grouped.actor_count + (actor_id not in grouped.actor_ids),
            "new_subject": subject, "new_seq": seq, "new_updated_at": now})
        notification_id = grouped.id
    else:
        notification_id = str(ULID())
        conn.execute(_NEW_NOTIFICATION, {
            "id": notification_id, "user_id": user_id, "type": kind, "group_key": group_key,
            "actor_ids": [actor_id], "actor_count": 1, "subject": subject, "seq": seq,
            "created_at": now, "updated_at": now})
    devices = list(conn.execute(_DEVICES, {"user": user_id}).scalars())
    if devices:
        conn.execute(_NEW_PUSH_JOBS(conn), [
            {"event_id": event_id, "notification_id": notification_id, "subscription_id": d,
             "status": "pending", "attempts": 0, "next_at": now, "created_at": now}
            for d in devices])
    return True


# --- from events ------------------------------------------------------------------------

class _Loose(BaseModel):
    model_config = ConfigDict(extra="ignore")


class Edge(_Loose):
    actor_id: str
    target_id: str


class PostCreated(_Loose):
    post_id: str
    author_id: str
    visibility: str
    reply_to: str | None = None
    reply_to_author_id: str | None = None
    mentions: list[str] = []


class PostLiked(_Loose):
    post_id: str
    post_author_id: str
    user_id: str


class ChatMessage(_Loose):
    id: str
    channel_id: str
    seq: int
    sender_id: str


class ChatPosted(_Loose):
    message: ChatMessage
    push_to: list[str] = []


class CallRinging(_Loose):
    """`call.ringing` as the call service publishes it: the callees' phones should ring."""

    call_id: str
    caller_id: str
    callee_ids: list[str]
    media: str = "audio"


class CallEnded(_Loose):
    """`call.ended`: the callees who never answered get a missed call."""

    call_id: str
    caller_id: str
    reason: str
    missed_ids: list[str] = []


class Profile(_Loose):
    user_id: str
    username: str
    display_name: str = ""
    avatar_url: str | None = None


Told = Callable[[Envelope], list[str]]


def on_followed(conn: Connection, envelope: Envelope) -> list[str]:
    edge = Edge.model_validate(envelope.data)
    follows.record(conn, envelope)
    told = notify(conn, user_id=edge.target_id, kind="follow", actor_id=edge.actor_id,
                  subject={"user_id": edge.actor_id}, event_id=envelope.id,
                  group_key="follow")
    return [edge.target_id] if told else []


def on_post_created(conn: Connection, envelope: Envelope) -> list[str]:
    """A reply tells the parent's author; a mention tells each mentioned user who may see
    the post (a followers-only post only its author's followers)."""
    post = PostCreated.model_validate(envelope.data)
    told: list[str] = []
    subject = {"post_id": post.post_id, "reply_to": post.reply_to}
    if post.reply_to_author_id and notify(
            conn, user_id=post.reply_to_author_id, kind="reply", actor_id=post.author_id,
            subject=subject, event_id=envelope.id):
        told.append(post.reply_to_author_id)
    if post.mentions:
        for user_id in conn.execute(_BY_USERNAME, {"names": post.mentions}).scalars():
            if user_id == post.reply_to_author_id:
                continue  # told of the reply already
            if post.visibility == "followers" and not conn.execute(
                    _FOLLOWS, {"user": user_id, "actor": post.author_id}).scalar():
                continue
            if notify(conn, user_id=user_id, kind="mention", actor_id=post.author_id,
                      subject=subject, event_id=envelope.id):
                told.append(user_id)
    return told


def on_post_liked(conn: Connection, envelope: Envelope) -> list[str]:
    like = PostLiked.model_validate(envelope.data)
    told = notify(conn, user_id=like.post_author_id, kind="like", actor_id=like.user_id,
                  subject={"post_id": like.post_id}, event_id=envelope.id,
                  group_key=f"like:{like.post_id}")
    return [like.post_author_id] if told else []


def on_chat_posted(conn: Connection, envelope: Envelope) -> list[str]:
    """Only the members the chat service marked for push (no live session)."""
    posted = ChatPosted.model_validate(envelope.data)
    m = posted.message
    return [user for user in posted.push_to if notify(
        conn, user_id=user, kind="chat_message", actor_id=m.sender_id,
        subject={"channel_id": m.channel_id, "message_id": m.id, "seq": m.seq},
        event_id=envelope.id, group_key=f"chat:{m.channel_id}")]


def on_call_ringing(conn: Connection, envelope: Envelope) -> list[str]:
    call = CallRinging.model_validate(envelope.data)
    return [user for user in call.callee_ids if notify(
        conn, user_id=user, kind="call", actor_id=call.caller_id,
        subject={"call_id": call.call_id, "media": call.media}, event_id=envelope.id)]


def on_call_ended(conn: Connection, envelope: Envelope) -> list[str]:
    call = CallEnded.model_validate(envelope.data)
    return [user for user in call.missed_ids if notify(
        conn, user_id=user, kind="call", actor_id=call.caller_id,
        subject={"call_id": call.call_id, "missed": True}, event_id=envelope.id)]


def on_profile(conn: Connection, envelope: Envelope) -> list[str]:
    profile = Profile.model_validate(envelope.data)
    values = {"username": profile.username, "display_name": profile.display_name,
              "avatar_url": profile.avatar_url}
    statement = dialect_insert(conn, users).values(user_id=profile.user_id,
                                                                  **values)
    conn.execute(statement.on_conflict_do_update(index_elements=[users.c.user_id],
                                                 set_=values))
    return []


def handlers(after: Callable[[list[str]], Any]) -> dict[str, dict[str, Apply]]:
    """The queues' handlers; `after(users)` runs once a unit that told someone committed."""
    told: dict[str, list[str]] = {}

    def unit(handler: Callable[[Connection, Envelope], list[str]]) -> Apply:
        def run(conn: Connection, envelope: Envelope) -> None:
            told[envelope.id] = handler(conn, envelope)

        async def then(envelope: Envelope) -> None:
            users_told = told.pop(envelope.id, [])
            if users_told:
                await after(users_told)

        return Apply(run, after=then)

    return {
        "notifier-profile": {
            "graph.followed": unit(on_followed),
            "graph.unfollowed": Apply(follows.record),
            "profile.created": Apply(on_profile), "profile.updated": Apply(on_profile),
            **blocks.handlers(), **mutes.handlers()},
        "notifier-post": {"post.created": unit(on_post_created),
                          "post.liked": unit(on_post_liked)},
        "notifier-chat": {"chat.message_posted": unit(on_chat_posted)},
        "notifier-call": {"call.ringing": unit(on_call_ringing),
                          "call.ended": unit(on_call_ended)},
    }

