"""Chat commands: each a synchronous unit of work (`Database.run`) that writes a change and its
event together. A change to a channel's messages first takes the channel's next seq, which
locks the channel row until commit: the changes to one channel queue up, and their seqs
increase in commit order with no gaps.
"""

from typing import Any

from sqlalchemy import and_, bindparam, delete, func, insert, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError
from ulid import ULID

from chassis.db import dialect_insert, utcnow
from chassis.events import EventData, new_event
from chassis.outbox import stage_event
from chassis.problems import Problem, invalid, not_found

from . import events
from .models import blocks, channels, members, messages, metadata, users

OUTBOX = metadata.tables["outbox"]
_CHANNEL, _USER, _SEQ = bindparam("channel"), bindparam("user"), bindparam("seq")

_NEXT_SEQ = (update(channels).where(channels.c.id == _CHANNEL)
             .values(last_seq=channels.c.last_seq + 1).returning(channels.c.last_seq))
_MEMBER = select(members.c.role, members.c.last_read_seq, channels.c.kind, channels.c.last_seq,
                 ).join(channels, channels.c.id == members.c.channel_id).where(
    members.c.channel_id == _CHANNEL, members.c.user_id == _USER)
_MEMBER_IDS = (select(members.c.user_id).where(members.c.channel_id == _CHANNEL)
               .order_by(members.c.joined_at, members.c.user_id))
_MESSAGE = select(messages).where(messages.c.channel_id == _CHANNEL, messages.c.seq == _SEQ)
_BY_CLIENT_ID = select(messages).where(
    messages.c.channel_id == _CHANNEL, messages.c.sender_id == _USER,
    messages.c.client_msg_id == bindparam("client_msg_id"))
_UPDATE_MESSAGE = update(messages).where(messages.c.channel_id == _CHANNEL,
                                         messages.c.seq == bindparam("at_seq"))
_BLOCKED = select(blocks.between(bindparam("a"), bindparam("b")))
_BY_DM_KEY = select(channels.c.id).where(channels.c.dm_key == bindparam("dm_key"))
_MARK_READ = (update(members).where(members.c.channel_id == _CHANNEL, members.c.user_id == _USER,
                                    members.c.last_read_seq < _SEQ)
              .values(last_read_seq=_SEQ))


def open_channel(conn: Connection, *, caller: str, kind: str, member_ids: list[str],
                 name: str | None, members_max: int) -> tuple[dict[str, Any], bool]:
    """A new channel, or the existing DM between the same two people; returns its view and
    whether it is new."""
    others = sorted(set(member_ids) - {caller})
    _check_users(conn, others)
    if kind == "dm":
        if len(others) != 1:
            raise invalid("member_ids", "a DM has exactly one other member")
        if conn.execute(_BLOCKED, {"a": caller, "b": others[0]}).scalar():
            raise Problem(403, "one of you has blocked the other; you cannot message each other")
        dm_key = ":".join(sorted([caller, others[0]]))
        existing = conn.execute(_BY_DM_KEY, {"dm_key": dm_key}).scalar()
        if existing is not None:
            return channel_view(conn, existing, caller), False
    else:
        if not others:
            raise invalid("member_ids", "a group needs at least one other member")
        if len(others) + 1 > members_max:
            raise invalid("member_ids", f"a group has at most {members_max} members")
        dm_key = None
    channel_id, now = str(ULID()), utcnow()
    try:
        with conn.begin_nested():
            conn.execute(insert(channels), {
                "id": channel_id, "kind": kind, "name": name if kind == "group" else None,
                "dm_key": dm_key, "created_by": caller, "last_seq": 0, "created_at": now})
    except IntegrityError:  # the same DM, opened at the same moment by the other side
        return channel_view(conn, conn.execute(_BY_DM_KEY, {"dm_key": dm_key}).scalar(),
                            caller), False
    everyone = [caller, *others]
    conn.execute(insert(members), [
        {"channel_id": channel_id, "user_id": user, "last_read_seq": 0, "joined_at": now,
         "role": "owner" if user == caller and kind == "group" else "member"}
        for user in everyone])
    _emit(conn, events.ChannelCreated(
        channel_id=channel_id, kind=kind, name=name if kind == "group" else None,
        member_ids=everyone, created_by=caller, created_at=now), channel_id, caller)
    return channel_view(conn, channel_id, caller), True


