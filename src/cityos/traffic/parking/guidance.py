"""Guidance (停车诱导): the nearest car parks to a destination with free spaces predicted at arrival.

The prediction is the mean occupancy recorded for the arrival's hour of the week (`record_occupancy`
samples every car park on a schedule); without history, or for an arrival within PREDICT_AFTER, the
current count is used. One indexed bounding-box query with the history row of that hour joined, then
distances and ranking with numpy.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from typing import Any

import numpy as np
from sqlalchemy import and_, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from cityos.core import clock
from cityos.core.db import dialect_insert
from cityos.core.errors import BadRequestData
from cityos.core.messages import city_zone
from cityos.traffic.parking.models import carparks, occupancy
from cityos.traffic.parking.tariff import Tariff, first_hour_price

EARTH_RADIUS_M = 6_371_000.0
PREDICT_AFTER = timedelta(minutes=15)
MAX_RADIUS_M = 20_000


def hour_of_week(moment: datetime) -> int:
    local = moment.astimezone(city_zone())
    return local.weekday() * 24 + local.hour


def distances_m(lat: float, lon: float, lats: np.ndarray, lons: np.ndarray) -> np.ndarray:
    p1, p2 = math.radians(lat), np.radians(lats)
    dphi, dlmb = p2 - p1, np.radians(lons) - math.radians(lon)
    a = np.sin(dphi / 2) ** 2 + math.cos(p1) * np.cos(p2) * np.sin(dlmb / 2) ** 2
    result: np.ndarray = 2 * EARTH_RADIUS_M * np.arcsin(np.sqrt(np.minimum(a, 1.0)))
    return result


def open_at(opens: str, closes: str, minute: int) -> bool:
    if opens == closes:
        return True
    start, end = int(opens[:2]) * 60 + int(opens[3:]), int(closes[:2]) * 60 + int(closes[3:])
    return start <= minute < end if start < end else (minute >= start or minute < end)


def check_query(lat: float, lon: float, radius_m: float, limit: int) -> None:
    if not (-90 <= lat <= 90 and -180 <= lon <= 180):
        raise BadRequestData("near must be lat,lon within range")
    if not 0 < radius_m <= MAX_RADIUS_M:
        raise BadRequestData(f"radius must be in (0, {MAX_RADIUS_M}] metres")
    if not 1 <= limit <= 50:
        raise BadRequestData("limit must be between 1 and 50")


async def nearest(engine: AsyncEngine, tenant: str, lat: float, lon: float, arrival: datetime | None = None,
                  radius_m: float = 3000.0, limit: int = 5) -> list[dict[str, Any]]:
    check_query(lat, lon, radius_m, limit)
    now = clock.now()
    arrival = arrival or now
    if arrival < now - timedelta(minutes=5):
        raise BadRequestData("arrival is in the past")
    if arrival > now + timedelta(days=7):
        raise BadRequestData("arrival at most 7 days ahead")
    predict = arrival - now > PREDICT_AFTER
    dlat = radius_m / 111_320.0
    dlon = dlat / max(math.cos(math.radians(lat)), 0.01)
    query = select(carparks.c.id, carparks.c.name, carparks.c.lat, carparks.c.lon, carparks.c.total,
                   carparks.c.occupied, carparks.c.held, carparks.c.free_minutes, carparks.c.hour_rate,
                   carparks.c.night_rate, carparks.c.night_start, carparks.c.night_end, carparks.c.daily_cap,
                   carparks.c.opens, carparks.c.closes, carparks.c.ev_chargers,
                   occupancy.c.samples, occupancy.c.occupied_sum).select_from(carparks.outerjoin(
                       occupancy, and_(occupancy.c.tenant == carparks.c.tenant,
                                       occupancy.c.carpark_id == carparks.c.id,
                                       occupancy.c.hour_of_week == hour_of_week(arrival)))).where(
        carparks.c.tenant == tenant, carparks.c.lat.between(lat - dlat, lat + dlat),
        carparks.c.lon.between(lon - dlon, lon + dlon))
    async with engine.connect() as conn:
        rows = (await conn.execute(query)).all()
    if not rows:
        return []
    lats = np.fromiter((r.lat for r in rows), float, len(rows))
    lons = np.fromiter((r.lon for r in rows), float, len(rows))
    total = np.fromiter((r.total for r in rows), float, len(rows))
    current = np.fromiter((r.occupied + r.held for r in rows), float, len(rows))
    samples = np.fromiter((r.samples or 0 for r in rows), float, len(rows))
    sums = np.fromiter((r.occupied_sum or 0 for r in rows), float, len(rows))
    has_history = samples > 0
    if predict:
        expected = np.where(has_history, sums / np.maximum(samples, 1.0), current)
        # Reservations already held for that time are certain: never predict fewer taken spaces than held.
        held = np.fromiter((r.held for r in rows), float, len(rows))
        expected = np.maximum(expected, held)
    else:
        expected = current
    free = np.floor(total - expected)
    dist = distances_m(lat, lon, lats, lons)
    candidates = np.flatnonzero((dist <= radius_m) & (free >= 1))
    order = candidates[np.argsort(dist[candidates], kind="stable")]
    local = arrival.astimezone(city_zone())
    minute = local.hour * 60 + local.minute
    zone = city_zone()
    found: list[dict[str, Any]] = []
    for index in order:
        r = rows[int(index)]
        if not open_at(r.opens, r.closes, minute):
            continue
        tariff = Tariff(r.free_minutes, r.hour_rate, r.night_rate, r.night_start, r.night_end, r.daily_cap)
        found.append({"id": r.id, "name": r.name, "location": {"lat": r.lat, "lon": r.lon},
                      "distanceM": round(float(dist[index])),
                      "availableSpotNumber": max(0, r.total - r.occupied - r.held),
                      "predictedFreeAtArrival": int(free[index]),
                      "prediction": "history" if predict and has_history[index] else "current",
                      "firstHourPrice": first_hour_price(tariff, arrival, zone), "freeMinutes": r.free_minutes,
                      "evChargers": r.ev_chargers})
        if len(found) == limit:
            break
    return found


async def record_occupancy(conn: AsyncConnection, moment: datetime | None = None) -> int:
    """Add one occupancy sample per car park for the hour of the week of `moment` (scheduled step)."""
    moment = moment or clock.now()
    how = hour_of_week(moment)
    rows = (await conn.execute(select(carparks.c.tenant, carparks.c.id, carparks.c.occupied,
                                      carparks.c.held))).all()
    for row in rows:
        statement = dialect_insert(conn, occupancy).values(
            tenant=row.tenant, carpark_id=row.id, hour_of_week=how, samples=1, occupied_sum=row.occupied + row.held)
        await conn.execute(statement.on_conflict_do_update(
            index_elements=["tenant", "carpark_id", "hour_of_week"],
            set_={"samples": occupancy.c.samples + 1,
                  "occupied_sum": occupancy.c.occupied_sum + statement.excluded.occupied_sum}))
    return len(rows)
