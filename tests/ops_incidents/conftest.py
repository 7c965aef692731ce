"""Fixtures for the incident and Open311 tests: districts in the hub, a movable clock, the service."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from ops_incidents_helpers import D1, D1_POLYGON, D2, D2_POLYGON, Clock

from cityos.core import clock


@pytest.fixture(autouse=True)
def _fresh_district_cache(app: Any) -> None:
    """The `client` fixture empties the tables behind the hub's back: drop the cached District polygons."""
    app.state.ops_incidents.forget_districts()
    app.state.ops_incidents.forget_departments()


@pytest.fixture
def fixed_clock() -> Iterator[Clock]:
    moving = Clock(datetime(2026, 3, 2, 8, 0, tzinfo=UTC))
    clock.set_clock(lambda: moving.at)
    try:
        yield moving
    finally:
        clock.reset_clock()


@pytest.fixture
async def districts(client: httpx.AsyncClient, auth: Any) -> list[str]:
    admin = auth.headers("sys_admin")
    for ident, polygon in ((D1, D1_POLYGON), (D2, D2_POLYGON)):
        response = await client.post("/ngsi-ld/v1/entities", headers=admin, json={
            "id": ident, "type": "District", "name": {"type": "Property", "value": ident[-2:]},
            "location": {"type": "GeoProperty", "value": {"type": "Polygon", "coordinates": polygon}}})
        assert response.status_code == 201, response.text
    return [D1, D2]


@pytest.fixture
def service(app: Any) -> Any:
    return app.state.ops_incidents