def change_members(conn: Connection, *, channel_id: str, caller: str, add: list[str],
                   remove: list[str], members_max: int) -> dict[str, Any]:
    """Add members (any member may) or remove them (the owner may; anyone may leave)."""
    member = _membership(conn, channel_id, caller)
    if member.kind != "group":
        raise invalid("channel", "a DM's members cannot change", 422)
    if any(user != caller for user in remove) and member.role != "owner":
        raise Problem(403, "only the channel's owner removes other members")
    current = set(conn.execute(_MEMBER_IDS, {"channel": channel_id}).scalars())
    added = sorted(set(add) - current)
    _check_users(conn, added)
    removed = sorted(set(remove) & current)
    if len(current) + len(added) - len(removed) > members_max:
        raise invalid("member_ids", f"a group has at most {members_max} members")
    now = utcnow()
    if added:
        conn.execute(insert(members), [
            {"channel_id": channel_id, "user_id": user, "role": "member", "joined_at": now,
             "last_read_seq": member.last_seq} for user in added])
    for user in removed:
        conn.execute(delete(members).where(members.c.channel_id == channel_id,
                                           members.c.user_id == user))
    if added or removed:
        _emit(conn, events.MembersChanged(
            channel_id=channel_id, member_ids=sorted(current - set(removed) | set(added)),
            added=added, removed=removed, changed_at=now), channel_id, caller)
    return channel_view(conn, channel_id, caller) if caller not in removed else {}


def post_message(conn: Connection, *, channel_id: str, caller: str, client_msg_id: str,
                 text: str, online: set[str]) -> tuple[dict[str, Any], list[str], bool]:
    """Post a message (a repeat of `client_msg_id` returns the first); returns the message,
    the channel's members and whether it is new. `online` are members with a live
    connection: the others are marked for push."""
    member = _membership(conn, channel_id, caller)
    existing = conn.execute(_BY_CLIENT_ID, {"channel": channel_id, "user": caller,
                                            "client_msg_id": client_msg_id}).first()
    member_ids = list(conn.execute(_MEMBER_IDS, {"channel": channel_id}).scalars())
    if existing is not None:
        return message_view(existing), member_ids, False
    if member.kind == "dm":
        other = next((m for m in member_ids if m != caller), caller)
        if conn.execute(_BLOCKED, {"a": caller, "b": other}).scalar():
            raise Problem(403, "one of you has blocked the other; you cannot message each other")
    seq = conn.execute(_NEXT_SEQ, {"channel": channel_id}).scalar_one()
    message = {"id": str(ULID()), "channel_id": channel_id, "seq": seq, "change_seq": seq,
               "sender_id": caller, "client_msg_id": client_msg_id, "text": text,
               "created_at": utcnow(), "edited_at": None, "deleted": False, "reactions": {}}
    conn.execute(insert(messages), message)
    conn.execute(_MARK_READ, {"channel": channel_id, "user": caller, "seq": seq})
    push_to = [m for m in member_ids if m != caller and m not in online]
    _emit(conn, events.MessagePosted(message=events.Message(**message), member_ids=member_ids,
                                     push_to=push_to), channel_id, caller)
    return message, member_ids, True


def edit_message(conn: Connection, *, channel_id: str, seq: int, caller: str,
                 text: str) -> tuple[dict[str, Any], list[str]]:
    """The sender changes the text; the message takes the channel's next seq as its change."""
    message = _own_live_message(conn, channel_id, seq, caller, "edit")
    if message.text == text:
        return message_view(message), _member_ids(conn, channel_id)
    return _change(conn, message, caller, text=text, edited_at=utcnow())


def delete_message(conn: Connection, *, channel_id: str, seq: int,
                   caller: str) -> tuple[dict[str, Any], list[str]]:
    """The sender deletes a message: it stays as a tombstone (its seq, no text)."""
    message = _own_live_message(conn, channel_id, seq, caller, "delete")
    return _change(conn, message, caller, text="", deleted=True, reactions={})


