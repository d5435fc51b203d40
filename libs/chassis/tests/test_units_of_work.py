"""`Database.run`: a synchronous unit of work commits whole or not at all, on every backend."""

import asyncio
import time

import pytest
from sqlalchemy import insert, text

from chassis.db import WriterLock
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
