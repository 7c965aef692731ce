"""Deliveries in flight, so that reading a subscription sees the notifications already sent.

A receiver gets a notification before the sender has written its bookkeeping (timesSent,
lastNotification, lastSuccess, notification.status; v1.8.1 §5.2.14): a subscriber that reads its
subscription as soon as the notification arrives would otherwise see the state before it. Retrieval
waits (briefly, bounded) for the deliveries started before it to be recorded. Per process: a sender
in another process is not waited for.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable

Key = tuple[str, str]  # (tenant, subscription id)


class InFlight:
    def __init__(self) -> None:
        self._started: dict[Key, int] = {}
        self._recorded: dict[Key, int] = {}
        self._changed = asyncio.Condition()

    def start(self, key: Key) -> None:
        """A delivery of `key` is being sent; its outcome is not written yet."""
        self._started[key] = self._started.get(key, 0) + 1

    async def recorded(self, keys: Iterable[Key]) -> None:
        """The deliveries started for `keys` (one per occurrence) have their outcome written."""
        async with self._changed:
            for key in keys:
                self._recorded[key] = self._recorded.get(key, 0) + 1
            self._changed.notify_all()

    async def settle(self, key: Key, seconds: float) -> None:
        """Wait until every delivery of `key` started before this call is recorded (at most `seconds`).

        Deliveries started meanwhile are not waited for, so a busy subscription cannot hold a reader.
        The counters only grow (one pair per subscription that ever notified in this process)."""
        target = self._started.get(key, 0)
        if self._recorded.get(key, 0) >= target:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds), self._changed:
                await self._changed.wait_for(lambda: self._recorded.get(key, 0) >= target)
