"""Helpers shared by the incident and Open311 tests."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import httpx

D1 = "urn:ngsi-ld:District:d1"
D2 = "urn:ngsi-ld:District:d2"
# Two adjacent squares of about 2 km: d1 west of 110.32 E, d2 east of it.
D1_POLYGON = [[[110.30, 20.00], [110.32, 20.00], [110.32, 20.02], [110.30, 20.02], [110.30, 20.00]]]
D2_POLYGON = [[[110.32, 20.00], [110.34, 20.00], [110.34, 20.02], [110.32, 20.02], [110.32, 20.00]]]
IN_D1 = (110.31, 20.01)
IN_D2 = (110.33, 20.01)
BASE = "/api/ops/incidents"


def point(lon: float, lat: float) -> dict[str, Any]:
    return {"type": "Point", "coordinates": [lon, lat]}


@dataclass
class Clock:
    at: datetime

    def advance(self, **delta: float) -> datetime:
        self.at = self.at + timedelta(**delta)
        return self.at


async def create(client: httpx.AsyncClient, headers: dict[str, str], status: int = 201, **body: Any) -> dict[str, Any]:
    payload = {"category": "pothole", "title": "Pothole on Main St", "location": point(*IN_D1)}
    payload.update(body)
    response = await client.post(BASE, headers=headers, json=payload)
    assert response.status_code == status, response.text
    result: dict[str, Any] = response.json()
    return result


async def act(client: httpx.AsyncClient, headers: dict[str, str], incident_id: str, action: str,
              status: int = 200, **body: Any) -> dict[str, Any]:
    response = await client.post(f"{BASE}/{incident_id}/{action}", headers=headers, json=body or None)
    assert response.status_code == status, response.text
    result: dict[str, Any] = response.json()
    return result
