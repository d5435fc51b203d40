"""Call commands: each a synchronous unit of work (`Database.run`) that changes a call under its
row's lock and stages its event in the same transaction.

The rules a call follows:
- it rings its callees until one joins (then it is `active`) or until `ring_deadline`; callees
  who never joined by then are `missed`, and a call nobody answered ends `missed`;
- it ends `declined` when every callee declined, `cancelled` when the caller leaves before
  anyone answered, and `completed` when, after an answer, at most one person is left in it
  and nobody is still being rung;
- only its participants see it; only invited users join; a recorder is a participant the
  server adds (role `recorder`), never rung and not counted when deciding whether it ends.
"""

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.engine import Connection
from ulid import ULID

from chassis.db import dialect_insert, utcnow
from chassis.events import EventData, new_event
from chassis.outbox import stage_event
from chassis.problems import Problem, invalid, not_found

from . import events
from .models import blocks, calls, channels, metadata, participants, recordings, streams, users

OUTBOX = metadata.tables["outbox"]
_CALL = bindparam("call")
_LOCK = select(calls).where(calls.c.id == _CALL).with_for_update()
_PEOPLE = (select(participants).where(participants.c.call_id == _CALL)
           .order_by(participants.c.role, participants.c.user_id))
_BLOCKED = select(blocks.between(bindparam("a"), bindparam("b")))
_SET_STATE = update(participants).where(participants.c.call_id == _CALL,
                                        participants.c.user_id == bindparam("user"))


def record_user(conn: Connection, envelope: Any) -> None:
    """profile.created: the user may be called."""
    data = envelope.data
    conn.execute(dialect_insert(conn, users).values(
        user_id=data["user_id"], username=data["username"]).on_conflict_do_nothing())


def record_channel(conn: Connection, envelope: Any) -> None:
    """chat.channel_created / chat.members_changed carry the whole member list: newest wins."""
    data = envelope.data
    statement = dialect_insert(conn, channels).values(
        channel_id=data["channel_id"], member_ids=sorted(data["member_ids"]),
        changed_at=envelope.occurred_at)
    conn.execute(statement.on_conflict_do_update(
        index_elements=[channels.c.channel_id],
        set_={"member_ids": statement.excluded.member_ids,
              "changed_at": statement.excluded.changed_at},
        where=channels.c.changed_at < statement.excluded.changed_at))


def start_call(conn: Connection, *, caller: str, callee_ids: list[str] | None,
               channel_id: str | None, media: str, ring_timeout_s: float,
               participants_max: int) -> dict[str, Any]:
    """A new call ringing its callees: the named users, or the other members of a channel."""
    if (callee_ids is None) == (channel_id is None):
        raise invalid("callee_ids", "name the callees or a channel_id, not both")
    if channel_id is not None:
        members = conn.execute(select(channels.c.member_ids).where(
            channels.c.channel_id == channel_id)).scalar()
        if members is None or caller not in members:
            raise not_found("channel")
        # In a channel, the members who have blocked the caller (or whom the caller blocked)
        # are simply not rung.
        callees = [u for u in members if u != caller
                   and not conn.execute(_BLOCKED, {"a": caller, "b": u}).scalar()]
        if not callees:
            raise invalid("channel_id", "nobody else in this channel can be called")
    else:
        callees = sorted(set(callee_ids or ()))
        if caller in callees:
            raise invalid("callee_ids", "you cannot call yourself")
        if not callees:
            raise invalid("callee_ids", "name at least one callee")
        known = set(conn.execute(select(users.c.user_id).where(
            users.c.user_id.in_(callees))).scalars())
        if unknown := [u for u in callees if u not in known]:
            raise invalid("callee_ids", f"no such users: {', '.join(unknown[:5])}")
        if any(conn.execute(_BLOCKED, {"a": caller, "b": u}).scalar() for u in callees):
            raise Problem(403, "one of you has blocked the other: you cannot call them")
    if len(callees) + 1 > participants_max:
        where = "channel_id" if channel_id else "callee_ids"
        raise invalid(where, f"a call has at most {participants_max} participants")
    call_id, now = str(ULID()), utcnow()
    deadline = now + timedelta(seconds=ring_timeout_s)
    conn.execute(insert(calls), {
        "id": call_id, "media": media, "caller_id": caller, "channel_id": channel_id,
        "state": "ringing", "created_at": now, "ring_deadline": deadline})
    conn.execute(insert(participants), [
        {"call_id": call_id, "user_id": user, "role": "caller" if user == caller else "callee",
         "state": "invited"} for user in [caller, *callees]])
    _emit(conn, events.CallRinging(
        call_id=call_id, caller_id=caller, callee_ids=callees, media=media,
        channel_id=channel_id, ring_deadline=deadline), call_id, caller)
    return call_view(conn, call_id, caller)


