"""Congestion index service: road segments, detector speed reports, the index per segment, district
and city (GB/T 33171-2016 levels), and its history.

A report is all-or-nothing: every reading is checked (known segment, speed 0–200 km/h, flow 0–20,000
veh/h, not stamped in the future) before any is stored; then the changed segments, their districts and the
city get a history row at the report's time (a repeated report at the same time replaces its rows).
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from cityos.core import clock
from cityos.core.db import dialect_insert, write_transaction
from cityos.core.errors import BadRequestData, Conflict, ResourceNotFound
from cityos.hub.geoquery import validate_geojson
from cityos.hub.jsonld import ActiveContext
from cityos.hub.service import HubService
from cityos.security.policy import Principal, Resource
from cityos.security.service import require_allowed
from cityos.traffic.congestion.grid import city_sections
from cityos.traffic.congestion.models import history, segments
from cityos.traffic.congestion.tpi import (
                                           LEVELS,
                                           LEVELS_EN,
                                           MAX_SPEED_KMH,
                                           SPEED_BANDS,
                                           SegmentIndex,
                                           level_of,
                                           segment_tpi,
                                           weighted_tpi,
)

log = logging.getLogger("cityos.traffic.congestion")

MAX_READINGS = 1000
MAX_FLOW_VPH = 20_000.0
CLOCK_SKEW = timedelta(minutes=5)


def check(principal: Principal | None, action: str, tenant: str) -> None:
    require_allowed(principal, action, Resource("congestion", tenant))


def number(value: object, name: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        raise BadRequestData(f"{name} must be a number")
    if not low <= float(value) <= high:
        raise BadRequestData(f"{name} must be between {low:g} and {high:g}")
    return float(value)


def text(value: object, name: str, limit: int = 128) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > limit:
        raise BadRequestData(f"{name} must be a non-empty string of at most {limit} characters")
    return value.strip()


def indexed(tpi: float | None) -> dict[str, Any]:
    if tpi is None:
        return {"tpi": None, "level": None, "levelEn": None}
    level = level_of(tpi)
    return {"tpi": tpi, "level": LEVELS[level], "levelEn": LEVELS_EN[level]}


def flow_entity(segment: Any, speed: float, flow: float | None, at: datetime, tpi: float) -> dict[str, Any]:
    """Smart Data Models `TrafficFlowObserved` for a segment's reading, with the index and its level."""
    stamp = clock.iso(at)
    level = level_of(tpi)
    body: dict[str, Any] = {
        "id": f"urn:ngsi-ld:TrafficFlowObserved:{segment.id}", "type": "TrafficFlowObserved",
        "name": {"type": "Property", "value": segment.name},
        "refRoadSegment": {"type": "Relationship", "object": f"urn:ngsi-ld:RoadSegment:{segment.id}"},
        "address": {"type": "Property", "value": {"addressLocality": segment.district}},
        "averageVehicleSpeed": {"type": "Property", "value": speed, "observedAt": stamp, "unitCode": "KMH"},
        "congested": {"type": "Property", "value": level >= 2, "observedAt": stamp},
        "trafficPerformanceIndex": {"type": "Property", "value": tpi, "observedAt": stamp},
        "congestionLevel": {"type": "Property", "value": LEVELS[level], "observedAt": stamp},
        "dateObserved": {"type": "Property", "value": stamp}}
    if flow is not None:
        body["intensity"] = {"type": "Property", "value": flow, "observedAt": stamp, "unitCode": "E50"}
    return body


def segment_entity(segment: Any, location: dict[str, Any] | None) -> dict[str, Any]:
    """Smart Data Models `RoadSegment` of a registered segment; its geometry is what maps draw."""
    get = segment.get if isinstance(segment, dict) else segment._mapping.get
    body: dict[str, Any] = {
        "id": f"urn:ngsi-ld:RoadSegment:{get('id')}", "type": "RoadSegment",
        "name": {"type": "Property", "value": get("name")},
        "roadClass": {"type": "Property", "value": get("road_class")},
        "length": {"type": "Property", "value": round(float(get("length_m") or 0.0), 1), "unitCode": "MTR"},
        "address": {"type": "Property", "value": {"addressLocality": get("district")}}}
    if location is not None:
        body["location"] = {"type": "GeoProperty", "value": location}
    return body


def segment_congestion(segment_id: str, speed: float, at: datetime, tpi: float) -> dict[str, Any]:
    """The congestion attributes a reading sets on its `RoadSegment` (merged into the entity)."""
    stamp = clock.iso(at)
    level = level_of(tpi)
    return {"id": f"urn:ngsi-ld:RoadSegment:{segment_id}", "type": "RoadSegment",
            "averageVehicleSpeed": {"type": "Property", "value": speed, "observedAt": stamp, "unitCode": "KMH"},
            "trafficPerformanceIndex": {"type": "Property", "value": tpi, "observedAt": stamp},
            "congestionLevel": {"type": "Property", "value": LEVELS[level], "observedAt": stamp}}