def react(conn: Connection, *, channel_id: str, seq: int, caller: str, emoji: str,
          on: bool) -> tuple[dict[str, Any], list[str]] | None:
    """Add or take back the caller's reaction; None if that changes nothing."""
    _membership(conn, channel_id, caller)
    message = conn.execute(_MESSAGE, {"channel": channel_id, "seq": seq}).first()
    if message is None or message.deleted:
        raise not_found("message")
    reactions = {k: list(v) for k, v in (message.reactions or {}).items()}
    users = reactions.setdefault(emoji, [])
    if (caller in users) == on:
        return None
    if on:
        users.append(caller)
    else:
        users.remove(caller)
    return _change(conn, message, caller, reactions={k: v for k, v in reactions.items() if v})


def mark_read(conn: Connection, *, channel_id: str, caller: str, seq: int) -> int:
    """Move the caller's read marker forward (never back, never past the last message)."""
    member = _membership(conn, channel_id, caller)
    seq = min(seq, member.last_seq)
    conn.execute(_MARK_READ, {"channel": channel_id, "user": caller, "seq": seq})
    return max(seq, member.last_read_seq)


def _change(conn: Connection, message: Any, caller: str,
            **changes: Any) -> tuple[dict[str, Any], list[str]]:
    change_seq = conn.execute(_NEXT_SEQ, {"channel": message.channel_id}).scalar_one()
    conn.execute(_UPDATE_MESSAGE, {"channel": message.channel_id, "at_seq": message.seq,
                                   "change_seq": change_seq, **changes})
    view = message_view(message) | changes | {"change_seq": change_seq}
    member_ids = _member_ids(conn, message.channel_id)
    _emit(conn, events.MessageChanged(message=events.Message(**view), member_ids=member_ids),
          message.channel_id, caller)
    return view, member_ids


def _own_live_message(conn: Connection, channel_id: str, seq: int, caller: str,
                      verb: str) -> Any:
    _membership(conn, channel_id, caller)
    message = conn.execute(_MESSAGE, {"channel": channel_id, "seq": seq}).first()
    if message is None or message.deleted:
        raise not_found("message")
    if message.sender_id != caller:
        raise Problem(403, f"only the sender may {verb} this message")
    return message


_KNOWN = select(users.c.user_id).where(users.c.user_id.in_(bindparam("ids", expanding=True)))


def _check_users(conn: Connection, user_ids: list[str]) -> None:
    if not user_ids:
        return
    unknown = set(user_ids) - set(conn.execute(_KNOWN, {"ids": user_ids}).scalars())
    if unknown:
        raise invalid("member_ids", f"no such user: {', '.join(sorted(unknown))}")


def record_user(conn: Connection, envelope: Any) -> None:
    """profile.created: the user may be named in channels."""
    data = envelope.data
    conn.execute(dialect_insert(conn, users).values(
        user_id=data["user_id"], username=data["username"]).on_conflict_do_nothing())


def _membership(conn: Connection, channel_id: str, user_id: str) -> Any:
    """The caller's membership; a channel they are not in is as unknown as a missing one."""
    member = conn.execute(_MEMBER, {"channel": channel_id, "user": user_id}).first()
    if member is None:
        raise not_found("channel")
    return member


def _member_ids(conn: Connection, channel_id: str) -> list[str]:
    return list(conn.execute(_MEMBER_IDS, {"channel": channel_id}).scalars())


# --- reading ---------------------------------------------------------------------------

_UNREAD = (select(func.count()).select_from(messages).where(
    messages.c.channel_id == members.c.channel_id, messages.c.seq > members.c.last_read_seq,
    messages.c.sender_id != members.c.user_id, messages.c.deleted.is_(False))
    .scalar_subquery())
_CHANNELS_OF = (select(channels, members.c.last_read_seq, _UNREAD.label("unread_count"))
                .join(members, and_(members.c.channel_id == channels.c.id,
                                    members.c.user_id == _USER)))


