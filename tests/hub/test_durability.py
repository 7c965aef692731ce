"""Acknowledged writes survive a SIGKILL of the server; concurrent writers lose no update."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time

import httpx

from auth_tokens import server_headers
from hub.helpers import JSON, air

E = "/ngsi-ld/v1/entities"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start(database_url: str, port: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "CITYOS_DATABASE_URL": database_url}
    process = subprocess.Popen(
        [sys.executable, "-m", "cityos.cli", "serve", "--port", str(port), "--no-migrate", "--log-level", "error"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return process
        except httpx.HTTPError:
            time.sleep(0.1)
    process.kill()
    raise AssertionError("server did not start")


async def test_acknowledged_writes_survive_sigkill(database_url: str) -> None:
    # The blocking waits on the server process run in a thread: this test shares its event loop (and its
    # SQLite file) with the session's app, whose background loops must be able to finish a transaction
    # they have begun; a frozen loop would keep SQLite's write lock from the server being waited for.
    port = _free_port()
    server = await asyncio.to_thread(_start, database_url, port)
    acknowledged: set[str] = set()
    enough = asyncio.Event()
    tenant = {"NGSILD-Tenant": f"kill{port}"}

    async def writer(http: httpx.AsyncClient, start: int) -> None:
        for i in range(start, start + 10_000, 4):
            try:
                r = await http.post(E, json=air(i), headers=JSON | tenant)
            except httpx.HTTPError:
                return
            if r.status_code == 201:
                acknowledged.add(air(i)["id"])
                if len(acknowledged) >= 150:
                    enough.set()

    headers = server_headers()
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5, headers=headers) as http:
        tasks = [asyncio.create_task(writer(http, k)) for k in range(4)]
        await asyncio.wait_for(enough.wait(), timeout=120)
        os.kill(server.pid, signal.SIGKILL)
        await asyncio.to_thread(server.wait)
        await asyncio.gather(*tasks)
    assert len(acknowledged) >= 150

    server = await asyncio.to_thread(_start, database_url, port)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10, headers=headers) as http:
            stored: set[str] = set()
            url = f"{E}?type=AirQualityObserved&limit=1000"
            while url:
                r = await http.get(url, headers=tenant)
                assert r.status_code == 200
                stored |= {e["id"] for e in r.json()}
                nxt = [p for p in r.headers.get("Link", "").split(", <") if 'rel="next"' in p]
                url = nxt[0][nxt[0].index("/ngsi-ld"):nxt[0].index(">")] if nxt else ""
            assert acknowledged <= stored, f"lost {len(acknowledged - stored)} acknowledged writes"
            # Nothing half-written: every stored entity is complete.
            sample = await http.get(E, params={"type": "AirQualityObserved", "limit": "200", "options": "keyValues"},
                                    headers=tenant)
            assert all(e["pm25"] == 10.0 and e["location"]["type"] == "Point" for e in sample.json())
    finally:
        server.terminate()
        await asyncio.to_thread(server.wait, 10)


async def test_concurrent_attribute_updates_lose_nothing(client: httpx.AsyncClient) -> None:
    await client.post(E, json=air(1), headers=JSON)
    url = f"{E}/urn:ngsi-ld:AirQualityObserved:000001/attrs"

    async def append(k: int) -> int:
        r = await client.post(url, json={f"sensor{k}": {"type": "Property", "value": k}}, headers=JSON)
        return r.status_code

    codes = await asyncio.gather(*(append(k) for k in range(40)))
    assert set(codes) == {204}
    body = (await client.get(f"{E}/urn:ngsi-ld:AirQualityObserved:000001", params={"options": "keyValues"})).json()
    assert {f"sensor{k}" for k in range(40)} <= set(body)
