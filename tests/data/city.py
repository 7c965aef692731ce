"""Seeding the hub with what the simulated city produces: its districts, roads, rivers and points of
interest (sim.entities) and observed entities of the IoT profiles placed in each district, with a few
hours of readings (history), all written through the NGSI-LD API."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

import cityos.iot
from cityos.sim.city import build_city
from cityos.sim.entities import city_entities

UPSERT = "/ngsi-ld/v1/entityOperations/upsert"
T0 = datetime(2026, 12, 1, 0, 0, tzinfo=UTC)
PROFILES = json.loads((Path(cityos.iot.__file__).parent / "profiles.json").read_text())["profiles"]
# The simulator's departments per profile (sim.platform.DEPARTMENTS).
DEPARTMENT = {"air-quality": "environment", "water-quality": "environment", "noise": "environment",
              "traffic-flow": "transport", "parking-spot": "transport", "streetlight": "urban-management",
              "smoke": "fire-rescue", "water-level": "water-authority", "smart-meter": "energy",
              "waste-bin": "sanitation", "wearable": "civil-affairs", "traffic-signal": "transport",
              "transit-vehicle": "transport", "traffic-zone": "transport"}


def _reading(spec: dict[str, Any], rng: random.Random) -> Any:
    low, high = spec.get("min"), spec.get("max")
    if spec.get("type") == "list":  # a zone's standing vehicles: one, in the band of each field's range
        return [{name: _reading({**field, "attr": name}, rng) for name, field in spec["items"].items()}]
    if spec.get("type") == "relationship":
        return f"urn:ngsi-ld:{spec['objectType']}:seed-{rng.randrange(100)}"
    if low is None or high is None:
        return rng.choice([True, False]) if spec["attr"] in ("congested", "fireAlarm", "fallDetected") \
            else rng.choice(["free", "occupied"]) if spec["attr"] == "status" else rng.choice(["on", "off"])
    # Readings in a plausible band of the profile's range (the simulator's distributions are narrower).
    return round(rng.uniform(low, low + (high - low) * 0.1), 2)


def _stamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def observed_entities(districts: list[tuple[str, Any]], per_district: int, at: datetime,
                      rng: random.Random, profiles: tuple[str, ...] | None = None) -> list[dict[str, Any]]:
    out = []
    for profile in PROFILES:
        if profiles is not None and profile["id"] not in profiles:
            continue
        etype = profile["entityType"]
        for name, polygon in districts:
            centre = polygon.representative_point()
            for i in range(per_district):
                entity: dict[str, Any] = {
                    "id": f"urn:ngsi-ld:{etype}:sim-{profile['id']}-{name.lower()}-{i}", "type": etype,
                    "district": {"type": "Property", "value": name},
                    "department": {"type": "Property", "value": DEPARTMENT[profile["id"]]},
                    "location": {"type": "GeoProperty", "value": {
                        "type": "Point", "coordinates": [round(centre.x + 0.001 * i, 6), round(centre.y, 6)]}}}
                for spec in profile["attributes"].values():
                    entity[spec["attr"]] = {"type": "Property", "value": _reading(spec, rng),
                                            "observedAt": _stamp(at)}
                out.append(entity)
    return out


async def seed_city(client: httpx.AsyncClient, hours: int = 3, per_district: int = 2, seed: int = 42,
                    headers: dict[str, str] | None = None, profiles: tuple[str, ...] | None = None
                    ) -> dict[str, int]:
    city = build_city(seed=seed)
    entities = city_entities(city)
    for start in range(0, len(entities), 200):
        r = await client.post(UPSERT, json=entities[start:start + 200], headers=headers or {})
        assert r.status_code in (201, 204), r.text
    rng = random.Random(seed)
    districts = [(d.name, d.polygon) for d in city.districts]
    observed = 0
    for hour in range(hours):
        batch = observed_entities(districts, per_district, T0 + timedelta(hours=hour), rng, profiles)
        for start in range(0, len(batch), 200):
            r = await client.post(UPSERT, json=batch[start:start + 200], headers=headers or {})
            assert r.status_code in (201, 204), r.text
        observed = len(batch)
    return {"city": len(entities), "observed": observed}
