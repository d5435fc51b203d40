"""Who blocked whom, copied from the profile service's graph.blocked / graph.unblocked events.

The post service needs blocks to refuse replies and likes from someone the author blocked,
and keeps its own copy rather than asking the profile service. Each event applies only if
it is newer than what the row holds, so redelivered and reordered events agree on the end.
"""

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from chassis.events import Envelope

from .models import Block

_BLOCKS = Block.__table__


class EdgeChanged(BaseModel):
    """The fields of graph.blocked / graph.unblocked this service reads; others are ignored,
    so the producer may add fields without breaking this consumer."""

    model_config = ConfigDict(extra="ignore")

    actor_id: str
    target_id: str


def _newer_wins(insert: Any) -> Any:
    """Insert the pair's state, or overwrite it only with a later one."""
    statement = insert(_BLOCKS)
    return statement.on_conflict_do_update(
        index_elements=[_BLOCKS.c.blocker_id, _BLOCKS.c.blocked_id],
        set_={"blocked": statement.excluded.blocked,
              "changed_at": statement.excluded.changed_at},
        where=_BLOCKS.c.changed_at < statement.excluded.changed_at)


_UPSERT = {"sqlite": _newer_wins(sqlite.insert), "postgresql": _newer_wins(postgresql.insert)}


async def _record(session: AsyncSession, envelope: Envelope, *, blocked: bool) -> None:
    edge = EdgeChanged.model_validate(envelope.data)
    changed_at: datetime = envelope.occurred_at
    await session.execute(_UPSERT[session.get_bind().dialect.name], {
        "blocker_id": edge.actor_id, "blocked_id": edge.target_id, "blocked": blocked,
        "changed_at": changed_at})


async def on_blocked(session: AsyncSession, envelope: Envelope) -> None:
    """graph.blocked: the actor's posts take no replies or likes from the target."""
    await _record(session, envelope, blocked=True)


async def on_unblocked(session: AsyncSession, envelope: Envelope) -> None:
    """graph.unblocked: the target may reply to and like the actor's posts again."""
    await _record(session, envelope, blocked=False)
