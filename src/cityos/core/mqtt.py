"""Helpers for aiomqtt clients shared by the domains that publish with it."""

from __future__ import annotations

import asyncio
from typing import Any


def settle_disconnect(client: Any) -> None:
    """Read an aiomqtt client's disconnection error once its connection is over.

    aiomqtt 2.5 keeps an unexpected disconnection's error on a future that nothing awaits when the
    caller has already seen the failure as a raised MqttError; asyncio then logs "Future exception
    was never retrieved" when the client is collected. The error itself was handled by the caller.
    """
    future = getattr(client, "_disconnected", None)
    if isinstance(future, asyncio.Future) and future.done() and not future.cancelled():
        future.exception()
