"""The CoAP device API on a free UDP port, with a real aiocoap client, for the tests over real UDP."""

from __future__ import annotations

import errno
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from aiocoap import Code, Context, Message

from cityos.iot.coap import start_coap
from cityos.sim.platform import free_port

CoapCall = Callable[[Code, str, bytes], Awaitable[Message]]
BIND_ATTEMPTS = 10


@asynccontextmanager
async def coap_device_api(service: Any) -> AsyncIterator[CoapCall]:
    """Serve `service`'s CoAP device API and yield `call(method, path, payload)`. A free port is picked and then
    bound: another process can take it in between (the other database's pass runs the same test at about the
    same time), so a port found taken is picked again."""
    for attempt in range(1, BIND_ATTEMPTS + 1):
        port = free_port(0, udp=True)
        try:
            stop = await start_coap(service, "127.0.0.1", port)
            break
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE or attempt == BIND_ATTEMPTS:
                raise
    client = await Context.create_client_context()

    async def call(method: Code, path: str, payload: bytes = b"") -> Message:
        return await client.request(Message(code=method, uri=f"coap://127.0.0.1:{port}{path}",
                                            payload=payload)).response

    try:
        yield call
    finally:
        await client.shutdown()
        await stop()
