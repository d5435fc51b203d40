"""`Database.run`: a synchronous unit of work commits whole or not at all, on every backend."""

import asyncio
import time

import pytest
from sqlalchemy import Index, bindparam, event, insert, inspect, text

from chassis.db import DriverStatement, WriterLock
from chassis.outbox import stage_event


async def test_a_unit_commits_its_writes_and_events_together_and_wakes_the_relay(db, thing):
    woken = []
    db.database.on_events_committed.append(lambda: woken.append(True))
    event = thing(1)

    def unit(conn):
        conn.execute(insert(db.table("effects")), {"event_id": event.id})
        stage_event(conn, db.table("outbox"), event)
        return "done"

    assert await db.database.run(unit) == "done"
    assert await db.count("effects") == 1 and await db.count("outbox") == 1
    assert woken == [True]


async def test_a_failing_unit_leaves_nothing_behind_and_wakes_nobody(db, thing):
    woken = []
    db.database.on_events_committed.append(lambda: woken.append(True))

    def unit(conn):
        stage_event(conn, db.table("outbox"), thing(1))
        conn.execute(insert(db.table("effects")), {"event_id": "e1"})
        raise LookupError("the rule says no")

    with pytest.raises(LookupError):
        await db.database.run(unit)
    assert await db.count("effects") == 0 and await db.count("outbox") == 0

    await db.database.run(lambda conn: conn.execute(insert(db.table("effects")),
                                                    {"event_id": "e2"}))
    assert woken == [], "a failed unit's staged-events flag must not leak to the next unit"


async def test_concurrent_units_all_commit(db):
    def unit(n):
        return lambda conn: conn.execute(insert(db.table("effects")), {"event_id": f"e{n}"})

    await asyncio.gather(*(db.database.run(unit(n)) for n in range(50)))
    assert await db.count("effects") == 50


