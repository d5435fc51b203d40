"""`Idempotency-Key`: a repeated create returns the first response instead of acting twice."""

import hashlib
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

import orjson
from fastapi import Header
from sqlalchemy import MetaData, insert, select
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from .db import Database, utcnow
from .problems import invalid

IdempotencyKey = Annotated[
    str | None,
    Header(alias="Idempotency-Key", max_length=255, description="repeat-safe key for this create"),
]


def fingerprint(body: Any) -> str:
    return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()


async def once(db: Database, metadata: MetaData, *, scope: str, key: str | None, request: Any,
               create: Callable[[], Awaitable[dict[str, Any]]]) -> dict[str, Any]:
    """Run `create` once per (scope, key); a repeat with the same request gets its result back.

    The same key with a different request is a 422 naming the header.
    """
    if key is None:
        return await create()
    table = metadata.tables["idempotency_keys"]
    digest = fingerprint(request)
    stored = await _stored(db, table, scope, key)
    if stored is None:
        result = await create()
        try:
            async with db.transaction() as session:
                await session.execute(insert(table).values(
                    scope=scope, key=key, request_hash=digest, response=result,
                    created_at=utcnow()))
            return result
        except IntegrityError:
            stored = await _stored(db, table, scope, key)
    if stored is None or stored.request_hash != digest:
        raise invalid("Idempotency-Key", "was used before with a different request")
    return stored.response


async def once_in_unit(db: Database, metadata: MetaData, *, scope: str, key: str | None,
                       request: Any, create: Callable[[Connection], dict[str, Any]],
                       ) -> dict[str, Any]:
    """`once` for a synchronous unit of work: the key is claimed in the same transaction as
    the change, so two concurrent requests with one key cannot both act — the second waits
    on the key's row (or SQLite's single writer), fails, rolls back, and returns the first's
    result."""
    if key is None:
        return await db.run(create)
    table = metadata.tables["idempotency_keys"]
    digest = fingerprint(request)
    where = (table.c.scope == scope, table.c.key == key)

    def unit(conn: Connection) -> Any:
        stored = conn.execute(select(table.c.request_hash, table.c.response).where(*where)).first()
        if stored is not None:
            return stored
        result = create(conn)
        conn.execute(insert(table).values(scope=scope, key=key, request_hash=digest,
                                          response=result, created_at=utcnow()))
        return None, result

    try:
        request_hash, response = await db.run(unit)
    except IntegrityError:
        request_hash, response = await db.run(
            lambda conn: conn.execute(select(table.c.request_hash, table.c.response)
                                      .where(*where)).one())
    if request_hash is not None and request_hash != digest:
        raise invalid("Idempotency-Key", "was used before with a different request")
    return response


async def _stored(db: Database, table: Any, scope: str, key: str) -> Any:
    async with db.sessions() as session:
        return (await session.execute(select(table.c.request_hash, table.c.response).where(
            table.c.scope == scope, table.c.key == key))).first()
