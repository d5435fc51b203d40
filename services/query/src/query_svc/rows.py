"""Order-safe row writes that every projection shares: create a row if missing, lock it,
compare versions, update it.

Each statement is built once per dialect (INSERT ... ON CONFLICT differs between SQLite and
PostgreSQL), then run with bound values: building SQLAlchemy expressions per event cost
more CPU than running them. Rows are addressed by their table's primary key.
"""

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Table, and_, bindparam, select, update
from sqlalchemy.engine import Connection

from chassis.db import per_dialect

NEVER = datetime(1970, 1, 1, tzinfo=UTC)


class Statements:
    """Statements built on first use, one per (dialect, name)."""

    def __init__(self) -> None:
        self._built: dict[str, Callable[[Connection], Any]] = {}

    def get(self, conn: Connection, name: str, build: Any) -> Any:
        statement = self._built.get(name)
        if statement is None:
            statement = self._built[name] = per_dialect(build)
        return statement(conn)


STATEMENTS = Statements()


def key_columns(table: Table) -> list[str]:
    return [column.name for column in table.primary_key.columns]


def key_where(table: Table) -> Any:
    """SQL: the row whose primary key is bound as `k_<column>`."""
    return and_(*(table.c[name] == bindparam(f"k_{name}") for name in key_columns(table)))


def create_missing(conn: Connection, table: Table, values: dict[str, Any]) -> None:
    """INSERT the row unless its key exists (ON CONFLICT DO NOTHING)."""
    statement = STATEMENTS.get(conn, f"create:{table.name}:{','.join(sorted(values))}",
                               lambda insert_: insert_(table).on_conflict_do_nothing(
                                   index_elements=key_columns(table)))
    conn.execute(statement, values)


def set_values(conn: Connection, table: Table, key: dict[str, Any],
               values: dict[str, Any]) -> None:
    """UPDATE the row with `key` to `values`."""
    statement = STATEMENTS.get(conn, f"set:{table.name}:{','.join(sorted(values))}",
                               lambda _: update(table).where(key_where(table)).values(
                                   {name: bindparam(f"v_{name}") for name in values}))
    conn.execute(statement, {**{f"k_{k}": v for k, v in key.items()},
                             **{f"v_{k}": v for k, v in values.items()}})


def locked(conn: Connection, table: Table, key: dict[str, Any], placeholder: dict[str, Any],
           *columns: str) -> Any:
    """The row with `key`, created as `placeholder` if missing, locked for this transaction.

    Concurrent handlers of one aggregate (a post's create and its edit, say) then take turns
    on the row instead of racing to insert it. SQLite has one writer at a time anyway.
    """
    create_missing(conn, table, {**key, **placeholder})
    statement = STATEMENTS.get(conn, f"lock:{table.name}:{','.join(columns)}",
                               lambda _: select(*(table.c[c] for c in columns))
                               .where(key_where(table)).with_for_update())
    return conn.execute(statement, {f"k_{k}": v for k, v in key.items()}).one()


def newer(at: datetime, event_id: str, row: Any) -> bool:
    """Whether an event (time, id) is newer than what last changed `row` (its `changed_at`,
    `changed_by`): the event id breaks ties between events of the same instant."""
    return (at, event_id) > (row.changed_at or NEVER, row.changed_by or "")
