"""Incidents: where a report belongs. The hub's District (and River) at a point, their names,
and the deepest department of the security tree that covers a district; all cached."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import shapely
from shapely.geometry import shape
from shapely.ops import nearest_points
from sqlalchemy import select

from cityos.core.errors import NonexistentTenant
from cityos.hub.geoquery import DEFAULT_GEOPROPERTY, GeoQuery, haversine
from cityos.hub.store import EntityQuery
from cityos.ops.incidents.core import IncidentCore
from cityos.security.models import departments


class IncidentPlaces(IncidentCore):
    """Districts, rivers and departments for routing, with their caches."""

    async def district_at(self, tenant: str, lon: float, lat: float) -> str | None:
        """The District entity of the hub whose geometry contains the point.

        With the district cache on (CITYOS_INCIDENT_DISTRICT_CACHE_SECONDS > 0, default 60) the
        tenant's District polygons are read from the hub once and tested locally (shapely, prepared
        geometries); a District change seen on the bus drops the cache at once, and another
        process's change is seen within the TTL. With the cache off, each call is a hub geo-query
        (`intersects` the point)."""
        if self.district_ttl > 0:
            return await self._cached_district(tenant, lon, lat)
        query = EntityQuery(types=[self.district_type],
                            geo=GeoQuery("intersects", {"type": "Point", "coordinates": [lon, lat]}, None, None),
                            limit=10)
        try:
            found, _ = await self.hub.query(tenant, query)
        except NonexistentTenant:
            return None
        names = self._district_names.setdefault(tenant, {})
        for record in found:
            names[record.id] = self._name_of(record)
        return min(r.id for r in found) if found else None

    def _name_of(self, record: Any) -> str:
        for inst in record.attrs.get(self.ctx.expand("name"), [])[:1]:
            value = inst.get("value")
            if isinstance(value, str) and value:
                return value
        return str(record.id).rsplit(":", 1)[-1]

    def district_name(self, tenant: str, district: str | None) -> str | None:
        """The name of a District entity (as the hub has it), else `district` itself (a plain name)."""
        if district is None:
            return None
        return self._district_names.get(tenant, {}).get(district, district)

    async def river_near(self, tenant: str, lon: float, lat: float, metres: float = 1500.0) -> tuple[str, str] | None:
        """(id, name) of the hub's nearest `River` within `metres` of the point (cached like districts)."""
        moment = asyncio.get_running_loop().time()
        cached = self._rivers.get(tenant)
        if cached is None or moment - cached[0] > max(self.district_ttl, 1.0):
            lines: list[tuple[str, str, Any]] = []
            try:
                found, _ = await self.hub.query(tenant, EntityQuery(types=[self.ctx.expand("River")], limit=1000))
            except NonexistentTenant:
                found = []
            for record in found:
                for inst in record.attrs.get(DEFAULT_GEOPROPERTY, [])[:1]:
                    with contextlib.suppress(Exception):
                        lines.append((record.id, self._name_of(record), shape(inst["value"])))
            cached = (moment, sorted(lines, key=lambda item: item[0]))
            self._rivers[tenant] = cached
        point = shapely.Point(lon, lat)
        best: tuple[float, str, str] | None = None
        for river_id, name, geometry in cached[1]:
            # Degrees to metres near the point: good enough to tell which river a gauge stands on.
            nearest = nearest_points(geometry, point)[0]
            distance = haversine(lon, lat, nearest.x, nearest.y)
            if distance <= metres and (best is None or distance < best[0]):
                best = (distance, river_id, name)
        return (best[1], best[2]) if best else None

    async def _cached_district(self, tenant: str, lon: float, lat: float) -> str | None:
        moment = asyncio.get_running_loop().time()
        cached = self._districts.get(tenant)
        if cached is None or moment - cached[0] > self.district_ttl:
            shapes: list[tuple[str, Any]] = []
            offset = 0
            while True:
                try:
                    found, _ = await self.hub.query(tenant, EntityQuery(types=[self.district_type], limit=1000,
                                                                         offset=offset))
                except NonexistentTenant:
                    found = []
                names = self._district_names.setdefault(tenant, {})
                for record in found:
                    names[record.id] = self._name_of(record)
                    for inst in record.attrs.get(DEFAULT_GEOPROPERTY, [])[:1]:
                        with contextlib.suppress(Exception):
                            geometry = shape(inst["value"])
                            shapely.prepare(geometry)
                            shapes.append((record.id, geometry))
                if len(found) < 1000:
                    break
                offset += 1000
            cached = (moment, sorted(shapes, key=lambda item: item[0]))
            self._districts[tenant] = cached
        for district_id, geometry in cached[1]:
            if shapely.intersects_xy(geometry, lon, lat):
                return district_id
        return None

    def forget_districts(self, tenant: str | None = None) -> None:
        if tenant is None:
            self._districts.clear()
            self._rivers.clear()
        else:
            self._districts.pop(tenant, None)
            self._rivers.pop(tenant, None)

    async def _department_children(self, tenant: str) -> dict[str, list[Any]]:
        moment = asyncio.get_running_loop().time()
        cached = self._departments.get(tenant)
        if cached is not None and moment - cached[0] < self.department_ttl:
            return cached[1]
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(departments.c.id, departments.c.parent, departments.c.districts)
                                       .where(departments.c.tenant == tenant))).all()
        children: dict[str, list[Any]] = {}
        for row in rows:
            if row.parent is not None:
                children.setdefault(row.parent, []).append(row)
        if self.department_ttl > 0:
            self._departments[tenant] = (moment, children)
        return children

    def forget_departments(self, tenant: str | None = None) -> None:
        if tenant is None:
            self._departments.clear()
        else:
            self._departments.pop(tenant, None)

    async def sub_department(self, tenant: str, department: str, district: str | None) -> str:
        """The deepest department below `department` (security tree) that covers `district`."""
        if district is None:
            return department
        children = await self._department_children(tenant)
        current, seen = department, {department}
        while True:
            covering = sorted(r.id for r in children.get(current, []) if district in (r.districts or [])
                              and r.id not in seen)
            if not covering:
                return current
            current = covering[0]
            seen.add(current)