def call_view(conn: Connection, call_id: str, viewer: str | None) -> dict[str, Any]:
    """The call as its participants see it; to anyone else it does not exist."""
    call = conn.execute(select(calls).where(calls.c.id == call_id)).first()
    people = conn.execute(_PEOPLE, {"call": call_id}).all()
    if call is None or (viewer is not None and viewer not in {p.user_id for p in people}):
        raise not_found("call")
    return _view(call, people)


def calls_of(conn: Connection, user: str, before: str | None,
             limit: int) -> list[dict[str, Any]]:
    """The user's calls (made, received, missed), newest first, ids below `before`."""
    query = (select(calls.c.id).join(participants, participants.c.call_id == calls.c.id)
             .where(participants.c.user_id == user).order_by(calls.c.id.desc()).limit(limit))
    if before is not None:
        query = query.where(calls.c.id < before)
    return [call_view(conn, call_id, None) for call_id in conn.execute(query).scalars()]


def join(conn: Connection, call_id: str, user: str) -> tuple[dict[str, Any], bool]:
    """The user is in the call; returns the call and whether this join answered it."""
    call, me = _locked(conn, call_id, user)
    if call.state == "ended":
        raise Problem(409, "the call has ended")
    now, answered = utcnow(), False
    conn.execute(_SET_STATE, {"call": call_id, "user": user, "state": "joined",
                              "joined_at": now, "left_at": None})
    if me.role == "callee" and call.state == "ringing":
        conn.execute(update(calls).where(calls.c.id == call_id).values(
            state="active", answered_at=now))
        answered = True
    return call_view(conn, call_id, None), answered


def leave(conn: Connection, call_id: str, user: str) -> dict[str, Any]:
    """The user left (hung up or lost the connection); the call may end with it."""
    call, me = _locked(conn, call_id, user)
    if call.state != "ended" and me.state == "joined":
        conn.execute(_SET_STATE, {"call": call_id, "user": user, "state": "left",
                                  "left_at": utcnow()})
        _end_if_over(conn, call_id, user)
    return call_view(conn, call_id, None)


def decline(conn: Connection, call_id: str, user: str) -> dict[str, Any]:
    """A callee will not answer; when every callee has, the call ends `declined`."""
    call, me = _locked(conn, call_id, user)
    if me.role != "callee":
        raise Problem(409, "only a callee declines; the caller leaves")
    if call.state != "ended" and me.state == "invited":
        conn.execute(_SET_STATE, {"call": call_id, "user": user, "state": "declined"})
        _end_if_over(conn, call_id, user)
    return call_view(conn, call_id, None)


def ring_out(conn: Connection, now: datetime, limit: int = 100) -> list[dict[str, Any]]:
    """Calls whose ring deadline passed: the callees not answering are missed, and a call
    nobody answered ends. Returns the calls that changed (safe on every replica at once: each
    call is changed under its lock, once)."""
    due = conn.execute(
        select(calls.c.id).join(participants, participants.c.call_id == calls.c.id).where(
            calls.c.state != "ended", calls.c.ring_deadline < now,
            participants.c.state == "invited").distinct().limit(limit)).scalars().all()
    changed = []
    for call_id in due:
        call = conn.execute(_LOCK, {"call": call_id}).first()
        if call.state == "ended":
            continue
        conn.execute(update(participants).where(
            participants.c.call_id == call_id, participants.c.state == "invited",
            participants.c.role == "callee").values(state="missed"))
        # A caller who never joined their own call is not waiting for anyone any more.
        conn.execute(update(participants).where(
            participants.c.call_id == call_id, participants.c.state == "invited").values(
            state="left", left_at=now))
        _end_if_over(conn, call_id, call.caller_id)
        changed.append(call_view(conn, call_id, None))
    return changed


