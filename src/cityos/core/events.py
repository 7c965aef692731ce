"""The in-process event bus.

Domains react to each other's changes here without HTTP and without touching each other's
tables. Handlers run after the change has committed; a failing handler is logged and never
breaks the publisher.

One interface, two implementations. `EventBus` (here) runs every handler in the publishing process:
the default, for `cityos demo` and SQLite. `cityos.core.jetstream.JetStreamBus` (when
`CITYOS_EVENTS_URL=nats://…`) carries events between processes and machines. A subscriber says
how it wants events in a scale-out deployment, and the in-process bus ignores it:
- `group="rules"`: a durable consumer shared by every process running that group; each event is
  handled by one of them (work-queue semantics). The handler may record `event.id` with its effect
  (`cityos.core.bus_models.claim`) to be idempotent under redelivery.
- `every_process=True`: every process sees every event (a live view, a cache to invalidate).
- neither: only the events published in this process (in-transaction helpers, wake-ups).
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from cityos.core.tasks import StepGuard

log = logging.getLogger(__name__)

Handler = Callable[["Event"], Awaitable[None]]


@dataclass(frozen=True)
class Event:
    topic: str
    payload: dict[str, Any] = field(default_factory=dict)
    id: str | None = None  # set by a cross-process bus: the key a handler records with its effect


Encode = Callable[[dict[str, Any]], dict[str, Any]]
Decode = Callable[[dict[str, Any]], dict[str, Any]]


class EventBus:
    # Whether events cross processes: outboxes then leave their rows to the bus's relay.
    crosses_processes = False

    def __init__(self) -> None:
        self._handlers: dict[str, list[Handler]] = defaultdict(list)

    def subscribe(self, topic: str, handler: Handler, *, group: str | None = None,
                  every_process: bool = False) -> Callable[[], None]:
        """Subscribe to a topic ('*' for all); returns a function that unsubscribes.

        `group` and `every_process` matter only to a cross-process bus (see the module's docstring)."""
        self._handlers[topic].append(handler)
        return lambda: self._handlers[topic].remove(handler)

    def codec(self, topic: str, encode: Encode, decode: Decode) -> None:
        """How a topic's payload (which may hold objects) becomes JSON and back; in process: unused."""

    def outboxed(self, *topics: str) -> None:
        """Topics whose events reach other processes from an outbox row written in the change's
        transaction (relayed by the bus), not from `publish`; in process: nothing to do."""

    async def start(self) -> None:
        """Connect and start relaying and consuming; in process: nothing to start."""

    async def close(self) -> None:
        """Stop relaying and consuming."""

    async def publish(self, topic: str, payload: dict[str, Any]) -> None:
        event = Event(topic, payload)
        handlers = [*self._handlers.get(topic, ()), *self._handlers.get("*", ())]
        if not handlers:
            return
        # One after the other, not gathered: a gather makes a task per handler per event, which cost
        # more than most handlers (a few µs each: they mark, queue or signal) at thousands of changes/s.
        for handler in handlers:
            try:
                await handler(event)
            except Exception as exc:
                log.error("event handler failed on %s: %r", topic, exc)


class BackgroundPublisher:
    """Publishes on the bus from a task of its own, in order, so a slow handler (an alarm storm
    through the rules engine) does not hold up the publisher (ingestion, whose broker is waiting
    for acknowledgements). Bounded: when `maxsize` events wait, `put` waits too (back-pressure,
    never unbounded memory). As with `EventBus.publish`, events are published after the commit
    that produced them, and a process that dies loses the ones still waiting."""

    def __init__(self, bus: EventBus, maxsize: int = 10_000) -> None:
        self.bus = bus
        self._queue: asyncio.Queue[tuple[str, dict[str, Any], Callable[[], None] | None]] = asyncio.Queue(maxsize)
        self._task: asyncio.Task[None] | None = None
        self._steps = StepGuard("background publisher")

    async def put(self, topic: str, payload: dict[str, Any], published: Callable[[], None] | None = None) -> None:
        """Queue an event; `published` is called once every handler has had it (an outbox's delete)."""
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done() or self._task.get_loop() is not loop:
            self._queue = asyncio.Queue(self._queue.maxsize)  # a queue belongs to the loop that first uses it
            self._task = asyncio.create_task(self._run(), name="cityos-background-publisher")
        await self._queue.put((topic, payload, published))

    async def _run(self) -> None:
        while True:
            topic, payload, published = await self._queue.get()
            try:
                await self._steps.step(self.bus.publish(topic, payload))
                if published is not None:
                    published()
            finally:
                self._queue.task_done()

    async def drain(self) -> None:
        """Wait until every event put so far has been handled."""
        if self._task is not None and not self._task.done() and self._task.get_loop() is asyncio.get_running_loop():
            await self._queue.join()

    async def close(self, grace_seconds: float = 5.0) -> None:
        """Publish what waits, for at most `grace_seconds` (a stuck handler must not stop a shutdown)."""
        try:
            await asyncio.wait_for(self.drain(), grace_seconds)
        except TimeoutError:
            log.warning("background publisher closed with %d event(s) unpublished", self._queue.qsize())
        if self._task is not None and self._task.get_loop() is asyncio.get_running_loop():
            await self._steps.stop([self._task])
            self._task = None
