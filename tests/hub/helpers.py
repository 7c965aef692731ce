"""Small builders shared by the hub tests."""

from __future__ import annotations

from typing import Any

CORE = "https://uri.etsi.org/ngsi-ld/v1/ngsi-ld-core-context-v1.8.jsonld"
JSON = {"Content-Type": "application/json"}
LD = {"Content-Type": "application/ld+json"}


def link(url: str) -> dict[str, str]:
    return {"Link": f'<{url}>; rel="http://www.w3.org/ns/json-ld#context"; type="application/ld+json"'}


def air(n: int, pm25: float = 10.0, lon: float = 116.40, lat: float = 39.90, **extra: Any) -> dict[str, Any]:
    entity: dict[str, Any] = {
        "id": f"urn:ngsi-ld:AirQualityObserved:{n:06d}",
        "type": "AirQualityObserved",
        "pm25": {"type": "Property", "value": pm25, "unitCode": "GQ", "observedAt": "2026-11-20T08:00:00Z"},
        "location": {"type": "GeoProperty", "value": {"type": "Point", "coordinates": [lon, lat]}},
    }
    entity.update(extra)
    return entity