def add_recorder(conn: Connection, call_id: str, user: str, *, node_id: str) -> dict[str, Any]:
    """A joined participant starts recording: the server joins the call as a recorder."""
    call, me = _locked(conn, call_id, user)
    if call.state == "ended":
        raise Problem(409, "the call has ended")
    if me.state != "joined":
        raise Problem(409, "join the call before recording it")
    if conn.execute(select(recordings.c.id).where(
            recordings.c.call_id == call_id, recordings.c.state == "recording")).first():
        raise Problem(409, "the call is being recorded already")
    recording = {"id": str(ULID()), "call_id": call_id, "media_id": str(ULID()),
                 "started_by": user, "state": "recording", "node_id": node_id,
                 "started_at": utcnow()}
    conn.execute(insert(recordings), recording)
    conn.execute(insert(participants), {
        "call_id": call_id, "user_id": recorder_id(recording["id"]), "role": "recorder",
        "state": "joined", "joined_at": recording["started_at"]})
    return recording


def active_recording(conn: Connection, call_id: str, user: str) -> dict[str, Any]:
    _locked(conn, call_id, user)
    row = conn.execute(select(recordings).where(
        recordings.c.call_id == call_id, recordings.c.state == "recording")).first()
    if row is None:
        raise Problem(409, "the call is not being recorded")
    return dict(row._mapping)


def recording_of(conn: Connection, recording_id: str) -> dict[str, Any]:
    row = conn.execute(select(recordings).where(recordings.c.id == recording_id)).first()
    if row is None:
        raise not_found("recording")
    return dict(row._mapping)


def finish_recording(conn: Connection, recording_id: str, *, error: str | None) -> None:
    """The recorder stopped: its file was stored (or not), and it leaves the call."""
    row = conn.execute(select(recordings).where(recordings.c.id == recording_id)).first()
    if row is None or row.state != "recording":
        return
    now = utcnow()
    conn.execute(update(recordings).where(recordings.c.id == recording_id).values(
        state="failed" if error else "stored", stopped_at=now, error=error and error[:200]))
    conn.execute(_SET_STATE, {"call": row.call_id, "user": recorder_id(recording_id),
                              "state": "left", "left_at": now})


def recorder_id(recording_id: str) -> str:
    return f"recorder:{recording_id}"


def is_recorder(user_id: str) -> bool:
    return user_id.startswith("recorder:")


def joined_ids(conn: Connection, call_id: str) -> list[str]:
    return list(conn.execute(select(participants.c.user_id).where(
        participants.c.call_id == call_id, participants.c.state == "joined",
    ).order_by(participants.c.joined_at, participants.c.user_id)).scalars())


# --- live streams ---------------------------------------------------------------------------

def new_stream(conn: Connection, owner: str, title: str) -> dict[str, Any]:
    stream = {"id": str(ULID()), "owner_id": owner, "title": title, "state": "created",
              "created_at": utcnow()}
    conn.execute(insert(streams), stream)
    return stream_of(conn, stream["id"])


def stream_of(conn: Connection, stream_id: str) -> dict[str, Any]:
    row = conn.execute(select(streams).where(streams.c.id == stream_id)).first()
    if row is None:
        raise not_found("stream")
    return dict(row._mapping)


def claim_stream(conn: Connection, stream_id: str, owner: str, node_id: str) -> dict[str, Any]:
    """The owner's WHIP ingest lands on this replica: one ingest per stream, ever."""
    row = conn.execute(select(streams).where(streams.c.id == stream_id).with_for_update()
                       ).first()
    if row is None or row.owner_id != owner:
        raise not_found("stream")  # someone else's stream is as unknown as a missing one
    if row.state != "created":
        raise Problem(409, "this stream has been published already; create a new one")
    conn.execute(update(streams).where(streams.c.id == stream_id).values(
        state="live", node_id=node_id, started_at=utcnow()))
    return stream_of(conn, stream_id)


