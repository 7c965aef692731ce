"""Distributed operations between real CityOS brokers (a city 市 and its districts 区) on loopback.

The district brokers are `cityos serve` processes with databases of their own (SQLite files, or
PostgreSQL databases created for the test); the city is the test's app or a process too. The city
registers a district as a Context Source; its queries and retrievals then reach the district.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from auth_tokens import server_headers
from backends import admin_sql, postgres_database_url
from hub.helpers import JSON
from own_services import free_port

R = "/ngsi-ld/v1/csourceRegistrations"
E = "/ngsi-ld/v1/entities"


def building(n: str, **attrs: Any) -> dict[str, Any]:
    entity: dict[str, Any] = {"id": f"urn:ngsi-ld:Building:{n}", "type": "Building"}
    entity.update({k: {"type": "Property", "value": v} for k, v in attrs.items()})
    return entity


class Broker:
    """A `cityos serve` process on a free loopback port with a database of its own."""

    def __init__(self, database_url: str, name: str, log_dir: Path) -> None:
        self.port = free_port()
        self.log = log_dir / f"{name}.log"  # why a broker did not start is in its own log
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, "CITYOS_DATABASE_URL": database_url, "CITYOS_OUTBOUND_ALLOW": "127.0.0.0/8",
                    "CITYOS_BROKER_ID": f"cityos-test-{name}",
                    # generous: this test is about the answers, timeouts are tested in-process
                    "CITYOS_CSOURCE_TIMEOUT": "30"}
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        with self.log.open("ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "cityos.cli", "serve", "--port", str(self.port), "--log-level", "warning",
                env=self.env, stdout=log, stderr=log, start_new_session=True)
        deadline = time.monotonic() + 120
        async with httpx.AsyncClient(timeout=1) as http:
            while time.monotonic() < deadline:
                try:
                    if (await http.get(f"{self.url}/health")).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                assert self.proc.returncode is None, \
                    f"the broker exited during start-up: {self.log.read_text(errors='replace')[-3000:]}"
                await asyncio.sleep(0.1)
        raise AssertionError("the broker did not start")

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), 15)
            except TimeoutError:
                os.killpg(self.proc.pid, signal.SIGKILL)
                await self.proc.wait()

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, timeout=20, headers=server_headers())


def registration_of(broker: Broker, n: int, **extra: Any) -> dict[str, Any]:
    """The city's registration of a broker: every Building, asked with a token of the broker."""
    return {"id": f"urn:ngsi-ld:ContextSourceRegistration:{n}", "type": "ContextSourceRegistration",
            "information": [{"entities": [{"type": "Building"}]}], "endpoint": broker.url,
            "contextSourceInfo": [{"key": "Authorization", "value": server_headers()["Authorization"]}], **extra}


