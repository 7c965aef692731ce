"""Two `cityos serve` processes on one database and one 3-node JetStream cluster (CITYOS_EVENTS_URL).

A change made through one process reaches the rules engine's durable group wherever it runs, and a
sustained-window rule fires exactly once for an entity whose readings were written through both.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from auth_tokens import server_headers
from nats_cluster import NatsCluster
from own_services import free_port, wait_for_port

E = "/ngsi-ld/v1/entityOperations/upsert"


def _serve(database_url: str, port: int, events: dict[str, str], instance: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "CITYOS_DATABASE_URL": database_url, **events, "CITYOS_EVENTS_INSTANCE": instance,
           "CITYOS_RULES_TICK_SECONDS": "0.5", "CITYOS_RULES_RESYNC_SECONDS": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "cityos.cli", "serve", "--port", str(port), "--no-migrate", "--log-level", "error"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if not wait_for_port(port, 180):  # a loaded machine: the app assembles its domains first
        process.kill()
        raise AssertionError("server did not start")
    return process


@pytest.fixture
async def two_servers(database_url: str, cluster: NatsCluster, app: Any) -> AsyncIterator[list[str]]:
    events = {"CITYOS_EVENTS_URL": cluster.url, "CITYOS_EVENTS_REPLICAS": "3",
              "CITYOS_EVENTS_STREAM": f"S{uuid.uuid4().hex[:8]}", "CITYOS_EVENTS_SUBJECTS": f"s{uuid.uuid4().hex[:8]}"}
    ports = [free_port(), free_port()]
    servers = []
    try:
        for index, port in enumerate(ports):
            servers.append(await asyncio.to_thread(_serve, database_url, port, events, f"{index}/2"))
        yield [f"http://127.0.0.1:{port}" for port in ports]
    finally:
        for server in servers:
            server.terminate()
        for server in servers:
            await asyncio.to_thread(server.wait, 20)


def air(entity: str, pm25: float) -> list[dict[str, Any]]:
    return [{"id": entity, "type": "AirQualityObserved", "pm25": {"type": "Property", "value": pm25}}]


async def alarms(http: httpx.AsyncClient, base: str, headers: dict[str, str]) -> list[dict[str, Any]]:
    r = await http.get(f"{base}/api/ops/alarms", headers=headers)
    assert r.status_code == 200, r.text
    items: list[dict[str, Any]] = r.json()["items"]
    return items


async def eventually(check: Any, seconds: float = 30.0) -> Any:
    result = None
    for _ in range(int(seconds * 5)):
        result = await check()
        if result:
            return result
        await asyncio.sleep(0.2)
    return result


async def test_changes_through_either_process_reach_the_rules_group_once(two_servers: list[str]) -> None:
    a, b = two_servers
    admin = server_headers()
    json_ld = {**admin, "Content-Type": "application/json"}
    async with httpx.AsyncClient(timeout=30) as http:
        r = await http.post(f"{a}/api/ops/rules", headers=admin, json={
            "id": "pm25-hot", "name": "PM2.5 > 115", "entityTypes": ["AirQualityObserved"], "severity": "major",
            "condition": {"threshold": {"attr": "pm25", "op": ">", "value": 115}}})
        assert r.status_code == 201, r.text
        r = await http.post(f"{a}/api/ops/rules", headers=admin, json={
            "id": "pm25-sustained", "name": "PM2.5 > 300 for 3 s", "entityTypes": ["AirQualityObserved"],
            "severity": "critical",
            "condition": {"sustained": {"attr": "pm25", "op": ">", "value": 300, "for": "PT3S"}}})
        assert r.status_code == 201, r.text
        await asyncio.sleep(2.5)  # each process re-reads the rules (CITYOS_RULES_RESYNC_SECONDS=1)

        # Made through B, seen by the rules group (in whichever process owns the entity's partition).
        entity = "urn:ngsi-ld:AirQualityObserved:two-proc-1"
        assert (await http.post(f"{b}{E}", headers=json_ld, json=air(entity, 150))).status_code in (201, 204)

        async def raised() -> list[dict[str, Any]]:
            return [x for x in await alarms(http, a, admin) if x["ruleId"] == "pm25-hot"]
        [alarm] = await eventually(raised)
        assert alarm["entityId"] == entity and alarm["count"] == 1

        # A sustained window, its readings written alternately through A and B.
        hot = "urn:ngsi-ld:AirQualityObserved:two-proc-2"
        for k in range(8):
            base = (a, b)[k % 2]
            assert (await http.post(f"{base}{E}", headers=json_ld, json=air(hot, 310 + k))).status_code in (201, 204)
            await asyncio.sleep(0.5)

        async def sustained() -> list[dict[str, Any]]:
            return [x for x in await alarms(http, b, admin) if x["ruleId"] == "pm25-sustained"]
        found = await eventually(sustained)
        assert [x["entityId"] for x in found] == [hot]
        await asyncio.sleep(2.0)  # a second firing from a split window would show up by now
        [fired] = await sustained()
        assert fired["status"] == "active"
        assert fired["raisedAt"] is not None