def release_stream(conn: Connection, stream_id: str) -> None:
    """The ingest did not start after all: the stream may be published again."""
    conn.execute(update(streams).where(streams.c.id == stream_id, streams.c.state == "live")
                 .values(state="created", node_id=None, started_at=None))


def stream_started(conn: Connection, stream_id: str, hls_url: str) -> None:
    row = stream_of(conn, stream_id)
    _emit(conn, events.LiveStarted(
        stream_id=stream_id, owner_id=row["owner_id"], title=row["title"], hls_url=hls_url,
        started_at=row["started_at"] or utcnow()), stream_id, row["owner_id"],
        subject="stream")


def end_stream(conn: Connection, stream_id: str, hls_url: str) -> bool:
    row = conn.execute(select(streams).where(streams.c.id == stream_id).with_for_update()
                       ).first()
    if row is None or row.state == "ended":
        return False
    now = utcnow()
    conn.execute(update(streams).where(streams.c.id == stream_id).values(
        state="ended", ended_at=now))
    _emit(conn, events.LiveEnded(
        stream_id=stream_id, owner_id=row.owner_id, hls_url=hls_url,
        started_at=row.started_at, ended_at=now), stream_id, row.owner_id, subject="stream")
    return True


# --- internals ------------------------------------------------------------------------------

def _locked(conn: Connection, call_id: str, user: str) -> tuple[Any, Any]:
    """The call, locked, and the user's place in it; a call they are not invited to is as
    unknown to them as a missing one."""
    call = conn.execute(_LOCK, {"call": call_id}).first()
    me = conn.execute(select(participants).where(
        participants.c.call_id == call_id, participants.c.user_id == user)).first()
    if call is None or me is None:
        raise not_found("call")
    return call, me


def _end_if_over(conn: Connection, call_id: str, actor: str) -> None:
    call = conn.execute(select(calls).where(calls.c.id == call_id)).first()
    people = [p for p in conn.execute(_PEOPLE, {"call": call_id}) if p.role != "recorder"]
    joined = [p for p in people if p.state == "joined"]
    ringing = [p for p in people if p.role == "callee" and p.state == "invited"]
    callees = [p for p in people if p.role == "callee"]
    if call.state == "ringing":
        if not ringing:  # every callee declined or stopped being rung
            reason = "declined" if all(p.state == "declined" for p in callees) else "missed"
        elif not any(p.state in ("joined", "invited") for p in people if p.role == "caller"):
            reason = "cancelled"
        else:
            return
    elif len(joined) <= 1 and not ringing:
        reason = "completed"
    else:
        return
    now = utcnow()
    conn.execute(update(calls).where(calls.c.id == call_id).values(
        state="ended", end_reason=reason, ended_at=now))
    # Whoever is still in an ended call is out of it now (the recorder too).
    conn.execute(update(participants).where(
        participants.c.call_id == call_id, participants.c.state == "joined").values(
        state="left", left_at=now))
    answered = call.answered_at
    _emit(conn, events.CallEnded(
        call_id=call_id, caller_id=call.caller_id, reason=reason,
        participant_ids=[p.user_id for p in people if p.joined_at is not None],
        missed_ids=[p.user_id for p in callees if p.state in ("missed", "invited")],
        created_at=call.created_at, answered_at=answered, ended_at=now,
        duration_s=round((now - answered).total_seconds(), 3) if answered else 0.0),
        call_id, actor)


def _view(call: Any, people: list[Any]) -> dict[str, Any]:
    return {"id": call.id, "media": call.media, "caller_id": call.caller_id,
            "channel_id": call.channel_id, "state": call.state, "end_reason": call.end_reason,
            "created_at": call.created_at, "ring_deadline": call.ring_deadline,
            "answered_at": call.answered_at, "ended_at": call.ended_at,
            "participants": [{"user_id": p.user_id, "role": p.role, "state": p.state}
                             for p in people]}


def _emit(conn: Connection, data: EventData, subject_id: str, actor: str,
          subject: str = "call") -> None:
    stage_event(conn, OUTBOX, new_event(data, producer=events.PRODUCER,
                                        subject=f"{subject}:{subject_id}", actor=actor))