def channel_view(conn: Connection, channel_id: str, caller: str) -> dict[str, Any]:
    row = conn.execute(_CHANNELS_OF.where(channels.c.id == channel_id),
                       {"user": caller}).first()
    if row is None:
        raise not_found("channel")
    return _channel(row, _member_ids(conn, channel_id))


def channels_of(conn: Connection, caller: str) -> list[dict[str, Any]]:
    """The caller's channels, most recently created first, with unread counts."""
    rows = conn.execute(_CHANNELS_OF.order_by(channels.c.id.desc()), {"user": caller}).all()
    ids = [row.id for row in rows]
    everyone: dict[str, list[str]] = {i: [] for i in ids}
    if ids:
        for channel_id, user_id in conn.execute(
                select(members.c.channel_id, members.c.user_id)
                .where(members.c.channel_id.in_(ids))
                .order_by(members.c.joined_at, members.c.user_id)):
            everyone[channel_id].append(user_id)
    return [_channel(row, everyone[row.id]) for row in rows]


def cursors_of(conn: Connection, caller: str) -> dict[str, int]:
    """The caller's channels and their last seq now: where a new session starts."""
    return dict(conn.execute(select(channels.c.id, channels.c.last_seq).join(
        members, and_(members.c.channel_id == channels.c.id, members.c.user_id == caller))).all())


def channel_ids_of(conn: Connection, caller: str) -> list[str]:
    return list(conn.execute(select(members.c.channel_id).where(members.c.user_id == caller))
                .scalars())


def history(conn: Connection, *, channel_id: str, caller: str, after_seq: int | None,
            before_seq: int | None, limit: int) -> list[dict[str, Any]]:
    """Messages in seq order: after `after_seq`, or the latest before `before_seq`."""
    _membership(conn, channel_id, caller)
    query = select(messages).where(messages.c.channel_id == channel_id)
    if before_seq is not None:
        query = query.where(messages.c.seq < before_seq)
    if after_seq is not None or before_seq is None and after_seq is None:
        query = query.where(messages.c.seq > (after_seq or 0))
    if before_seq is not None and after_seq is None:
        rows = conn.execute(query.order_by(messages.c.seq.desc()).limit(limit)).all()[::-1]
    else:
        rows = conn.execute(query.order_by(messages.c.seq).limit(limit)).all()
    return [message_view(row) for row in rows]


_CHANGES = (select(messages).where(messages.c.channel_id == _CHANNEL,
                                   messages.c.change_seq > _SEQ)
            .order_by(messages.c.change_seq).limit(bindparam("limit")))


def changes_since(conn: Connection, channel_id: str, after: int,
                  limit: int) -> list[dict[str, Any]]:
    """Messages whose latest change is past `after`, in change order (what `sync` and gap
    filling send)."""
    return [message_view(r) for r in conn.execute(
        _CHANGES, {"channel": channel_id, "seq": after, "limit": limit})]


def member_of(conn: Connection, caller: str, channel_ids: list[str]) -> set[str]:
    if not channel_ids:
        return set()
    return set(conn.execute(select(members.c.channel_id).where(
        members.c.user_id == caller, members.c.channel_id.in_(channel_ids))).scalars())


def message_view(row: Any) -> dict[str, Any]:
    m = row._mapping if hasattr(row, "_mapping") else row
    return {"id": m["id"], "channel_id": m["channel_id"], "seq": m["seq"],
            "change_seq": m["change_seq"], "sender_id": m["sender_id"],
            "client_msg_id": m["client_msg_id"], "text": m["text"],
            "created_at": m["created_at"], "edited_at": m["edited_at"],
            "deleted": m["deleted"], "reactions": dict(m["reactions"] or {})}


def _channel(row: Any, member_ids: list[str]) -> dict[str, Any]:
    return {"id": row.id, "kind": row.kind, "name": row.name, "member_ids": member_ids,
            "last_seq": row.last_seq, "last_read_seq": row.last_read_seq,
            "unread_count": row.unread_count, "created_at": row.created_at}


def _emit(conn: Connection, data: EventData, channel_id: str, actor: str) -> None:
    stage_event(conn, OUTBOX, new_event(data, producer=events.PRODUCER,
                                        subject=f"channel:{channel_id}", actor=actor))
