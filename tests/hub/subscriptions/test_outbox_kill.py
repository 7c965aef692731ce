"""Kill -9 the server mid-stream, restart it: every committed change is notified, nothing else is.

`cityos serve` runs as a subprocess on a file SQLite database and on PostgreSQL. Writers change
entities continuously; the server is SIGKILLed, restarted, and the writers go on. Afterwards the
attribute history (the commit log) must equal the set of notified values, de-duplicated by
notification id: at least once for every commit, and nothing a rolled-back or never-committed
write could have produced.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from auth_tokens import server_headers
from backends import admin_sql, postgres_database_url, selected_backends
from cityos.config import Settings
from cityos.core.db import create_engine
from hub.helpers import JSON, air
from hub.subscriptions.notify_helpers import E, Receiver, S, receiver_fixture, subscription  # noqa: F401

BACKENDS = selected_backends()
ENTITIES = [f"urn:ngsi-ld:AirQualityObserved:{n:06d}" for n in range(2)]
PM25 = "https://uri.etsi.org/ngsi-ld/default-context/pm25"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(params=BACKENDS)
def kill_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'kill.db'}"
        return
    name = f"cityos_kill_{uuid.uuid4().hex[:10]}"
    admin_sql(f'CREATE DATABASE "{name}"')
    try:
        yield postgres_database_url(name)
    finally:
        admin_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class Server:
    def __init__(self, database_url: str) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, "CITYOS_DATABASE_URL": database_url, "CITYOS_NOTIFY_LEASE_SECONDS": "2",
                    "CITYOS_NOTIFY_BACKOFF_CAP": "0.5", "CITYOS_NOTIFY_WORKER": "1",
                    # the receiver listens on loopback, which the default outbound policy refuses
                    "CITYOS_OUTBOUND_ALLOW": "127.0.0.0/8"}
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "cityos.cli", "serve", "--port", str(self.port), "--log-level", "warning",
            env=self.env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
            start_new_session=True)
        deadline = time.monotonic() + 90  # generous: a loaded CI machine imports slowly
        async with httpx.AsyncClient(timeout=1) as http:
            while time.monotonic() < deadline:
                try:
                    if (await http.get(f"{self.url}/health")).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                assert self.proc.returncode is None, "the server exited during start-up"
                await asyncio.sleep(0.1)
        raise AssertionError("the server did not start")

    async def kill(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        await self.proc.wait()

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                await self.kill()


class Writers:
    """Continuous attribute updates; every value is unique, so notifications map back to writes."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.acked: set[tuple[str, int]] = set()
        self.attempted: set[tuple[str, int]] = set()
        self.running = True
        self.counter = 1000

    async def run(self, entity_id: str) -> None:
        async with httpx.AsyncClient(base_url=self.base_url, timeout=5, headers=server_headers()) as http:
            while self.running:
                self.counter += 1
                value = self.counter
                self.attempted.add((entity_id, value))
                try:
                    r = await http.patch(f"{E}/{entity_id}/attrs", json={"pm25": value}, headers=JSON)
                    if r.status_code == 204:
                        self.acked.add((entity_id, value))
                except httpx.HTTPError:
                    await asyncio.sleep(0.05)  # the server is down: keep trying until it is back


async def _until(condition: Callable[[], bool], seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def _committed(database_url: str) -> set[tuple[str, int]]:
    """The commit log: every pm25 instance the history holds for the test entities."""
    engine = create_engine(Settings(database_url=database_url))
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(text(
                "SELECT entity_id, instance FROM hub_attribute_history WHERE attr = :attr AND deleted = 0"),
                {"attr": PM25})
            found = set()
            for entity_id, instance in rows:
                inst = instance if isinstance(instance, dict) else __import__("orjson").loads(instance)
                found.add((entity_id, int(inst["value"])))
            return found
    finally:
        await engine.dispose()


def _notified(sink: Receiver) -> tuple[set[tuple[str, int]], int]:
    seen: dict[str, dict[str, Any]] = {}
    for body in sink.bodies():
        seen.setdefault(body["id"], body)
    values = {(e["id"], int(e["pm25"]["value"])) for body in seen.values() for e in body["data"]}
    return values, len(sink.bodies()) - len(seen)


async def test_kill_and_restart_loses_nothing(kill_db: str, receiver: Receiver) -> None:
    server = Server(kill_db)
    try:
        await server.start()
        async with httpx.AsyncClient(base_url=server.url, timeout=5, headers=server_headers()) as http:
            r = await http.post(S, json=subscription(receiver.url, watchedAttributes=["pm25"]), headers=JSON)
            assert r.status_code == 201, r.text
            for n in range(len(ENTITIES)):
                assert (await http.post(E, json=air(n, 1), headers=JSON)).status_code == 201
        writers = Writers(server.url)
        tasks = [asyncio.create_task(writers.run(entity_id)) for entity_id in ENTITIES]
        await _until(lambda: len(writers.acked) >= 40)
        await server.kill()  # mid-stream: writes in flight, notifications unsent, leases held
        killed_after = len(writers.acked)
        await server.start()
        await _until(lambda: len(writers.acked) >= killed_after + 30)
        writers.running = False
        await asyncio.gather(*tasks)

        committed = await _committed(kill_db)
        assert writers.acked <= committed, "an acknowledged write is missing from the commit log"
        assert committed <= writers.attempted | {(e, 1) for e in ENTITIES}
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            notified, _duplicates = _notified(receiver)
            if committed <= notified:
                break
            await asyncio.sleep(0.1)
        notified, duplicates = _notified(receiver)
        missing = committed - notified
        assert not missing, f"{len(missing)} of {len(committed)} committed changes were never notified"
        extra = notified - committed
        assert not extra, f"notified changes that were never committed: {sorted(extra)[:5]}"
        print(f"committed={len(committed)} acked={len(writers.acked)} duplicates={duplicates}")
    finally:
        await server.stop()
