"""The per-connection send queue: asyncio.Queue's behaviour for one writer, lighter."""

import asyncio
import tracemalloc

import pytest

from chassis.sockets import SendQueue


async def test_items_come_out_in_order_and_a_full_queue_refuses_more():
    queue = SendQueue(3)
    for item in ("a", "b", "c"):
        queue.put_nowait(item)
    with pytest.raises(asyncio.QueueFull):
        queue.put_nowait("d")
    assert queue.qsize() == 3
    assert [await queue.get(), queue.get_nowait()] == ["a", "b"]
    queue.put_nowait("d")
    queue.put_nowait("e")
    assert [queue.get_nowait() for _ in range(3)] == ["c", "d", "e"]
    with pytest.raises(asyncio.QueueEmpty):
        queue.get_nowait()


async def test_a_waiting_writer_wakes_for_the_next_item_and_can_be_cancelled():
    queue = SendQueue(10)
    waiting = asyncio.create_task(queue.get())
    await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    writer = asyncio.create_task(queue.get())
    await asyncio.sleep(0)
    assert not writer.done()
    queue.put_nowait("frame")
    assert await writer == "frame"


async def test_a_writer_that_never_catches_up_keeps_only_what_waits():
    queue = SendQueue(4)
    for i in range(3):
        queue.put_nowait(i)
    taken = []
    for i in range(3, 1000):
        queue.put_nowait(i)
        taken.append(queue.get_nowait())
        assert queue.qsize() == 3
        assert len(queue._items) <= 2 * 4, "what the writer took is let go"
    assert taken == list(range(997))


def test_an_idle_queue_costs_less_than_an_asyncio_queue():
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        light = [SendQueue(256) for _ in range(1000)]
        middle = tracemalloc.take_snapshot()
        heavy = [asyncio.Queue(256) for _ in range(1000)]
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    light_bytes = sum(s.size_diff for s in middle.compare_to(before, "filename"))
    heavy_bytes = sum(s.size_diff for s in after.compare_to(middle, "filename"))
    assert len(light) == len(heavy)
    assert light_bytes * 10 < heavy_bytes
