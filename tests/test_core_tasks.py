"""core.tasks: stopping a background loop lets its step in flight finish, and an SQLite write cut short
by a plain cancel is what that prevents."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from cityos.config import Settings
from cityos.core.db import create_engine
from cityos.core.tasks import DutyCycle, StepGuard, cancel_and_wait


async def _loop(steps: StepGuard, done: list[int], step_seconds: float) -> None:
    n = 0
    while True:
        n += 1

        async def step(k: int = n) -> None:
            await asyncio.sleep(step_seconds)
            done.append(k)

        await steps.step(step())


async def test_stop_waits_for_the_step_in_flight() -> None:
    steps, done = StepGuard("test"), []
    task = asyncio.create_task(_loop(steps, done, 0.2))
    await asyncio.sleep(0.05)  # the first step is half-way
    await steps.stop([task], within=5)
    assert task.cancelled()
    assert done == [1]  # finished, and no second step began


async def test_a_step_that_overruns_is_cancelled_after_the_grace(caplog: pytest.LogCaptureFixture) -> None:
    steps, done = StepGuard("slow loop"), []
    task = asyncio.create_task(_loop(steps, done, 30))
    await asyncio.sleep(0.05)
    await steps.stop([task], within=0.2)
    assert done == [] and task.done()
    assert "slow loop: the step in flight did not finish" in caplog.text


async def test_stop_without_start_and_cancel_and_wait_tolerate_nothing_to_do() -> None:
    await StepGuard("idle").stop([None])
    failing = asyncio.create_task(asyncio.sleep(0))
    await failing
    await cancel_and_wait([failing, None])
    assert failing.done() and not failing.cancelled()


async def _writer(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.execute(text("INSERT INTO t VALUES (1)"))
        # A statement that keeps the write transaction busy for about a second.
        await conn.execute(text("WITH RECURSIVE c(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM c WHERE n < 2000000) "
                                "SELECT count(*) FROM c"))
        await conn.execute(text("INSERT INTO t VALUES (2)"))


async def test_a_guarded_sqlite_write_is_committed_not_left_holding_the_lock(tmp_path: Path) -> None:
    engine = create_engine(Settings(database_url=f"sqlite:///{tmp_path / 'lock.db'}"))
    try:
        async with engine.begin() as conn:
            await conn.execute(text("CREATE TABLE t (x INTEGER)"))
        steps = StepGuard("writer")

        async def loop() -> None:
            while True:
                await steps.step(_writer(engine))

        task = asyncio.create_task(loop())
        await asyncio.sleep(0.2)  # inside the long statement
        await steps.stop([task], within=30)
        async with engine.begin() as conn:  # would wait for the busy timeout if the lock had leaked
            await conn.execute(text("INSERT INTO t VALUES (3)"))
            rows = sorted(r[0] for r in await conn.execute(text("SELECT x FROM t")))
        assert rows == [1, 2, 3]  # the guarded transaction committed whole
    finally:
        await engine.dispose()


async def test_in_daemon_thread_returns_and_raises_and_is_a_daemon() -> None:
    import threading

    from cityos.core.tasks import in_daemon_thread

    def work(x: int) -> tuple[int, bool]:
        return x * 2, threading.current_thread().daemon

    assert await in_daemon_thread(work, 21) == (42, True)

    def fails() -> None:
        raise ValueError("bad fit")

    with pytest.raises(ValueError, match="bad fit"):
        await in_daemon_thread(fails)


async def test_a_duty_cycle_rests_in_proportion_to_the_work() -> None:
    """At a share of 1/4 a job rests three times as long as it worked since its last rest; at 1 never."""
    began = time.monotonic()
    duty = DutyCycle(0.25)
    await asyncio.sleep(0.04)  # the work of one slice
    await duty.rest()
    worked_at_most = time.monotonic() - began - duty.rested
    assert 3 * 0.04 <= duty.rested <= 3 * worked_at_most
    whole = DutyCycle(1)
    await asyncio.sleep(0.02)
    await whole.rest()
    assert whole.rested == 0
    for wrong in (0, -0.5, 1.5):
        with pytest.raises(ValueError):
            DutyCycle(wrong)
