"""A service's own copy of one kind of edge of the social graph (blocks, follows), kept from
the profile service's `graph.*` events.

Services that must refuse something because of a block (a reply, a like, a direct message)
keep their own copy rather than asking the profile service at request time. Each event
applies only if it is newer than what the row holds (`changed_at`), so redelivered and
reordered events agree on the end; an undone edge keeps its row with the state false, so a
late "done" event cannot bring it back.
"""

from typing import Any

from pydantic import BaseModel, ConfigDict
from sqlalchemy import Boolean, Column, MetaData, String, Table, and_, exists, or_
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from .consumer import Apply
from .db import UTCDateTime
from .events import Envelope


class EdgeChanged(BaseModel):
    """The fields of a graph event this copy reads; others are ignored, so the producer may
    add fields without breaking a consumer."""

    model_config = ConfigDict(extra="ignore")

    actor_id: str
    target_id: str


class EdgeCopy:
    """The table `name` (actor_column, target_column, state_column, changed_at) and the
    handlers that keep it from the `<on_event>`/`<off_event>` pair."""

    def __init__(self, metadata: MetaData, name: str, columns: tuple[str, str, str], *,
                 on_event: str, off_event: str) -> None:
        actor, target, state = columns
        self.columns = columns
        self.table = Table(
            name, metadata,
            Column(actor, String(64), primary_key=True),
            Column(target, String(64), primary_key=True),
            Column(state, Boolean, nullable=False),
            Column("changed_at", UTCDateTime, nullable=False))
        self._events = {on_event: True, off_event: False}
        self._upserts = {dialect: self._newer_wins(insert)
                         for dialect, insert in (("sqlite", sqlite.insert),
                                                 ("postgresql", postgresql.insert))}

    def _newer_wins(self, insert: Any) -> Any:
        statement = insert(self.table)
        state = self.columns[2]
        return statement.on_conflict_do_update(
            index_elements=list(self.table.primary_key.columns),
            set_={state: statement.excluded[state], "changed_at": statement.excluded.changed_at},
            where=self.table.c.changed_at < statement.excluded.changed_at)

    def record(self, conn: Connection, envelope: Envelope) -> None:
        edge = EdgeChanged.model_validate(envelope.data)
        actor, target, state = self.columns
        conn.execute(self._upserts[conn.dialect.name], {
            actor: edge.actor_id, target: edge.target_id,
            state: self._events[envelope.type], "changed_at": envelope.occurred_at})

    def handlers(self) -> dict[str, Apply]:
        return {event_type: Apply(self.record) for event_type in self._events}

    def between(self, a: Any, b: Any) -> Any:
        """An SQL condition: the edge holds from a to b or from b to a."""
        actor, target, state = (self.table.c[c] for c in self.columns)
        return exists().where(state, or_(and_(actor == a, target == b),
                                         and_(actor == b, target == a)))
