"""The in-process event bus.

Domains react to each other's changes here without HTTP and without touching each other's
tables. Handlers run after the change has committed; a failing handler is logged and never
breaks the publisher. Cross-process delivery goes through the database outbox, not this bus.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

Handler = Callable[["Event"], Awaitable[None]]


@dataclass(frozen=True)
class Event:
    topic: str
    payload: dict[str, Any] = field(default_factory=dict)


class EventBus:
    def __init__(self) -> None:
        self._handlers: dict[str, list[Handler]] = defaultdict(list)

    def subscribe(self, topic: str, handler: Handler) -> Callable[[], None]:
        """Subscribe to a topic ('*' for all); returns a function that unsubscribes."""
        self._handlers[topic].append(handler)
        return lambda: self._handlers[topic].remove(handler)

    async def publish(self, topic: str, payload: dict[str, Any]) -> None:
        event = Event(topic, payload)
        handlers = [*self._handlers.get(topic, ()), *self._handlers.get("*", ())]
        if not handlers:
            return
        results = await asyncio.gather(*(handler(event) for handler in handlers), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                log.error("event handler failed on %s: %r", topic, result)
