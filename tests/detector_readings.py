"""A traffic detector's reading written to the hub as its device would publish it (TrafficFlowObserved)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from cityos.core import clock
from cityos.traffic.control_loop import detector_entity


async def write_reading(client: Any, detector: str, at: dt.datetime, occupancy: float, speed: float = 3.0) -> None:
    stamp = clock.iso(at)
    body = {"id": detector_entity(detector), "type": "TrafficFlowObserved",
            "occupancy": {"type": "Property", "value": occupancy, "unitCode": "P1", "observedAt": stamp},
            "averageVehicleSpeed": {"type": "Property", "value": speed, "unitCode": "KMH", "observedAt": stamp}}
    written = await client.post("/ngsi-ld/v1/entityOperations/upsert", json=[body])
    assert written.status_code in (201, 204), written.text
