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


def reading_attrs(**values: Any) -> dict[str, Any]:
    """A detector entity's attributes as the hub hands them to the traffic domain (expanded names, one instance
    each): `name=(value, unitCode)`, observed at `at` (default 2026-12-05T10:00:00Z)."""
    stamp = values.pop("at", "2026-12-05T10:00:00Z")
    attrs: dict[str, Any] = {}
    for name, (value, unit) in values.items():
        attrs[f"https://smartdatamodels.org/dataModel.Transportation/{name}"] = [
            {"type": "Property", "value": value, "unitCode": unit, "observedAt": stamp}]
    return attrs


# A four-arm junction's plan for the control loop's tests: north-south (phase 0), east-west (phase 1), each
# incoming lane linked to the opposite outgoing one; and stop-line detectors on the east-west lanes.
LANES = [{"in": "n_in", "out": "s_out"}, {"in": "s_in", "out": "n_out"},
         {"in": "e_in", "out": "w_out"}, {"in": "w_in", "out": "e_out"}]
TWO_PHASES = {"phases": [{"state": "GGrr", "minGreen": 5, "maxGreen": 60, "fixedGreen": 10},
                         {"state": "rrGG", "minGreen": 5, "maxGreen": 60, "fixedGreen": 10}],
              "yellow": 3, "allRed": 2, "conflicts": [[0, 2], [0, 3], [1, 2], [1, 3]], "links": LANES}
STOPLINE = [{"lane": "e_in", "detector": "e-in-stopline", "distance": 60},
            {"lane": "w_in", "detector": "w-in-stopline", "distance": 60}]