def line_location(value: object) -> dict[str, Any]:
    """A segment's geometry: a valid GeoJSON LineString of at most 1,000 positions."""
    if not isinstance(value, dict) or value.get("type") != "LineString":
        raise BadRequestData("location must be a GeoJSON LineString")
    coordinates = value.get("coordinates")
    if not isinstance(coordinates, list) or not 2 <= len(coordinates) <= 1000:
        raise BadRequestData("location must have 2 to 1,000 positions")
    return validate_geojson(value)


class CongestionService:
    def __init__(self, engine: AsyncEngine, write_lock: Any, hub: HubService | None = None,
                 ctx: ActiveContext | None = None) -> None:
        self.engine = engine
        self._lock = write_lock
        self.hub = hub
        self.ctx = ctx

    async def _publish(self, tenant: str, bodies: list[dict[str, Any]], merge: bool = False) -> None:
        """Upsert entities to the hub after the commit (with history); a failure is logged.

        With `merge` the attributes are merged into the entity (a reading's congestion attributes must
        not drop the segment's geometry); otherwise the entity is replaced."""
        if self.hub is None or self.ctx is None or not bodies:
            return
        try:
            for start in range(0, len(bodies), 500):
                result = await self.hub.batch_write(tenant, bodies[start:start + 500], self.ctx, "upsert",
                                                    {"update"} if merge else set())
                for error in result.errors:
                    log.warning("congestion entity not published: %s", error)
        except Exception:
            log.exception("congestion entities not published")

    @contextlib.asynccontextmanager
    async def _write(self) -> AsyncIterator[AsyncConnection]:
        async with write_transaction(self.engine, self._lock) as conn:
            yield conn

    async def add_segment(self, principal: Principal | None, tenant: str, body: dict[str, Any]) -> dict[str, Any]:
        check(principal, "congestion.manage", tenant)
        road_class = body.get("roadClass")
        location = line_location(body["location"]) if body.get("location") is not None else None
        if road_class not in SPEED_BANDS:
            raise BadRequestData(f"roadClass must be one of {', '.join(SPEED_BANDS)}")
        segment_id = text(body.get("id", uuid.uuid4().hex[:16]), "id", 64)
        row = {"tenant": tenant, "id": segment_id, "name": text(body.get("name"), "name", 256),
               "district": text(body.get("district"), "district"), "road_class": road_class,
               "length_m": number(body.get("lengthM"), "lengthM", 1.0, 100_000.0), "speed_kmh": None,
               "flow_vph": None, "tpi": None, "observed_at": None, "created_at": clock.now()}
        async with self._write() as conn:
            inserted = await conn.execute(dialect_insert(conn, segments).values(**row)
                                          .on_conflict_do_nothing(index_elements=["tenant", "id"]))
            if inserted.rowcount != 1:
                raise Conflict(f"segment {segment_id!r} exists")
        await self._publish(tenant, [segment_entity(row, location)])
        return self._segment_view(row)

    async def register_grid(self, principal: Principal | None, tenant: str, seed: int) -> dict[str, Any]:
        """Register the simulated city's road grid as segments (the ones not known yet) and publish every
        grid segment as a `RoadSegment` with its LineString, so maps read them from the hub."""
        check(principal, "congestion.manage", tenant)
        grid = city_sections(seed)
        now = clock.now()
        rows = [{"tenant": tenant, "id": s.id, "name": s.name, "district": s.district, "road_class": s.road_class,
                 "length_m": s.length_m, "speed_kmh": None, "flow_vph": None, "tpi": None, "observed_at": None,
                 "created_at": now} for s in grid]
        added = 0
        async with self._write() as conn:
            for row in rows:
                inserted = await conn.execute(dialect_insert(conn, segments).values(**row)
                                              .on_conflict_do_nothing(index_elements=["tenant", "id"]))
                added += max(0, inserted.rowcount or 0)
        await self._publish(tenant, [segment_entity(row, s.geojson()) for row, s in zip(rows, grid, strict=True)],
                            merge=True)
        return {"registered": added, "segments": len(grid), "seed": seed}

    @staticmethod
    def _segment_view(row: Any) -> dict[str, Any]:
        get = row.get if isinstance(row, dict) else row._mapping.get
        observed = get("observed_at")
        return {"id": get("id"), "name": get("name"), "district": get("district"), "roadClass": get("road_class"),
                "lengthM": get("length_m"), "speedKmh": get("speed_kmh"), "flowVph": get("flow_vph"),
                "observedAt": clock.iso(clock.as_utc(observed)) if observed is not None else None,
                **indexed(get("tpi"))}

    async def report(self, principal: Principal | None, tenant: str, body: dict[str, Any]) -> dict[str, Any]:
        check(principal, "congestion.report", tenant)
        readings = body.get("readings")
        if not isinstance(readings, list) or not readings:
            raise BadRequestData("readings must be a non-empty list")
        if len(readings) > MAX_READINGS:
            raise BadRequestData(f"at most {MAX_READINGS} readings per report")
        now = clock.now()
        parsed: dict[str, tuple[float, float | None, datetime]] = {}
        for n, reading in enumerate(readings):
            if not isinstance(reading, dict):
                raise BadRequestData(f"readings[{n}] must be an object")
            segment_id = text(reading.get("segmentId"), f"readings[{n}].segmentId", 64)
            speed = number(reading.get("speedKmh"), f"readings[{n}].speedKmh", 0.0, MAX_SPEED_KMH)
            flow = reading.get("flowVph")
            flow_value = None if flow is None else number(flow, f"readings[{n}].flowVph", 0.0, MAX_FLOW_VPH)
            at = now
            if reading.get("observedAt") is not None:
                try:
                    at = clock.as_utc(datetime.fromisoformat(str(reading["observedAt"]).replace("Z", "+00:00")))
                except ValueError as exc:
                    raise BadRequestData(f"readings[{n}].observedAt must be ISO 8601 with an offset") from exc
                if at > now + CLOCK_SKEW:
                    raise BadRequestData(f"readings[{n}].observedAt is in the future")
            if segment_id in parsed:
                raise BadRequestData(f"segment {segment_id!r} appears twice in the report")
            parsed[segment_id] = (speed, flow_value, at)
        async with self._write() as conn:
            rows = {row.id: row for row in (await conn.execute(select(segments).where(
                segments.c.tenant == tenant, segments.c.id.in_(sorted(parsed))))).all()}
            unknown = sorted(set(parsed) - set(rows))
            if unknown:
                raise ResourceNotFound(f"unknown segments: {', '.join(unknown[:10])}")
            stamp = max(at for _, _, at in parsed.values())
            entities: list[dict[str, Any]] = []
            congestion: list[dict[str, Any]] = []
            for segment_id, (speed, flow, at) in parsed.items():
                tpi = segment_tpi(speed, rows[segment_id].road_class)
                entities.append(flow_entity(rows[segment_id], speed, flow, at, tpi))
                congestion.append(segment_congestion(segment_id, speed, at, tpi))
                await conn.execute(update(segments).where(segments.c.tenant == tenant, segments.c.id == segment_id)
                                   .values(speed_kmh=speed, flow_vph=flow, tpi=tpi, observed_at=at))
                await self._history(conn, tenant, "segment", segment_id, stamp, tpi)
            overview = await self._overview(conn, tenant)
            districts = {rows[s].district for s in parsed}
            for district in overview["districts"]:
                if district["district"] in districts and district["tpi"] is not None:
                    await self._history(conn, tenant, "district", district["district"], stamp, district["tpi"])
            if overview["city"]["tpi"] is not None:
                await self._history(conn, tenant, "city", "", stamp, overview["city"]["tpi"])
        await self._publish(tenant, entities)
        await self._publish(tenant, congestion, merge=True)
        return {"accepted": len(parsed), "city": overview["city"]}

    async def _history(self, conn: AsyncConnection, tenant: str, scope: str, key: str, at: datetime,
                       tpi: float) -> None:
        statement = dialect_insert(conn, history).values(tenant=tenant, scope=scope, key=key, at=at, tpi=tpi)
        await conn.execute(statement.on_conflict_do_update(index_elements=["tenant", "scope", "key", "at"],
                                                           set_={"tpi": statement.excluded.tpi}))

    async def _overview(self, conn: AsyncConnection, tenant: str) -> dict[str, Any]:
        rows = (await conn.execute(select(segments).where(segments.c.tenant == tenant)
                                   .order_by(segments.c.district, segments.c.id))).all()
        measured = [SegmentIndex(r.id, r.district, r.tpi, r.length_m / 1000 * (r.flow_vph or 0.0))
                    for r in rows if r.tpi is not None]
        districts = sorted({r.district for r in rows})
        return {"city": indexed(weighted_tpi(measured)),
                "districts": [{"district": d, **indexed(weighted_tpi(s for s in measured if s.district == d))}
                              for d in districts],
                "segments": [self._segment_view(r) for r in rows]}

    async def overview(self, principal: Principal | None, tenant: str) -> dict[str, Any]:
        check(principal, "congestion.read", tenant)
        async with self.engine.connect() as conn:
            return await self._overview(conn, tenant)

    async def history(self, principal: Principal | None, tenant: str, scope: str, key: str,
                      limit: int = 288) -> list[dict[str, Any]]:
        check(principal, "congestion.read", tenant)
        if scope not in ("segment", "district", "city"):
            raise BadRequestData("scope must be segment, district or city")
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(history.c.at, history.c.tpi).where(
                history.c.tenant == tenant, history.c.scope == scope, history.c.key == key)
                .order_by(history.c.at.desc()).limit(limit))).all()
        return [{"at": clock.iso(clock.as_utc(r.at)), **indexed(r.tpi)} for r in reversed(rows)]
