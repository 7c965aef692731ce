"""A real HTTP receiver for notification tests, and small builders."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson
import pytest

S = "/ngsi-ld/v1/subscriptions"
E = "/ngsi-ld/v1/entities"


@dataclasses.dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    at: float


class Receiver:
    """An HTTP server on 127.0.0.1 (random port) in a thread, recording every POST."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self.status = 204
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                status = receiver.status
                if 200 <= status < 300:
                    with receiver._lock:
                        receiver.received.append(Received(self.path, {k.lower(): v for k, v in self.headers.items()},
                                                          orjson.loads(raw), time.time()))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/notify"

    def bodies(self) -> list[dict[str, Any]]:
        with self._lock:
            return [r.body for r in self.received]

    def data(self) -> list[dict[str, Any]]:
        return [entity for body in self.bodies() for entity in body["data"]]

    async def wait_for(self, predicate: Callable[[list[Received]], bool], seconds: float = 10.0) -> list[Received]:
        deadline = time.monotonic() + seconds
        while True:
            with self._lock:
                snapshot = list(self.received)
            if predicate(snapshot):
                return snapshot
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out; received {len(snapshot)}: {[r.body for r in snapshot][-3:]}")
            await asyncio.sleep(0.02)

    async def wait_count(self, n: int, seconds: float = 10.0) -> list[Received]:
        return await self.wait_for(lambda got: len(got) >= n, seconds)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(name="receiver")
def receiver_fixture() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.close()


@pytest.fixture(name="fast_notify")
async def fast_notify_fixture(app: Any) -> AsyncIterator[None]:
    """Short timeouts and backoff, few failures before a subscription is failed."""
    service = app.state.subscriptions
    saved = service.settings
    service.settings = dataclasses.replace(saved, max_failures=3, backoff_base=0.05, backoff_cap=0.3, timeout=2.0)
    yield
    service.settings = saved


def closed_port() -> int:
    """A port nobody listens on: connections are refused at once."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = int(sock.getsockname()[1])
    sock.close()
    return port


def subscription(uri: str, **members: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"type": "Subscription", "entities": [{"type": "AirQualityObserved"}],
                            "notification": {"endpoint": {"uri": uri}}}
    body.update(members)
    return body
