"""Seed data for the cockpit's browser tests: the simulated city's districts and some devices, via the API."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from cockpit_harness import Server
from shapely.geometry import Point

from cityos.sim.city import build_city
from cityos.sim.entities import city_entities


@dataclass
class Seeded:
    districts: list[dict[str, Any]]
    devices: dict[str, str]  # name -> device token
    sensor: str  # the air-quality sensor the incident test drives
    sensor_lonlat: tuple[float, float]


def seed_city(server: Server, devices_per_district: int = 4) -> Seeded:
    city = build_city(seed=42)
    districts = [e for e in city_entities(city) if e["type"] == "District"]
    with server.http(server.admin) as http:
        response = http.post("/ngsi-ld/v1/entityOperations/upsert", json=districts,
                             headers={"Content-Type": "application/json"})
        assert response.status_code in (201, 204), response.text
        rng = random.Random(7)
        tokens: dict[str, str] = {}
        for district in city.districts:
            minx, miny, maxx, maxy = district.polygon.bounds
            placed = 0
            while placed < devices_per_district:
                lon, lat = rng.uniform(minx, maxx), rng.uniform(miny, maxy)
                if not district.polygon.contains(Point(lon, lat)):
                    continue
                profile = ("air-quality", "noise", "waste-bin", "smoke")[placed % 4]
                name = f"e2e-{profile}-{district.id}-{placed}"
                made = http.post("/api/iot/devices", json={"name": name, "profile": profile, "lon": lon,
                                                           "lat": lat, "district": district.id,
                                                           "department": "environment"})
                assert made.status_code == 201, made.text
                tokens[name] = made.json()["token"]
                placed += 1
        centre = city.districts[2].polygon.representative_point()
        sensor = "e2e-aq-sentinel"
        made = http.post("/api/iot/devices", json={"name": sensor, "profile": "air-quality", "lon": centre.x,
                                                   "lat": centre.y, "district": city.districts[2].id,
                                                   "department": "environment"})
        assert made.status_code == 201, made.text
        tokens[sensor] = made.json()["token"]
    # Most devices report once (active); the rest stay never-seen (inactive).
    with server.http() as http:
        for i, (name, token) in enumerate(tokens.items()):
            if i % 5 == 4 or name == sensor:
                continue
            body = {"pm25": 35 + i % 40, "pm10": 60, "laeq": 42, "fill": 40, "smoke": 0, "battery": 80}
            assert http.post(f"/api/v1/{token}/telemetry", json=body).status_code == 200
    return Seeded(districts, tokens, sensor, (centre.x, centre.y))
