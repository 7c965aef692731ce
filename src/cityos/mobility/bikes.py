"""Shared bikes: GBFS systems configured by URL, their stations' counts, and the hub's view of them.

A system is registered only after its feeds were read and checked once (a bad URL or feed is refused
and nothing is stored). Each refresh replaces the system's station rows in one transaction and
upserts the stations to the hub as Smart Data Models `BikeHireDockingStation` entities
(availableBikeNumber, freeSlotNumber, totalSlotNumber, status). `BikePoller` refreshes every system
every CITYOS_MOBILITY_GBFS_POLL_SECONDS (default 60, at least the feed's ttl; 0 turns it off); a
failed refresh keeps the last good counts and records the error.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import quote

import numpy as np
from sqlalchemy import delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from cityos.core import clock
from cityos.core.db import write_transaction
from cityos.core.errors import AlreadyExists, BadRequestData, ProblemError, ResourceNotFound
from cityos.core.outbound import Outbound
from cityos.core.tasks import StepGuard
from cityos.hub.jsonld import ActiveContext
from cityos.hub.service import HubService
from cityos.mobility import models
from cityos.mobility.gbfs import System, read_system
from cityos.mobility.service import check_allowed, validate_feed_id
from cityos.mobility.timetable import haversine_m
from cityos.security.policy import Principal

log = logging.getLogger("cityos.mobility.bikes")

Reader = Callable[[str], Awaitable[System]]


def station_entity_id(system_id: str, station_id: str) -> str:
    return f"urn:ngsi-ld:BikeHireDockingStation:{system_id}:{quote(station_id, safe='-._~')}"


class BikeService:
    def __init__(self, engine: AsyncEngine, hub: HubService | None, ctx: ActiveContext | None,
                 write_lock: asyncio.Lock | None = None, outbound: Outbound | None = None,
                 reader: Reader | None = None) -> None:
        self.engine = engine
        self.hub = hub
        self.ctx = ctx
        self.outbound = outbound or Outbound()  # the app passes its own (CITYOS_OUTBOUND_ALLOW)
        self.reader = reader or self._read
        self._write_lock = write_lock or asyncio.Lock()

    async def _read(self, url: str) -> System:
        return await read_system(url, self.outbound)

    @contextlib.asynccontextmanager
    async def _write(self) -> AsyncIterator[AsyncConnection]:
        async with write_transaction(self.engine, self._write_lock) as conn:
            yield conn

    async def register(self, principal: Principal | None, tenant: str, system_id: str, url: Any) -> dict[str, Any]:
        check_allowed(principal, "mobility.manage", tenant)
        validate_feed_id(system_id)
        if not isinstance(url, str) or not url or len(url) > 2048:
            raise BadRequestData("url must be the system's gbfs.json URL (at most 2048 characters)")
        async with self.engine.connect() as conn:
            exists = (await conn.execute(select(models.bike_systems.c.system_id).where(
                models.bike_systems.c.tenant == tenant, models.bike_systems.c.system_id == system_id))).first()
        if exists:
            raise AlreadyExists(f"bike-share system {system_id!r} is already registered")
        system = await self.reader(url)
        now = clock.now()
        async with self._write() as conn:
            await conn.execute(insert(models.bike_systems), [{
                "tenant": tenant, "system_id": system_id, "url": url, "name": system.name, "ttl": system.ttl,
                "stations": 0, "free_bikes": 0, "skipped": [], "last_error": None, "fetched_at": None,
                "created_at": now}])
            await self._store(conn, tenant, system_id, system, now)
        await self._publish(tenant, system_id, system)
        return await self.system(principal, tenant, system_id)

    async def refresh(self, tenant: str, system_id: str) -> dict[str, Any]:
        """Fetch again; on failure the last counts stay and the error is recorded (and raised)."""
        row = await self._row(tenant, system_id)
        now = clock.now()
        try:
            system = await self.reader(row["url"])
        except ProblemError as exc:
            async with self._write() as conn:
                await conn.execute(update(models.bike_systems).where(
                    models.bike_systems.c.tenant == tenant, models.bike_systems.c.system_id == system_id)
                    .values(last_error=exc.detail[:1000]))
            raise
        async with self._write() as conn:
            await self._store(conn, tenant, system_id, system, now)
        await self._publish(tenant, system_id, system)
        return self._view(await self._row(tenant, system_id))

    async def _store(self, conn: AsyncConnection, tenant: str, system_id: str, system: System,
                     now: dt.datetime) -> None:
        t = models.bike_stations
        await conn.execute(delete(t).where(t.c.tenant == tenant, t.c.system_id == system_id))
        rows = [{"tenant": tenant, "system_id": system_id, "station_id": s.station_id, "name": s.name, "lat": s.lat,
                 "lon": s.lon, "capacity": s.capacity, "bikes": s.bikes, "docks": s.docks,
                 "is_renting": int(s.is_renting), "is_returning": int(s.is_returning),
                 "last_reported": dt.datetime.fromtimestamp(s.last_reported, dt.UTC) if s.last_reported else None}
                for s in system.stations]
        if rows:
            await conn.execute(insert(t), rows)
        await conn.execute(update(models.bike_systems).where(
            models.bike_systems.c.tenant == tenant, models.bike_systems.c.system_id == system_id).values(
            name=system.name, ttl=system.ttl, stations=len(rows), free_bikes=system.free_bikes,
            skipped=system.skipped[:100], last_error=None, fetched_at=now))

    async def _publish(self, tenant: str, system_id: str, system: System) -> None:
        if self.hub is None or self.ctx is None or not system.stations:
            return
        stamp = clock.iso(clock.now())
        bodies = []
        for s in system.stations:
            body: dict[str, Any] = {
                "id": station_entity_id(system_id, s.station_id), "type": "BikeHireDockingStation",
                "name": {"type": "Property", "value": s.name},
                "location": {"type": "GeoProperty", "value": {"type": "Point", "coordinates": [s.lon, s.lat]}},
                "availableBikeNumber": {"type": "Property", "value": s.bikes, "observedAt": stamp},
                "status": {"type": "Property", "value": "working" if s.is_renting else "outOfService"},
                "dataProvider": {"type": "Property", "value": system_id}}
            if s.docks is not None:
                body["freeSlotNumber"] = {"type": "Property", "value": s.docks, "observedAt": stamp}
            if s.capacity is not None:
                body["totalSlotNumber"] = {"type": "Property", "value": s.capacity}
            bodies.append(body)
        for start in range(0, len(bodies), 500):
            result = await self.hub.batch_write(tenant, bodies[start:start + 500], self.ctx, "upsert", set())
            for error in result.errors:
                log.warning("bike station not published: %s", error)

    async def _row(self, tenant: str, system_id: str) -> Any:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(models.bike_systems).where(
                models.bike_systems.c.tenant == tenant, models.bike_systems.c.system_id == system_id))).first()
        if row is None:
            raise ResourceNotFound(f"no bike-share system {system_id!r}")
        return row._mapping

    @staticmethod
    def _view(r: Any) -> dict[str, Any]:
        return {"systemId": r["system_id"], "url": r["url"], "name": r["name"], "ttl": r["ttl"],
                "stations": r["stations"], "freeBikes": r["free_bikes"], "skippedStations": r["skipped"],
                "lastError": r["last_error"],
                "fetchedAt": clock.iso(clock.as_utc(r["fetched_at"])) if r["fetched_at"] else None}

    async def system(self, principal: Principal | None, tenant: str, system_id: str) -> dict[str, Any]:
        check_allowed(principal, "mobility.read", tenant)
        return self._view(await self._row(tenant, system_id))

    async def systems(self, principal: Principal | None, tenant: str) -> list[dict[str, Any]]:
        check_allowed(principal, "mobility.read", tenant)
        async with self.engine.connect() as conn:
            rows = await conn.execute(select(models.bike_systems).where(models.bike_systems.c.tenant == tenant)
                                      .order_by(models.bike_systems.c.system_id))
            return [self._view(r._mapping) for r in rows]

    async def due_systems(self, min_age_s: float) -> list[tuple[str, str]]:
        """(tenant, system) whose last good fetch is older than max(its ttl, `min_age_s`)."""
        c = models.bike_systems.c
        async with self.engine.connect() as conn:
            rows = list(await conn.execute(select(c.tenant, c.system_id, c.ttl, c.fetched_at)))
        now = clock.now()
        return [(r[0], r[1]) for r in rows
                if r[3] is None or (now - clock.as_utc(r[3])).total_seconds() >= max(r[2], min_age_s)]

    async def stations_near(self, principal: Principal | None, tenant: str, lat: float, lon: float,
                            radius_m: float, limit: int) -> list[dict[str, Any]]:
        check_allowed(principal, "mobility.read", tenant)
        dlat = radius_m / 111_000.0
        dlon = radius_m / (111_000.0 * max(0.01, float(np.cos(np.radians(lat)))))
        t = models.bike_stations.c
        async with self.engine.connect() as conn:
            rows = [r._mapping for r in await conn.execute(select(models.bike_stations).where(
                t.tenant == tenant, t.lat.between(lat - dlat, lat + dlat), t.lon.between(lon - dlon, lon + dlon)))]
        found = []
        for r in rows:
            distance = float(haversine_m(lat, lon, r["lat"], r["lon"]))
            if distance <= radius_m:
                found.append({"systemId": r["system_id"], "stationId": r["station_id"], "name": r["name"],
                              "lat": r["lat"], "lon": r["lon"], "capacity": r["capacity"], "bikesAvailable": r["bikes"],
                              "docksAvailable": r["docks"], "isRenting": bool(r["is_renting"]),
                              "isReturning": bool(r["is_returning"]), "distance": round(distance, 1)})
        found.sort(key=lambda f: (f["distance"], f["systemId"], f["stationId"]))
        return found[:limit]


class BikePoller:
    """Refreshes every registered system in turn, each no more often than its ttl."""

    def __init__(self, service: BikeService, interval: float | None = None) -> None:
        self.service = service
        self.interval = interval if interval is not None else float(
            os.environ.get("CITYOS_MOBILITY_GBFS_POLL_SECONDS", "60"))
        self.guard = StepGuard("gbfs poller")
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self.interval > 0 and self._task is None:
            self._task = asyncio.create_task(self._run(), name="gbfs-poller")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            for tenant, system_id in await self.guard.step(self.service.due_systems(self.interval)):
                try:
                    await self.guard.step(self.service.refresh(tenant, system_id))
                except ProblemError as exc:
                    log.warning("GBFS refresh of %s failed: %s", system_id, exc.detail)
                except Exception:
                    log.exception("GBFS refresh of %s failed", system_id)

    async def stop(self) -> None:
        await self.guard.stop([self._task])
        self._task = None