@contextlib.asynccontextmanager
async def broker_pool(database_url: str, tmp_path: Path, template: str) -> AsyncIterator[Callable[[int], Any]]:
    """Start n brokers (in parallel), each on a fresh database of the session's backend (a copy of the
    migrated `template`; `cityos serve` still runs its own start-up migration, which finds it at head)."""
    started: list[Broker] = []
    databases: list[str] = []

    async def start(n: int) -> list[Broker]:
        new = []
        for i in range(n):
            name = f"b{len(started) + i}"
            if database_url.startswith("sqlite"):
                copy = tmp_path / (name + ".db")
                await asyncio.to_thread(shutil.copyfile, template, copy)
                url = f"sqlite:///{copy}"
            else:
                db = f"cityos_csr_{uuid.uuid4().hex[:10]}"
                await asyncio.to_thread(admin_sql, f'CREATE DATABASE "{db}" TEMPLATE "{template}"')
                databases.append(db)
                url = postgres_database_url(db)
            new.append(Broker(url, name, tmp_path))
        started.extend(new)
        await asyncio.gather(*(b.start() for b in new))
        return new

    try:
        yield start
    finally:
        await asyncio.gather(*(b.stop() for b in started))
        for db in databases:
            await asyncio.to_thread(admin_sql, f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')


@pytest.fixture
async def brokers(database_url: str, tmp_path: Path, broker_template: str) -> AsyncIterator[Callable[[int], Any]]:
    async with broker_pool(database_url, tmp_path, broker_template) as start:
        yield start


async def test_city_query_and_retrieval_reach_the_district(client: httpx.AsyncClient, brokers: Any) -> None:
    (district,) = await brokers(1)
    async with district.client() as d:
        for entity in (building("d1", height=30), building("shared", height=12)):
            assert (await d.post(E, json=entity, headers=JSON)).status_code == 201
    for entity in (building("c1", height=5), building("shared", name="市图书馆")):
        assert (await client.post(E, json=entity, headers=JSON)).status_code == 201
    assert (await client.post(R, json=registration_of(district, 1), headers=JSON)).status_code == 201

    r = await client.get(E, params={"type": "Building", "options": "keyValues", "count": "true"})
    assert r.status_code == 200 and "NGSILD-Warning" not in r.headers
    by_id = {e["id"].rsplit(":", 1)[1]: e for e in r.json()}
    assert set(by_id) == {"c1", "d1", "shared"}
    # One entity held in two places is one entity with the members of both (the local one first).
    assert by_id["shared"] == {"id": "urn:ngsi-ld:Building:shared", "type": "Building", "name": "市图书馆",
                               "height": 12}
    assert by_id["d1"]["height"] == 30
    assert r.headers["NGSILD-Results-Count"] == "3"
    only_count = await client.get(E, params={"type": "Building", "count": "true", "limit": "0"})
    assert only_count.status_code == 200 and only_count.json() == []
    assert "NGSILD-Warning" not in only_count.headers
    assert only_count.headers["NGSILD-Results-Count"] == "4"  # 2 local + 2 remote; not seen together: not merged

    local = await client.get(E, params={"type": "Building", "local": "true", "options": "keyValues"})
    assert {e["id"].rsplit(":", 1)[1] for e in local.json()} == {"c1", "shared"}
    assert "height" not in next(e for e in local.json() if e["id"].endswith("shared"))

    # Filters travel with the query: the district answers only what matches.
    high = await client.get(E, params={"type": "Building", "q": "height>20", "options": "keyValues"})
    assert [e["id"] for e in high.json()] == ["urn:ngsi-ld:Building:d1"]

    one = await client.get(f"{E}/urn:ngsi-ld:Building:d1")
    assert one.status_code == 200 and one.json()["height"] == {"type": "Property", "value": 30}
    merged = await client.get(f"{E}/urn:ngsi-ld:Building:shared", params={"options": "keyValues"})
    assert merged.json() == by_id["shared"]
    assert (await client.get(f"{E}/urn:ngsi-ld:Building:d1", params={"local": "true"})).status_code == 404
    assert (await client.get(f"{E}/urn:ngsi-ld:Building:nowhere")).status_code == 404
    # A registration for other types is not asked.
    await client.delete(f"{R}/urn:ngsi-ld:ContextSourceRegistration:1")
    other = registration_of(district, 2, information=[{"entities": [{"type": "Vehicle"}]}])
    assert (await client.post(R, json=other, headers=JSON)).status_code == 201
    r = await client.get(E, params={"type": "Building", "options": "keyValues"})
    assert {e["id"].rsplit(":", 1)[1] for e in r.json()} == {"c1", "shared"}


async def test_a_source_that_is_down_or_silent_makes_the_answer_partial(client: httpx.AsyncClient,
                                                                       app: Any) -> None:
    assert (await client.post(E, json=building("c1", height=5), headers=JSON)).status_code == 201
    down = free_port()  # nothing listens there
    silent = socket.socket()  # accepts connections and never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    federation = app.state.federation
    saved = federation.timeout
    federation.timeout = 0.5
    try:
        for n, port in ((1, down), (2, silent.getsockname()[1])):
            body = {"id": f"urn:ngsi-ld:ContextSourceRegistration:dead{n}", "type": "ContextSourceRegistration",
                    "information": [{"entities": [{"type": "Building"}]}], "endpoint": f"http://127.0.0.1:{port}"}
            assert (await client.post(R, json=body, headers=JSON)).status_code == 201
        r = await client.get(E, params={"type": "Building"})
        assert r.status_code == 200
        assert [e["id"] for e in r.json()] == ["urn:ngsi-ld:Building:c1"]
        warning = r.headers["NGSILD-Warning"]
        assert "urn:ngsi-ld:ContextSourceRegistration:dead1" in warning
        assert "urn:ngsi-ld:ContextSourceRegistration:dead2" in warning
        r = await client.get(f"{E}/urn:ngsi-ld:Building:elsewhere")
        assert r.status_code == 404 and "dead1" in r.headers["NGSILD-Warning"]
        assert "could not be asked" in r.json()["detail"]
        ok = await client.get(f"{E}/urn:ngsi-ld:Building:c1")
        assert ok.status_code == 200 and "dead2" in ok.headers["NGSILD-Warning"]
    finally:
        federation.timeout = saved
        silent.close()


async def test_a_source_answering_garbage_is_a_failed_source(client: httpx.AsyncClient) -> None:
    from hub.subscriptions.notify_helpers import Receiver

    class Garbage(Receiver):
        pass

    garbage = Garbage()  # answers GET with 501 (BaseHTTPRequestHandler without do_GET)
    try:
        body = {"id": "urn:ngsi-ld:ContextSourceRegistration:g", "type": "ContextSourceRegistration",
                "information": [{"entities": [{"type": "Building"}]}],
                "endpoint": garbage.url.rsplit("/", 1)[0]}
        assert (await client.post(R, json=body, headers=JSON)).status_code == 201
        r = await client.get(E, params={"type": "Building"})
        assert r.status_code == 200 and r.json() == []
        assert "HTTP 501" in r.headers["NGSILD-Warning"]
    finally:
        garbage.server.shutdown()
        garbage.server.server_close()


async def test_three_brokers_chain_and_a_loop_ends(brokers: Any) -> None:
    city, district, town = await brokers(3)
    for broker, name in ((city, "city"), (district, "district"), (town, "town")):
        async with broker.client() as http:
            assert (await http.post(E, json=building(name, level=name), headers=JSON)).status_code == 201
    # city → district → town, and a misconfigured town → city that would loop without Via.
    for upper, lower, n in ((city, district, 1), (district, town, 2), (town, city, 3)):
        async with upper.client() as http:
            assert (await http.post(R, json=registration_of(lower, n), headers=JSON)).status_code == 201
    async with city.client() as http:
        r = await http.get(E, params={"type": "Building", "options": "keyValues"})
        assert r.status_code == 200, r.text
        ids = [e["id"].rsplit(":", 1)[1] for e in r.json()]
        assert "NGSILD-Warning" not in r.headers, r.headers["NGSILD-Warning"]
        assert sorted(ids) == ["city", "district", "town"]
        one = await http.get(f"{E}/urn:ngsi-ld:Building:town", params={"options": "keyValues"})
        assert one.status_code == 200 and one.json()["level"] == "town"
        # The district alone answers with itself and the town.
    async with district.client() as http:
        r = await http.get(E, params={"type": "Building", "options": "keyValues", "local": "true"})
        assert [e["id"] for e in r.json()] == ["urn:ngsi-ld:Building:district"]
        # A request that already passed this broker is answered locally.
        r = await http.get(E, params={"type": "Building", "options": "keyValues"},
                           headers={"Via": "1.1 cityos-test-b1"})
        assert [e["id"] for e in r.json()] == ["urn:ngsi-ld:Building:district"]
