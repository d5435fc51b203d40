"""Who blocked and who follows whom, copied from the profile service's graph events.

The post service needs blocks to refuse replies and likes from someone the author blocked,
and follows to keep followers-only posts to followers; it keeps its own copy rather than
asking the profile service. Each event applies only if it is newer than what the row holds,
so redelivered and reordered events agree on the end.
"""

from typing import Any

from pydantic import BaseModel, ConfigDict
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from chassis.consumer import Apply
from chassis.events import Envelope

from .models import Block, Follow

_BLOCKS, _FOLLOWS = Block.__table__, Follow.__table__


class EdgeChanged(BaseModel):
    """The fields of graph.blocked / graph.unblocked this service reads; others are ignored,
    so the producer may add fields without breaking this consumer."""

    model_config = ConfigDict(extra="ignore")

    actor_id: str
    target_id: str


def _newer_wins(insert: Any, table: Any, state: str) -> Any:
    """Insert the pair's state, or overwrite it only with a later one."""
    statement = insert(table)
    return statement.on_conflict_do_update(
        index_elements=list(table.primary_key.columns),
        set_={state: statement.excluded[state], "changed_at": statement.excluded.changed_at},
        where=table.c.changed_at < statement.excluded.changed_at)


# edge kind -> (its columns: actor, target, state) and its upsert per dialect
_EDGES = {
    "block": (("blocker_id", "blocked_id", "blocked"), {
        "sqlite": _newer_wins(sqlite.insert, _BLOCKS, "blocked"),
        "postgresql": _newer_wins(postgresql.insert, _BLOCKS, "blocked")}),
    "follow": (("follower_id", "followee_id", "following"), {
        "sqlite": _newer_wins(sqlite.insert, _FOLLOWS, "following"),
        "postgresql": _newer_wins(postgresql.insert, _FOLLOWS, "following")}),
}


def _record(kind: str, on: bool) -> Apply:
    """The unit that records an edge of `kind` as `on` (its event's time orders it)."""
    (actor, target, state), upserts = _EDGES[kind]

    def unit(conn: Connection, envelope: Envelope) -> None:
        edge = EdgeChanged.model_validate(envelope.data)
        conn.execute(upserts[conn.dialect.name], {
            actor: edge.actor_id, target: edge.target_id, state: on,
            "changed_at": envelope.occurred_at})

    return Apply(unit)


# graph.blocked: the actor's posts take no replies or likes from the target (unblocked: they
# may again); graph.followed: the actor may reply to and like the target's followers-only
# posts (unfollowed: no longer).
HANDLERS = {"graph.blocked": _record("block", True), "graph.unblocked": _record("block", False),
            "graph.followed": _record("follow", True),
            "graph.unfollowed": _record("follow", False)}