async def test_cancelling_a_running_unit_is_a_cancellation_not_a_driver_error(db):
    def slow(conn):
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_sleep(2)"))
        else:
            time.sleep(0.5)  # on SQLite's writer thread: the event loop stays free

    task = asyncio.create_task(db.database.run(slow))
    await asyncio.sleep(0.2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_sqlite_writers_of_every_process_queue_on_one_file_lock(db):
    """A replica's write waits while another process writes the same file, and starts once
    it is done (woken by the kernel, not polling in SQLite's busy handler)."""
    if db.database.dialect != "sqlite":
        pytest.skip("PostgreSQL queues writers itself")
    other_process = WriterLock(f"{db.database.engine.url.database}.writer-lock")
    other_process.acquire()
    write = asyncio.create_task(db.database.run(
        lambda conn: conn.execute(insert(db.table("effects")), {"event_id": "e1"})))
    await asyncio.sleep(0.3)

    assert not write.done()
    assert await db.count("effects") == 0
    other_process.release()
    await write
    assert await db.count("effects") == 1
    other_process.close()


async def test_a_failing_unit_among_concurrent_ones_takes_only_its_own_writes_back(db, thing):
    """On SQLite concurrent units commit in groups; each still commits whole or not at all."""
    woken = []
    db.database.on_events_committed.append(lambda: woken.append(True))

    def unit(n):
        def work(conn):
            conn.execute(insert(db.table("effects")), {"event_id": f"e{n}"})
            stage_event(conn, db.table("outbox"), thing(n, subject=f"agg-{n}"))
            if n % 5 == 0:
                raise LookupError(f"unit {n} says no")
            return n
        return work

    outcomes = await asyncio.gather(*(db.database.run(unit(n)) for n in range(1, 31)),
                                    return_exceptions=True)

    failed = [n for n, o in enumerate(outcomes, 1) if isinstance(o, LookupError)]
    assert failed == [5, 10, 15, 20, 25, 30]
    assert [o for o in outcomes if not isinstance(o, Exception)] == [
        n for n in range(1, 31) if n % 5]
    assert await db.count("effects") == 24 and await db.count("outbox") == 24
    assert woken


async def test_a_group_whose_units_all_commit_runs_each_once_without_savepoints(db):
    if db.database._writer is None:
        pytest.skip("on PostgreSQL units run side by side, not in groups")
    calls, savepoints = [], []
    event.listen(db.database._sync_engine, "savepoint", lambda *_: savepoints.append(1))

    def unit(n):
        def work(conn):
            calls.append(n)
            conn.execute(insert(db.table("effects")), {"event_id": f"ok{n}"})
            if n == 1:
                time.sleep(0.2)  # the others queue up behind it and form one group
        return work

    first = asyncio.create_task(db.database.run(unit(1)))
    await asyncio.sleep(0.05)
    await asyncio.gather(first, *(db.database.run(unit(n)) for n in range(2, 12)))
    assert sorted(calls) == list(range(1, 12))
    assert savepoints == []
    assert await db.count("effects") == 11


async def test_a_unit_cancelled_while_it_waits_for_its_group_never_runs(db):
    if db.database.dialect != "sqlite":
        pytest.skip("on PostgreSQL units run side by side, not in groups")
    ran = []

    def slow(conn):
        time.sleep(0.3)  # on the writer thread, holding up the next group

    first = asyncio.create_task(db.database.run(slow))
    await asyncio.sleep(0.05)
    waiting = asyncio.create_task(db.database.run(lambda conn: ran.append(True)))
    await asyncio.sleep(0.05)
    waiting.cancel()
    await first
    with pytest.raises(asyncio.CancelledError):
        await waiting
    await db.database.run(lambda conn: None)  # the next group has come and gone
    assert ran == []


async def test_an_index_added_later_reaches_a_database_made_before_it(db):
    """`create_all` makes a new table's indexes with it; an index added to a table that
    already exists is made on the next start (and a second start changes nothing)."""
    effects = db.table("effects")
    later = Index("ix_effects_event_later", effects.c.event_id)
    try:
        await db.database.create_all(db.metadata)
        await db.database.create_all(db.metadata)
        async with db.database.engine.connect() as conn:
            names = await conn.run_sync(
                lambda sync: [i["name"] for i in inspect(sync).get_indexes("effects")])
    finally:
        effects.indexes.discard(later)
    assert "ix_effects_event_later" in names


async def test_a_driver_statement_writes_every_row_and_checks_its_parameter_order(db):
    effects = db.table("effects")
    add = DriverStatement(lambda insert_: insert_(effects).values(
        id=bindparam("id"), event_id=bindparam("event_id")), order=("id", "event_id"))
    await db.database.run(lambda conn: add.many(conn, [(n, f"e{n}") for n in range(1, 151)]))
    await db.database.run(lambda conn: add.many(conn, []))
    assert await db.count("effects") == 150
    assert await db.count("effects", effects.c.event_id == "e150", effects.c.id == 150) == 1

    swapped = DriverStatement(lambda insert_: insert_(effects).values(
        id=bindparam("id"), event_id=bindparam("event_id")), order=("event_id", "id"))
    with pytest.raises(ValueError, match="order"):
        await db.database.run(lambda conn: swapped.many(conn, [("e0", 0)]))
    assert await db.count("effects") == 150


async def test_an_index_whose_columns_changed_is_made_again_on_the_next_start(db):
    effects = db.table("effects")
    before = Index("ix_effects_changing", effects.c.event_id)
    await db.database.create_all(db.metadata)
    effects.indexes.discard(before)
    after = Index("ix_effects_changing", effects.c.event_id, effects.c.id)
    try:
        await db.database.create_all(db.metadata)
        await db.database.create_all(db.metadata)
        async with db.database.engine.connect() as conn:
            made = await conn.run_sync(lambda sync: {
                i["name"]: i["column_names"] for i in inspect(sync).get_indexes("effects")})
    finally:
        effects.indexes.discard(after)
    assert made["ix_effects_changing"] == ["event_id", "id"]
