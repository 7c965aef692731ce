"""Helpers for the environment tests (a module of its own: conftest.py names are shared)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from cityos.core import clock
from cityos.core.events import Event

NOW = datetime(2026, 11, 21, 8, 10, tzinfo=UTC)  # 16:10 in Haikou: daytime


@contextmanager
def fixed_clock(start: datetime = NOW) -> Iterator[list[datetime]]:
    now = [start]
    clock.set_clock(lambda: now[0])
    try:
        yield now
    finally:
        clock.reset_clock()


class Captured:
    """Everything published on a topic, for assertions."""

    def __init__(self, app: Any, topic: str) -> None:
        self.events: list[dict[str, Any]] = []
        self._unsubscribe = app.state.bus.subscribe(topic, self._on)

    async def _on(self, event: Event) -> None:
        self.events.append(event.payload)

    def close(self) -> None:
        self._unsubscribe()


def ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


async def provision(client: Any, auth: Any, name: str, profile: str, district: str = "Meilan",
                    lon: float = 110.35, lat: float = 20.02) -> str:
    response = await client.post("/api/iot/devices", headers=auth.headers("sys_admin"),
                                 json={"name": name, "profile": profile, "lon": lon, "lat": lat,
                                       "district": district, "department": "EPB"})
    assert response.status_code == 201, response.text
    return str(response.json()["token"])


async def send(client: Any, token: str, payload: Any) -> dict[str, Any]:
    response = await client.post(f"/api/v1/{token}/telemetry", json=payload)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def entity(client: Any, auth: Any, entity_id: str) -> dict[str, Any]:
    response = await client.get(f"/ngsi-ld/v1/entities/{entity_id}", headers=auth.headers("sys_admin"),
                                params={"options": "keyValues"})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body
