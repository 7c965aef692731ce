"""Slow clients are cut off (slowloris): a real uvicorn server with CityOS's options, real sockets.

The request head must be complete within the header timeout (core/serving.py); a request body may
not pause longer than the idle timeout nor take longer than the total (core/limits.py → 408).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Iterator
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
import uvicorn

from cityos.core.limits import RequestLimits
from cityos.core.serving import HeaderTimeout, uvicorn_options

HEADER_TIMEOUT = 1.0
# Generous: the assertion is that the server closes the connection, not how fast.
WAIT = 15.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _limits_of(app: Any) -> RequestLimits:
    layer = app.middleware_stack
    while layer is not None and not isinstance(layer, RequestLimits):
        layer = getattr(layer, "app", None)
    assert isinstance(layer, RequestLimits)
    return layer


@contextlib.contextmanager
def _short_timeouts(app: Any) -> Iterator[None]:
    limits = _limits_of(app)
    saved = (limits.idle, limits.total, HeaderTimeout.header_timeout)
    limits.idle, limits.total = 1.0, 2.5
    try:
        yield
    finally:
        limits.idle, limits.total, HeaderTimeout.header_timeout = saved


@pytest.fixture(params=["h11", "httptools"])
async def server(request: pytest.FixtureRequest, app: Any) -> AsyncIterator[int]:
    """The test app served by uvicorn on a free port, with the options `cityos serve` uses."""
    options = uvicorn_options(SimpleNamespace(header_timeout=HEADER_TIMEOUT, keep_alive_timeout=5))
    if request.param == "h11":
        from cityos.core.serving import GuardedH11Protocol

        options["http"] = GuardedH11Protocol
    port = _free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off", log_level="warning", **options)
    instance = uvicorn.Server(config)
    task = asyncio.create_task(instance.serve())
    for _ in range(500):
        if instance.started:
            break
        await asyncio.sleep(0.02)
    app.middleware_stack = app.middleware_stack or app.build_middleware_stack()
    with _short_timeouts(app):
        yield port
    instance.should_exit = True
    await asyncio.wait_for(task, 10)


async def _closed(reader: asyncio.StreamReader, writer: asyncio.StreamWriter | None = None,
                  trickle: bytes = b"") -> bytes:
    """Everything the server sends until it closes; meanwhile one byte of `trickle` every 0.2 s."""

    async def dribble() -> None:
        assert writer is not None
        for byte in trickle:
            await asyncio.sleep(0.2)
            writer.write(bytes([byte]))
            with contextlib.suppress(ConnectionError):
                await writer.drain()

    feeder = asyncio.create_task(dribble()) if trickle else None
    try:
        return await asyncio.wait_for(reader.read(), WAIT)
    finally:
        if feeder is not None:
            feeder.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                await feeder


async def test_a_trickled_request_head_is_cut_off(server: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server)
    writer.write(b"GET /health HTTP/1.1\r\nHost: cityos.test\r\n")
    await writer.drain()
    answer = await _closed(reader, writer, trickle=b"X-Slow: " + b"a" * 200)
    assert answer == b""  # closed without an answer, although bytes kept coming
    writer.close()


async def test_a_silent_connection_is_closed(server: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server)
    assert await _closed(reader) == b""
    writer.close()


async def test_the_head_timeout_applies_again_after_each_answer(server: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server)
    writer.write(b"GET /health HTTP/1.1\r\nHost: cityos.test\r\n\r\n")
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT)
    assert head.startswith(b"HTTP/1.1 200")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length"))
    assert orjson.loads(await reader.readexactly(length)) == {"status": "ok"}
    # The keep-alive connection now receives a second head, too slowly.
    writer.write(b"GET /health HTTP/1.1\r\n")
    await writer.drain()
    assert await _closed(reader, writer, trickle=b"Host: " + b"b" * 200) == b""
    writer.close()


async def test_a_stalled_body_gets_408_and_the_connection_closed(server: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server)
    writer.write(b"POST /ngsi-ld/v1/entityOperations/query HTTP/1.1\r\nHost: cityos.test\r\n"
                 b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"type\":")
    await writer.drain()
    answer = await _closed(reader)
    status, _, rest = answer.partition(b"\r\n")
    assert status == b"HTTP/1.1 408 Request Timeout", answer[:200]
    assert b"connection: close" in rest.lower()
    problem = orjson.loads(rest.split(b"\r\n\r\n", 1)[1])
    assert problem["status"] == 408 and problem["type"].endswith("BadRequestData") and "in time" in problem["detail"]
    writer.close()


async def test_a_trickled_body_is_cut_off_at_the_total(server: int) -> None:
    """One byte every 0.2 s never trips the 1 s idle timeout; the 2.5 s total does."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server)
    writer.write(b"POST /ngsi-ld/v1/entityOperations/query HTTP/1.1\r\nHost: cityos.test\r\n"
                 b"Content-Type: application/json\r\nContent-Length: 500\r\n\r\n")
    await writer.drain()
    answer = await _closed(reader, writer, trickle=b" " * 200)
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    writer.close()


async def test_a_prompt_client_is_served(server: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server)
    body = orjson.dumps({"type": "Query", "entities": [{"type": "Nothing"}]})
    writer.write(b"POST /ngsi-ld/v1/entityOperations/query HTTP/1.1\r\nHost: cityos.test\r\n"
                 b"Content-Type: application/json\r\nConnection: close\r\n"
                 b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    await writer.drain()
    answer = await _closed(reader)
    assert answer.startswith(b"HTTP/1.1 200"), answer[:300]
    assert answer.endswith(b"[]")
    writer.close()
