"""Follow, block and mute: the social graph's commands, each with its event in one transaction."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
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
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from chassis.db import Database, utcnow
from chassis.events import EventData, new_event
from chassis.outbox import add_event
from chassis.problems import Problem, not_found

from . import events
from .domain import GraphRuleBroken, Relationship, check_follow, check_not_self
from .models import Base, Block, Follow, Mute, Profile

OUTBOX = Base.metadata.tables["outbox"]


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
_UNFOLLOW = delete(_FOLLOWS).where(_FOLLOWS.c.follower_id == _ACTOR,
                                   _FOLLOWS.c.followee_id == _TARGET)


async def _relationship_row(session: AsyncSession, actor: str, target: str) -> Any:
    return (await session.execute(_RELATIONSHIP, {"actor": actor, "target": target})).one()


async def relationship(session: AsyncSession, actor: str, target: str) -> Relationship:
    """The caller's relationship to `target`, read in one query."""
    row = await _relationship_row(session, actor, target)
    return Relationship(*(bool(v) for v in row[:5]))


async def _target_state(session: AsyncSession, actor: str, target: str) -> Relationship:
    """The relationship to `target`, or 404 if there is no such user (one query)."""
    row = await _relationship_row(session, actor, target)
    if not row[5]:
        raise not_found("user")
    return Relationship(*(bool(v) for v in row[:5]))


def blocked_either_way(viewer: str, user_column: ColumnElement[str]) -> Exists:
    """SQL condition: `viewer` and the user in `user_column` have blocked one another."""
    return exists().where(or_(
        and_(Block.blocker_id == viewer, Block.blocked_id == user_column),
        and_(Block.blocker_id == user_column, Block.blocked_id == viewer)))


async def _target(session: AsyncSession, target: str) -> Profile:
    profile = await session.get(Profile, target)
    if profile is None:
        raise not_found("user")
    return profile


async def _emit(session: AsyncSession, data: EventData, actor: str) -> None:
    await add_event(session, OUTBOX, new_event(data, producer=events.PRODUCER,
                                               subject=f"user:{actor}", actor=actor))


async def _count_edge(session: AsyncSession, follower: str, followee: str, delta: int) -> None:
    """Move both users' counters, locking their rows in id order so that concurrent
    opposite follows cannot deadlock."""
    changes = {follower: "following_count", followee: "followers_count"}
    for user_id in sorted(changes):
        await session.execute(_BUMP[changes[user_id]], {"user": user_id, "delta": delta})


async def _remove_follow(session: AsyncSession, follower: str, followee: str) -> bool:
    result = await session.execute(_UNFOLLOW, {"actor": follower, "target": followee})
    if not result.rowcount:
        return False
    await _count_edge(session, follower, followee, -1)
    await _emit(session, events.Unfollowed(actor_id=follower, target_id=followee), follower)
    return True


@asynccontextmanager
async def _change(db: Database) -> AsyncIterator[AsyncSession]:
    """A graph transaction: a broken rule becomes a problem response, and losing a race to an
    identical concurrent change (a primary-key conflict) counts as success."""
    try:
        async with db.transaction() as session:
            yield session
    except GraphRuleBroken as error:
        raise Problem(error.status, error.detail) from error
    except IntegrityError:
        return


async def _remove_edge(db: Database, columns: tuple[Any, Any], actor: str, target: str,
                       event: type[events.EdgeEvent]) -> None:
    """Delete the edge actor→target if it exists, with its event; absent is fine."""
    source, destination = columns
    async with db.transaction() as session:
        await _target(session, target)
        result = await session.execute(delete(source.class_).where(
            source == actor, destination == target))
        if result.rowcount:
            await _emit(session, event(actor_id=actor, target_id=target), actor)


async def follow(db: Database, *, actor: str, target: str) -> None:
    """`actor` follows `target`; following again changes nothing."""
    async with _change(db) as session:
        state = await _target_state(session, actor, target)
        check_follow(actor, target, state)
        if state.following:
            return
        await session.execute(insert(_FOLLOWS), {"follower_id": actor, "followee_id": target,
                                                 "created_at": utcnow()})
        await _count_edge(session, actor, target, 1)
        await _emit(session, events.Followed(actor_id=actor, target_id=target), actor)


async def unfollow(db: Database, *, actor: str, target: str) -> None:
    """`actor` stops following `target`; not following is fine."""
    async with db.transaction() as session:
        await _target(session, target)
        await _remove_follow(session, actor, target)


async def block(db: Database, *, actor: str, target: str) -> None:
    """`actor` blocks `target`, which also removes the follows between them both ways."""
    async with _change(db) as session:
        check_not_self(actor, target, "block")
        if (await _target_state(session, actor, target)).blocking:
            return
        await session.execute(insert(Block).values(blocker_id=actor, blocked_id=target))
        await _remove_follow(session, actor, target)
        await _remove_follow(session, target, actor)
        await _emit(session, events.Blocked(actor_id=actor, target_id=target), actor)


async def unblock(db: Database, *, actor: str, target: str) -> None:
    """`actor` lifts a block; not blocking is fine."""
    await _remove_edge(db, (Block.blocker_id, Block.blocked_id), actor, target, events.Unblocked)


async def mute(db: Database, *, actor: str, target: str) -> None:
    """`actor` mutes `target` (their posts leave the actor's timelines)."""
    async with _change(db) as session:
        check_not_self(actor, target, "mute")
        if (await _target_state(session, actor, target)).muting:
            return
        await session.execute(insert(Mute).values(muter_id=actor, muted_id=target))
        await _emit(session, events.Muted(actor_id=actor, target_id=target), actor)


async def unmute(db: Database, *, actor: str, target: str) -> None:
    """`actor` unmutes `target`; not muting is fine."""
    await _remove_edge(db, (Mute.muter_id, Mute.muted_id), actor, target, events.Unmuted)
