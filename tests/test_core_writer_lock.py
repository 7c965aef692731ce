"""The process's SQLite writer lock: first come, first served, urgent writers before those waiting."""

from __future__ import annotations

import asyncio

import pytest

from cityos.core.db import WriterLock


async def _queued(lock: WriterLock, name: str, order: list[str], urgent: bool = False) -> None:
    await lock.acquire(urgent=urgent)
    order.append(name)
    await asyncio.sleep(0)
    lock.release()


async def test_an_urgent_writer_goes_before_those_waiting() -> None:
    lock, order = WriterLock(), []
    async with lock:
        tasks = [asyncio.create_task(_queued(lock, name, order)) for name in ("ingest-1", "ingest-2")]
        await asyncio.sleep(0)
        tasks.append(asyncio.create_task(_queued(lock, "command", order, urgent=True)))
        await asyncio.sleep(0)
        assert lock.locked() and order == []
    await asyncio.gather(*tasks)
    assert order == ["command", "ingest-1", "ingest-2"]
    assert not lock.locked()


async def test_urgent_writers_keep_their_order_among_themselves() -> None:
    lock, order = WriterLock(), []
    async with lock.urgent():
        first = asyncio.create_task(_queued(lock, "a", order, urgent=True))
        await asyncio.sleep(0)
        second = asyncio.create_task(_queued(lock, "b", order, urgent=True))
        await asyncio.sleep(0)
    await asyncio.gather(first, second)
    assert order == ["a", "b"]


async def test_a_cancelled_waiter_neither_holds_nor_blocks_the_lock() -> None:
    lock, order = WriterLock(), []
    await lock.acquire()
    gone = asyncio.create_task(_queued(lock, "gone", order))
    after = asyncio.create_task(_queued(lock, "after", order))
    await asyncio.sleep(0)
    gone.cancel()
    await asyncio.sleep(0)
    lock.release()
    await after
    with pytest.raises(asyncio.CancelledError):
        await gone
    assert order == ["after"] and not lock.locked()


async def test_a_waiter_cancelled_as_it_is_handed_the_lock_passes_it_on() -> None:
    lock, order = WriterLock(), []
    await lock.acquire()
    handed = asyncio.create_task(_queued(lock, "handed", order))
    after = asyncio.create_task(_queued(lock, "after", order))
    await asyncio.sleep(0)
    lock.release()  # `handed` has the lock now, but has not run yet
    handed.cancel()
    await after
    with pytest.raises(asyncio.CancelledError):
        await handed
    assert order == ["after"] and not lock.locked()


async def test_releasing_a_lock_nobody_holds_is_an_error() -> None:
    with pytest.raises(RuntimeError):
        WriterLock().release()
