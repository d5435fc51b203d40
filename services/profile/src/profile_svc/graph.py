"""Follow, block and mute: the social graph's commands, each with its event in one transaction.

Each command is a synchronous unit of work over a Core connection, run by `Database.run`
(on SQLite's writer thread, or over the async driver elsewhere); `change` is the async entry.
"""

import functools
from collections.abc import Callable
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Exists,
    and_,
    bindparam,
    delete,
    exists,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from chassis.db import Database, utcnow
from chassis.events import EventData, new_event
from chassis.outbox import stage_event
from chassis.problems import Problem, not_found

from . import events
from .domain import GraphRuleBroken, Relationship, check_follow, check_not_self
from .models import Base, Block, Follow, Mute, Profile

OUTBOX = Base.metadata.tables["outbox"]
Command = Callable[..., None]

# Statements are built once: constructing SQLAlchemy expressions per request cost more CPU
# than running them. Table-level (Core) statements also skip the ORM's session bookkeeping.
_ACTOR, _TARGET, _USER, _DELTA = (bindparam(n) for n in ("actor", "target", "user", "delta"))
_FOLLOWS, _BLOCKS, _MUTES, _PROFILES = (m.__table__ for m in (Follow, Block, Mute, Profile))
_RELATIONSHIP = select(
    exists().where(_FOLLOWS.c.follower_id == _ACTOR, _FOLLOWS.c.followee_id == _TARGET),
    exists().where(_FOLLOWS.c.follower_id == _TARGET, _FOLLOWS.c.followee_id == _ACTOR),
    exists().where(_BLOCKS.c.blocker_id == _ACTOR, _BLOCKS.c.blocked_id == _TARGET),
    exists().where(_BLOCKS.c.blocker_id == _TARGET, _BLOCKS.c.blocked_id == _ACTOR),
    exists().where(_MUTES.c.muter_id == _ACTOR, _MUTES.c.muted_id == _TARGET),
    exists().where(_PROFILES.c.user_id == _TARGET),
)
_BUMP = {column: update(_PROFILES).where(_PROFILES.c.user_id == _USER)
         .values({column: _PROFILES.c[column] + _DELTA})
         for column in ("following_count", "followers_count")}
_EDGES = {table.name: (table, *table.primary_key.columns) for table in (_FOLLOWS, _BLOCKS, _MUTES)}
_DELETE_EDGE = {name: delete(table).where(source == _ACTOR, destination == _TARGET)
                for name, (table, source, destination) in _EDGES.items()}
_INSERT_EDGE = {name: insert(table) for name, (table, _, _) in _EDGES.items()}


def _relationship(row: Any) -> Relationship:
    return Relationship(*(bool(v) for v in row[:5]))


async def relationship(session: AsyncSession, actor: str, target: str) -> Relationship:
    """The caller's relationship to `target`, read in one query."""
    return _relationship((await session.execute(
        _RELATIONSHIP, {"actor": actor, "target": target})).one())


def blocked_either_way(viewer: str, user_column: ColumnElement[str]) -> Exists:
    """SQL condition: `viewer` and the user in `user_column` have blocked one another."""
    return exists().where(or_(
        and_(Block.blocker_id == viewer, Block.blocked_id == user_column),
        and_(Block.blocker_id == user_column, Block.blocked_id == viewer)))


async def change(db: Database, command: Command, *, actor: str, target: str) -> None:
    """Run a graph command: a broken rule becomes a problem response, and losing a race to
    an identical concurrent change (a primary-key conflict) counts as success."""
    try:
        await db.run(functools.partial(command, actor=actor, target=target))
    except GraphRuleBroken as error:
        raise Problem(error.status, error.detail) from error
    except IntegrityError:
        return


def _target_state(conn: Connection, actor: str, target: str) -> Relationship:
    """The relationship to `target`, or 404 if there is no such user (one query)."""
    row = conn.execute(_RELATIONSHIP, {"actor": actor, "target": target}).one()
    if not row[5]:
        raise not_found("user")
    return _relationship(row)


def _emit(conn: Connection, data: EventData, actor: str) -> None:
    stage_event(conn, OUTBOX, new_event(data, producer=events.PRODUCER,
                                        subject=f"user:{actor}", actor=actor))


def _add_edge(conn: Connection, table: str, actor: str, target: str) -> None:
    source, destination = (c.name for c in _EDGES[table][1:])
    conn.execute(_INSERT_EDGE[table], {source: actor, destination: target,
                                       "created_at": utcnow()})


def _remove_edge(conn: Connection, table: str, actor: str, target: str) -> bool:
    return bool(conn.execute(_DELETE_EDGE[table], {"actor": actor, "target": target}).rowcount)


def _count_edge(conn: Connection, follower: str, followee: str, delta: int) -> None:
    """Move both users' counters, locking their rows in id order so that concurrent
    opposite follows cannot deadlock."""
    changes = {follower: "following_count", followee: "followers_count"}
    for user_id in sorted(changes):
        conn.execute(_BUMP[changes[user_id]], {"user": user_id, "delta": delta})


def _unfollow_edge(conn: Connection, follower: str, followee: str) -> None:
    if _remove_edge(conn, "follows", follower, followee):
        _count_edge(conn, follower, followee, -1)
        _emit(conn, events.Unfollowed(actor_id=follower, target_id=followee), follower)


def follow(conn: Connection, *, actor: str, target: str) -> None:
    """`actor` follows `target`; following again changes nothing."""
    state = _target_state(conn, actor, target)
    check_follow(actor, target, state)
    if state.following:
        return
    _add_edge(conn, "follows", actor, target)
    _count_edge(conn, actor, target, 1)
    _emit(conn, events.Followed(actor_id=actor, target_id=target), actor)


def unfollow(conn: Connection, *, actor: str, target: str) -> None:
    """`actor` stops following `target`; not following is fine."""
    _target_state(conn, actor, target)
    _unfollow_edge(conn, actor, target)


def block(conn: Connection, *, actor: str, target: str) -> None:
    """`actor` blocks `target`, which also removes the follows between them both ways."""
    check_not_self(actor, target, "block")
    if _target_state(conn, actor, target).blocking:
        return
    _add_edge(conn, "blocks", actor, target)
    _unfollow_edge(conn, actor, target)
    _unfollow_edge(conn, target, actor)
    _emit(conn, events.Blocked(actor_id=actor, target_id=target), actor)


def unblock(conn: Connection, *, actor: str, target: str) -> None:
    """`actor` lifts a block; not blocking is fine."""
    _target_state(conn, actor, target)
    if _remove_edge(conn, "blocks", actor, target):
        _emit(conn, events.Unblocked(actor_id=actor, target_id=target), actor)


def mute(conn: Connection, *, actor: str, target: str) -> None:
    """`actor` mutes `target` (their posts leave the actor's timelines)."""
    check_not_self(actor, target, "mute")
    if _target_state(conn, actor, target).muting:
        return
    _add_edge(conn, "mutes", actor, target)
    _emit(conn, events.Muted(actor_id=actor, target_id=target), actor)


def unmute(conn: Connection, *, actor: str, target: str) -> None:
    """`actor` unmutes `target`; not muting is fine."""
    _target_state(conn, actor, target)
    if _remove_edge(conn, "mutes", actor, target):
        _emit(conn, events.Unmuted(actor_id=actor, target_id=target), actor)
