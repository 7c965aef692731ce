"""Helpers shared by the ops.rules tests."""

from __future__ import annotations

from typing import Any


def air(entity_id: str = "urn:ngsi-ld:AirQualityObserved:aq-1", **attrs: Any) -> dict[str, Any]:
    """An AirQualityObserved entity with the given attributes (plain values become Properties)."""
    body: dict[str, Any] = {"id": entity_id, "type": "AirQualityObserved"}
    for name, value in attrs.items():
        body[name] = value if isinstance(value, dict) and "type" in value else {"type": "Property", "value": value}
    return body
