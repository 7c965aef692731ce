"""Background loops that stop between steps, never in the middle of one.

Cancelling a task that is inside a database transaction is not safe on every driver: on SQLite a
connection cancelled mid-statement can keep the database's write lock until the statement ends
and the pool gets round to closing it, and every other writer waits on the busy timeout meanwhile.
A loop runs each unit of work through `StepGuard.step`, which shields it; stopping the loop
cancels only the waiting between steps, then gives the step in flight time to finish.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Collection, Iterable
from typing import Any, TypeVar

log = logging.getLogger("cityos.tasks")

T = TypeVar("T")


class StepGuard:
    """Shields a loop's steps from the loop's cancellation and waits for the last one at stop."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._current: asyncio.Future[Any] | None = None

    async def step(self, work: Awaitable[T]) -> T:
        future = asyncio.ensure_future(work)
        self._current = future
        return await asyncio.shield(future)

    async def stop(self, tasks: Iterable[asyncio.Future[Any] | None], within: float = 10.0) -> None:
        """Cancel the loop's tasks, then give the step in flight `within` seconds before cancelling it too."""
        await cancel_and_wait(tasks)
        current = self._current
        if current is None or current.done():
            return
        finished = await finish_within({current}, within, f"{self.name}: the step in flight")
        if finished and not current.cancelled() and current.exception() is not None:
            log.warning("%s: the last step failed while stopping: %r", self.name, current.exception())


async def finish_within(futures: Collection[asyncio.Future[Any]], within: float, what: str,
                        before_cancel: Callable[[], None] | None = None) -> bool:
    """Wait at most `within` seconds for `futures` to end; True if they all did. Those still running
    are reported (and `before_cancel` called, e.g. to dump stacks while they are stuck), cancelled and
    given 2 s more: a stop must end even when a part of it hangs."""
    if not futures:
        return True
    _, late = await asyncio.wait(futures, timeout=within)
    if not late:
        return True
    log.warning("%s did not finish within %.0f s; cancelling (%d left)", what, within, len(late))
    if before_cancel is not None:
        before_cancel()
    for future in late:
        future.cancel()
    await asyncio.wait(late, timeout=2.0)
    return False


async def cancel_and_wait(tasks: Iterable[asyncio.Future[Any] | None]) -> None:
    """Cancel tasks and wait until each has ended (their own errors are theirs: not raised here)."""
    pending = [t for t in tasks if t is not None]
    for task in pending:
        task.cancel()
    for task in pending:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task


class DutyCycle:
    """Keeps a long background job (a catalogue harvest copying hundreds of thousands of readings) to a share
    of the time: each `rest()` sleeps in proportion to the work done since the last one, so the job takes at
    most `share` of the wall time between its rests. On SQLite that work holds the one writer and the event
    loop; a harvest working back to back stalled a 500-signal control loop for 15–22 s. The clock starts when
    the cycle is made."""

    def __init__(self, share: float) -> None:
        if not 0 < share <= 1:
            raise ValueError(f"a duty cycle's share is in (0, 1], not {share}")
        self.share = share
        self.rested = 0.0  # seconds in all, for reports and tests
        self._since = time.monotonic()

    async def rest(self) -> None:
        worked = time.monotonic() - self._since
        if self.share < 1:
            pause = worked * (1 / self.share - 1)
            self.rested += pause
            await asyncio.sleep(pause)
        self._since = time.monotonic()


def periodic(name: str, work: Callable[[], Awaitable[Any]], interval: float,
             first: float = 0.0) -> Callable[[], Awaitable[None]]:
    """Run `work` every `interval` seconds (after `first`) as guarded steps; a failed step is logged and
    retried at the next tick. Returns the stop function (waits for the step in flight)."""
    steps = StepGuard(name)

    async def loop() -> None:
        await asyncio.sleep(first)
        while True:
            try:
                await steps.step(work())
            except asyncio.CancelledError:
                raise
            except Exception:  # the next tick retries
                log.exception("%s: step failed", name)
            await asyncio.sleep(interval)

    task = asyncio.create_task(loop(), name=name) if interval > 0 else None

    async def stop() -> None:
        await steps.stop([task])

    return stop


async def in_daemon_thread(work: Callable[..., T], *args: Any) -> T:
    """`work(*args)` in a daemon thread: CPU-bound work (a model fit) that a stopping process need not wait
    for. `asyncio.to_thread` would use the loop's default executor, whose threads `asyncio.run` joins on
    exit: a Ctrl-C during a long fit would wait for the fit."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(outcome: Callable[[], None]) -> None:
        if not future.done():
            outcome()

    def run() -> None:
        try:
            result = work(*args)
        except BaseException as exc:  # handed to the awaiting task, which raises it
            error = exc
            with contextlib.suppress(RuntimeError):  # the loop has closed: nobody is waiting any more
                loop.call_soon_threadsafe(settle, lambda: future.set_exception(error))
        else:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(settle, lambda: future.set_result(result))

    threading.Thread(target=run, name=getattr(work, "__name__", "work"), daemon=True).start()
    return await future
