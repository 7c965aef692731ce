"""Incidents: intake (alarms, Open311, hotline, manual), routing, merging, lifecycle, SLA clocks, hub view.

No HTTP here. Authorisation with the real resource happens in the API (it has the request);
the service records who did what (timeline + audit) and publishes every change:

- on the bus: ``ops.incident.changed`` {"tenant", "incident": <view>} after every committed change,
  ``ops.incident.sla`` {"tenant", "incident", "clock", "state": "yellow"} and
  ``ops.incident.escalated`` {"tenant", "incident", "clock", "from", "to"} from the sweep;
- in the hub: every incident as an ``Incident`` entity (``urn:ngsi-ld:Incident:<id>``) without
  personal data, written by an outbox publisher (`sync_hub`). Closed incidents stay in the hub
  with status ``closed`` (the temporal history and the KPIs need them); a report merged into
  another incident is removed from the hub while merged (its incident stands for it) and comes
  back when it is split out again.

SLA: the response clock runs from reported until accepted; the resolution clock from reported
(or the last reopen) until resolved. `tick(now)` turns a clock yellow at 80 % of its span and,
at the deadline, marks it breached and escalates the incident one level. Clocks use
`cityos.core.clock.now()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import orjson
import shapely
from shapely.geometry import shape
from shapely.ops import nearest_points
from sqlalchemy import Connection, Row, and_, bindparam, delete, event, func, insert, literal_column, select, update
from sqlalchemy import create_engine as create_sync_engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from cityos.config import env_float
from cityos.core import clock, messages
from cityos.core.bus_models import AlreadyApplied, claim, claim_sync
from cityos.core.db import _configure_sqlite, json_dumps
from cityos.core.errors import BadRequestData, Conflict, NonexistentTenant, ProblemError, ResourceNotFound
from cityos.core.events import Event, EventBus
from cityos.hub.geoquery import DEFAULT_GEOPROPERTY, GeoQuery, haversine, validate_geojson
from cityos.hub.jsonld import ActiveContext
from cityos.hub.service import HubService
from cityos.hub.store import EntityQuery
from cityos.ops.incidents import correlation as corr
from cityos.ops.incidents.models import (
    LEVELS,
    MERGING_SOURCES,
    OPEN_STATUSES,
    TRANSITIONS,
    incidents,
    sla_policies,
    steps,
)
from cityos.ops.incidents.routing import Policy, Routing, best_policy, clock_state, default_policies, level_up
from cityos.security.audit import AuditEvent
from cityos.security.crypto import ENCRYPTED_COLUMNS, KeyRing, register_encrypted
from cityos.security.masking import mask_public_text
from cityos.security.models import departments
from cityos.security.policy import Principal

log = logging.getLogger(__name__)

CHANGED = "ops.incident.changed"
SLA_EVENT = "ops.incident.sla"
ESCALATED = "ops.incident.escalated"
ENTITY_PREFIX = "urn:ngsi-ld:Incident:"
CLOSED_FOR_OPEN311 = frozenset({"resolved", "closed"})
MAX_ID = 2**53

if not any(c.table is incidents for c in ENCRYPTED_COLUMNS):
    register_encrypted(incidents, "id", "reporter_enc")


@dataclass
class NewIncident:
    category: str
    title: str
    description: str = ""
    source: str = "manual"
    level: str = "general"
    severity: str | None = None
    location: dict[str, Any] | None = None
    address: str | None = None
    reporter: dict[str, str] | None = None  # personal data: encrypted at rest, never published
    reporter_id: str | None = None  # the principal who reported (own-scope reads)
    service_code: str | None = None
    attributes: dict[str, Any] | None = None
    media_url: str | None = None
    entity_id: str | None = None
    dedup_key: str | None = None
    department: str | None = None  # forced department (before the sub-department step)
    fallback_department: str | None = None  # when the routing table has no route for the category
    district: str | None = None  # used when the location finds no District entity
    token: str | None = None
    # Correlation (see correlation.py): a title made from the category and the place instead of `title`;
    # the device a work order is for; its network segment (gateway, else district); whether this report
    # is the segment's own outage (its gateway went silent); the device fault (offline, lowBattery, ...).
    auto_title: bool = False
    place: str | None = None
    segment: str | None = None
    segment_root: bool = False
    fault: str | None = None


@dataclass
class Actor:
    label: str
    role: str
    principal: Principal | None = None

    @classmethod
    def of(cls, principal: Principal | None) -> Actor:
        if principal is None:
            return cls("anonymous", "anonymous")
        return cls(principal.label, principal.role, principal)


SYSTEM = Actor("system", "system")


@dataclass
class Plan:
    location: dict[str, Any] | None
    lon: float | None
    lat: float | None
    district: str | None
    department: str
    area: str | None = None  # the area this report merges by (correlation), e.g. "district:<id>"
    places: list[str] = field(default_factory=list)  # display places for the title, biggest last
    title: str | None = None  # the generated title (auto_title)
    segment_policy: Policy | None = None
    segment_department: str | None = None


@dataclass
class Created:
    incident: dict[str, Any]
    outcome: str  # created | merged | updated | unchanged
    parent: dict[str, Any] | None = None


@dataclass
class SweepResult:
    yellow: int = 0
    breached: int = 0
    escalated: list[str] = field(default_factory=list)
    closed: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"yellow": self.yellow, "breached": self.breached, "escalated": self.escalated,
                "closed": self.closed}


def parse_id(raw: str | int) -> int:
    text = str(raw)
    if not text.isdecimal() or len(text) > 15 or int(text) >= MAX_ID:
        raise ResourceNotFound(f"incident {text[:40]!r} not found")
    return int(text)


def _iso(value: datetime | None) -> str | None:
    return clock.iso(clock.as_utc(value)) if value is not None else None


def _point(location: dict[str, Any] | None) -> tuple[float | None, float | None]:
    if location is None:
        return None, None
    if location.get("type") == "Point":  # validated GeoJSON: the common case needs no geometry object
        coordinates = location.get("coordinates")
        if isinstance(coordinates, list | tuple) and len(coordinates) >= 2 \
                and all(type(c) in (int, float) for c in coordinates[:2]):
            return float(coordinates[0]), float(coordinates[1])
    geometry = shape(location)
    point = geometry if geometry.geom_type == "Point" else shapely.point_on_surface(geometry)
    return float(point.x), float(point.y)


def overall_sla(response_state: str, resolution_state: str) -> str:
    states = {response_state, resolution_state}
    for state in ("breached", "yellow", "ok"):
        if state in states:
            return state
    return "met"


def next_check(row: dict[str, Any]) -> datetime | None:
    """The next moment one of the running clocks changes colour (stored as `sla_next_at`)."""
    if row["status"] not in OPEN_STATUSES:
        return None
    moments = []
    for start, due, done, state in ((row["reported_at"], row["response_due"], row["accepted_at"],
                                     row["response_state"]),
                                    (row["sla_start"], row["resolution_due"], row["resolved_at"],
                                     row["resolution_state"])):
        if due is None or done is not None or state in ("breached", "met"):
            continue
        start, due = clock.as_utc(start), clock.as_utc(due)
        if state == "yellow":
            moments.append(due)
        else:
            moments.append(start + (due - start) * 0.8)
    return min(moments) if moments else None


class IncidentService:
    def __init__(self, engine: AsyncEngine, hub: HubService, ctx: ActiveContext, bus: EventBus,
                 security: Any, write_lock: asyncio.Lock | None = None, routing: Routing | None = None,
                 auto_close_hours: float = 72.0) -> None:
        self.engine = engine
        self.hub = hub
        self.ctx = ctx
        self.bus = bus
        self.security = security  # cityos.security.service.SecurityService: audit + key ring
        self._sqlite = engine.dialect.name == "sqlite"
        self._lock = write_lock or asyncio.Lock()
        # SQLite: write transactions of the report path run as one function on a plain (pysqlite)
        # connection in a worker thread, so the process-wide write lock is held for one thread hop
        # instead of one hop per driver call (cursor, execute, fetch, commit, reset: ~12 per report
        # through aiosqlite). PostgreSQL runs the same function on the async connection (run_sync).
        self._sync_engine = None
        database = engine.url.database or ""
        if self._sqlite and database and database != ":memory:" and not database.startswith("file:"):
            self._sync_engine = create_sync_engine(
                engine.url.set(drivername="sqlite"), json_serializer=json_dumps, json_deserializer=orjson.loads,
                connect_args={"check_same_thread": False}, pool_size=2, max_overflow=2)
            event.listen(self._sync_engine, "connect", _configure_sqlite)
        self.routing = routing or Routing.load()
        self.defaults = default_policies()
        self.auto_close = timedelta(hours=auto_close_hours)
        self._policy_cache: dict[str, tuple[float, list[Policy]]] = {}
        self.hub_wake = asyncio.Event()
        self.district_type = ctx.expand("District")
        self.district_ttl = env_float("CITYOS_INCIDENT_DISTRICT_CACHE_SECONDS", 60.0)
        self._districts: dict[str, tuple[float, list[tuple[str, Any]]]] = {}
        self._district_names: dict[str, dict[str, str]] = {}
        self._rivers: dict[str, tuple[float, list[tuple[str, str, Any]]]] = {}
        self.correlation = corr.CorrelationSettings()
        # The report path's statements, built once: no per-call construction, cache-key generation or
        # expanding-IN post-processing (the open statuses are constants).
        t = incidents
        self._merge_stmt = select(t).where(
            t.c.tenant == bindparam("m_tenant"), t.c.category == bindparam("m_category"), t.c.parent_id.is_(None),
            t.c.status.in_([literal_column(f"'{status}'") for status in OPEN_STATUSES]),
            t.c.reported_at >= bindparam("m_since"),
            t.c.lat.between(bindparam("m_lat0"), bindparam("m_lat1")),
            t.c.lon.between(bindparam("m_lon0"), bindparam("m_lon1")))
        self._insert_stmt = insert(t).returning(*t.c)
        self._steps_stmt = insert(steps)
        # The department tree (security's table) per tenant, read at most every few seconds: routing
        # every report must not cost a query. 0 turns the cache off.
        self.department_ttl = env_float("CITYOS_INCIDENT_DEPARTMENT_CACHE_SECONDS", 5.0)
        self._departments: dict[str, tuple[float, dict[str, list[Any]]]] = {}

    # ------------------------------------------------------------------ plumbing

    @property
    def keyring(self) -> KeyRing:
        ring: KeyRing = self.security.keyring
        return ring

    @contextlib.asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncConnection]:
        if self._sqlite:
            async with self._lock, self.engine.begin() as conn:
                yield conn
        else:
            async with self.engine.begin() as conn:
                yield conn

    async def write_tx(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run `fn(conn, *args)` (synchronous SQLAlchemy Core) in one write transaction."""
        if self._sync_engine is not None:
            async with self._lock:
                return await asyncio.to_thread(self._in_thread, fn, *args)
        async with self.write() as conn:
            return await conn.run_sync(fn, *args)

    def _in_thread(self, fn: Callable[..., Any], *args: Any) -> Any:
        assert self._sync_engine is not None
        with self._sync_engine.begin() as conn:
            return fn(conn, *args)

    def close(self) -> None:
        if self._sync_engine is not None:
            self._sync_engine.dispose()

    async def _row(self, conn: AsyncConnection, tenant: str, incident_id: int, lock: bool = False) -> Row[Any]:
        stmt = select(incidents).where(incidents.c.tenant == tenant, incidents.c.id == incident_id)
        if lock and not self._sqlite:
            stmt = stmt.with_for_update()
        row = (await conn.execute(stmt)).first()
        if row is None:
            raise ResourceNotFound(f"incident {incident_id} not found")
        return row

    async def _step(self, conn: AsyncConnection, tenant: str, incident_id: int, action: str, actor: Actor,
                    now: datetime, from_status: str | None = None, to_status: str | None = None,
                    note: str | None = None, **detail: Any) -> None:
        await conn.execute(insert(steps).values(
            tenant=tenant, incident_id=incident_id, at=now, action=action, actor=actor.label[:256],
            role=actor.role[:32], from_status=from_status, to_status=to_status, note=note, detail=detail or None))

    def _steps(self, conn: Connection,
                     items: list[tuple[str, int, str, Actor, datetime, str | None, str | None, str | None,
                                       dict[str, Any]]]) -> None:
        """Timeline steps, in one statement (inside a `write_tx` function)."""
        rows = [{"tenant": tenant, "incident_id": incident_id, "at": now, "action": action,
                 "actor": actor.label[:256], "role": actor.role[:32], "from_status": from_status,
                 "to_status": to_status, "note": note, "detail": detail or None}
                for tenant, incident_id, action, actor, now, from_status, to_status, note, detail in items]
        conn.execute(self._steps_stmt, rows[0] if len(rows) == 1 else rows)

    async def _audit(self, actor: Actor, action: str, tenant: str, incident_id: int | str, **detail: Any) -> None:
        if actor.principal is not None:
            event = AuditEvent.of(actor.principal, action, f"incident:{incident_id}", tenant=tenant, **detail)
        else:
            event = AuditEvent(action, f"incident:{incident_id}", actor=actor.label, actor_kind="service"
                               if actor is SYSTEM else "anonymous", role=actor.role, tenant=tenant, detail=detail)
        await self.security.record(event)

    async def _announce_views(self, tenant: str, views: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Publish `ops.incident.changed` for views built from committed rows and wake the hub publisher."""
        self.hub_wake.set()
        for view in views:
            await self.bus.publish(CHANGED, {"tenant": tenant, "incident": view})
        return views

    async def _announce(self, tenant: str, ids: Iterable[int]) -> list[dict[str, Any]]:
        """Publish `ops.incident.changed` for each id (after commit) and wake the hub publisher."""
        self.hub_wake.set()
        views = []
        for incident_id in dict.fromkeys(ids):
            try:
                view = await self.get(tenant, incident_id)
            except ResourceNotFound:
                continue
            views.append(view)
            await self.bus.publish(CHANGED, {"tenant": tenant, "incident": view})
        return views

    # ------------------------------------------------------------------ views

    def view(self, row: Any, parent: Any | None = None) -> dict[str, Any]:
        effective = parent if parent is not None else row
        return {
            "id": str(row.id), "tenant": row.tenant, "category": row.category, "title": row.title,
            "description": row.description, "source": row.source, "status": row.status,
            "level": row.level, "severity": row.severity, "location": row.location, "address": row.address,
            "district": row.district, "department": row.department,
            "parentId": str(row.parent_id) if row.parent_id is not None else None,
            "reportCount": row.report_count, "serviceCode": row.service_code, "attributes": row.attributes,
            "mediaUrl": row.media_url, "entityId": row.entity_id, "hasReporter": row.reporter_enc is not None,
            "statusNotes": effective.status_notes,
            "open311Status": "closed" if effective.status in CLOSED_FOR_OPEN311 else "open",
            "reportedAt": _iso(row.reported_at), "updatedAt": _iso(row.updated_at),
            "dispatchedAt": _iso(row.dispatched_at), "acceptedAt": _iso(row.accepted_at),
            "onSiteAt": _iso(row.on_site_at), "resolvedAt": _iso(row.resolved_at), "closedAt": _iso(row.closed_at),
            "sla": {"responseDue": _iso(row.response_due), "resolutionDue": _iso(row.resolution_due),
                    "responseState": row.response_state, "resolutionState": row.resolution_state,
                    "state": overall_sla(row.response_state, row.resolution_state)},
            "escalations": row.escalations,
            "kind": corr.kind_of(row.category, row.dedup_key),
        }

    async def get(self, tenant: str, incident_id: int | str, timeline: bool = False) -> dict[str, Any]:
        ident = parse_id(incident_id)
        async with self.engine.connect() as conn:
            row = await self._row(conn, tenant, ident)
            parent = await self._row(conn, tenant, row.parent_id) if row.parent_id is not None else None
            view = self.view(row, parent)
            if timeline:
                view["timeline"] = await self._timeline(conn, ident)
                children = await conn.execute(select(incidents.c.id).where(incidents.c.parent_id == ident)
                                              .order_by(incidents.c.id))
                view["merged"] = [str(c.id) for c in children]
        return view

    async def _timeline(self, conn: AsyncConnection, incident_id: int) -> list[dict[str, Any]]:
        """The incident's steps, oldest first; consecutive merges are one entry listing what merged."""
        rows = await conn.execute(select(steps).where(steps.c.incident_id == incident_id).order_by(steps.c.id))
        entries = [{"at": _iso(r.at), "action": r.action, "actor": r.actor, "role": r.role, "from": r.from_status,
                    "to": r.to_status, "note": r.note, **({"detail": r.detail} if r.detail else {})} for r in rows]
        children = {int(c) for e in entries if e["action"] == "merge"
                    for c in [*(e.get("detail") or {}).get("children", []), (e.get("detail") or {}).get("child")]
                    if c is not None and str(c).isdecimal()}
        titles: dict[str, str] = {}
        if children:
            found = await conn.execute(select(incidents.c.id, incidents.c.title)
                                       .where(incidents.c.id.in_(sorted(children))))
            titles = {str(r.id): r.title for r in found}
        return corr.collapse_merges(entries, titles)

    async def timeline(self, tenant: str, incident_id: int | str) -> list[dict[str, Any]]:
        ident = parse_id(incident_id)
        async with self.engine.connect() as conn:
            await self._row(conn, tenant, ident)
            return await self._timeline(conn, ident)

    async def reporter(self, tenant: str, incident_id: int | str) -> dict[str, Any]:
        async with self.engine.connect() as conn:
            row = await self._row(conn, tenant, parse_id(incident_id))
        if row.reporter_enc is None:
            return {}
        data: dict[str, Any] = orjson.loads(self.keyring.decrypt(row.reporter_enc))
        return data

    async def search(self, tenant: str, *, departments_in: Iterable[str] | None = None,
                   reporter_id: str | None = None, status: list[str] | None = None,
                   category: str | None = None, department: str | None = None, district: str | None = None,
                   level: str | None = None, source: str | None = None, open_only: bool = False,
                   include_merged: bool = False, limit: int = 50, offset: int = 0,
                   kind: str | None = None) -> tuple[list[dict[str, Any]], int]:
        """`kind`: "incident" (city incidents, device work orders left out) or "maintenance" (only those)."""
        t = incidents
        conds: list[Any] = [t.c.tenant == tenant]
        if kind == "incident":
            conds.append(~corr.maintenance_condition())
        elif kind == "maintenance":
            conds.append(corr.maintenance_condition())
        elif kind is not None:
            raise BadRequestData("kind must be incident or maintenance")
        if departments_in is not None:
            conds.append(t.c.department.in_(list(departments_in)))
        if reporter_id is not None:
            conds.append(t.c.reporter_id == reporter_id)
        if status:
            conds.append(t.c.status.in_(status))
        if open_only:
            conds.append(t.c.status.in_(OPEN_STATUSES))
        for column, value in ((t.c.category, category), (t.c.department, department), (t.c.district, district),
                              (t.c.level, level), (t.c.source, source)):
            if value is not None:
                conds.append(column == value)
        if not include_merged:
            conds.append(t.c.parent_id.is_(None))
        async with self.engine.connect() as conn:
            total = (await conn.execute(select(func.count()).select_from(t).where(and_(*conds)))).scalar_one()
            rows = (await conn.execute(select(t).where(and_(*conds)).order_by(t.c.id.desc())
                                       .limit(limit).offset(offset))).all()
            parent_ids = {r.parent_id for r in rows if r.parent_id is not None}
            parents = {}
            if parent_ids:
                parents = {p.id: p for p in await conn.execute(select(t).where(t.c.id.in_(parent_ids)))}
        return [self.view(r, parents.get(r.parent_id)) for r in rows], int(total)

    # ------------------------------------------------------------------ routing

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

    # ------------------------------------------------------------------ SLA policies

    async def policies(self, tenant: str) -> list[Policy]:
        """Defaults from `sla_defaults.yaml` plus the tenant's custom policies (cached 5 s)."""
        cached = self._policy_cache.get(tenant)
        moment = asyncio.get_running_loop().time()
        if cached is not None and moment - cached[0] < 5.0:
            return cached[1]
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(sla_policies).where(sla_policies.c.tenant == tenant)
                                       .order_by(sla_policies.c.id))).all()
        custom = [Policy(r.category, r.level, r.response_minutes, r.resolution_minutes, "custom", r.id) for r in rows]
        overridden = {(p.category, p.level) for p in custom}
        merged = [p for p in self.defaults if (p.category, p.level) not in overridden] + custom
        self._policy_cache[tenant] = (moment, merged)
        return merged

    async def policy_for(self, tenant: str, category: str, level: str) -> Policy | None:
        return best_policy(await self.policies(tenant), category, level)

    async def set_policy(self, tenant: str, category: str, level: str, response: float,
                         resolution: float | None, by: Principal | None) -> dict[str, Any]:
        now = clock.now()
        actor = Actor.of(by)
        async with self.write() as conn:
            found = (await conn.execute(select(sla_policies.c.id).where(
                sla_policies.c.tenant == tenant, sla_policies.c.category == category,
                sla_policies.c.level == level))).first()
            values = {"response_minutes": response, "resolution_minutes": resolution, "updated_at": now,
                      "updated_by": actor.label[:256]}
            if found is None:
                policy_id = (await conn.execute(insert(sla_policies).values(
                    tenant=tenant, category=category, level=level, **values).returning(sla_policies.c.id))).scalar_one()
            else:
                policy_id = found.id
                await conn.execute(update(sla_policies).where(sla_policies.c.id == policy_id).values(**values))
        self._policy_cache.pop(tenant, None)
        await self.security.record(AuditEvent.of(by, "sla.policy.set", f"sla-policy:{policy_id}", tenant=tenant,
                                                 category=category, level=level, response=response,
                                                 resolution=resolution))
        return Policy(category, level, response, resolution, "custom", policy_id).to_json()

    async def delete_policy(self, tenant: str, policy_id: str, by: Principal | None) -> None:
        ident = parse_id(policy_id)
        async with self.write() as conn:
            result = await conn.execute(delete(sla_policies).where(sla_policies.c.tenant == tenant,
                                                                   sla_policies.c.id == ident))
        if not result.rowcount:
            raise ResourceNotFound(f"SLA policy {policy_id} not found")
        self._policy_cache.pop(tenant, None)
        await self.security.record(AuditEvent.of(by, "sla.policy.delete", f"sla-policy:{ident}", tenant=tenant))

    def _deadlines(self, policy: Policy | None, start: datetime) -> tuple[datetime | None, datetime | None]:
        if policy is None:
            return None, None
        response = start + timedelta(minutes=policy.response_minutes)
        resolution = start + timedelta(minutes=policy.resolution_minutes) if policy.resolution_minutes else None
        return response, resolution

    # ------------------------------------------------------------------ intake

    async def plan(self, tenant: str, new: NewIncident) -> Plan:
        """Where an incident goes: its location's District (hub geo-query) and the department."""
        if new.level not in LEVELS:
            raise BadRequestData(f"level must be one of {', '.join(LEVELS)}")
        location = validate_geojson(new.location) if new.location is not None else None
        lon, lat = _point(location)
        district = await self.district_at(tenant, lon, lat) if lon is not None and lat is not None else None
        district = district or new.district
        routed = new.department or self.routing.department_for(new.category) or new.fallback_department \
            or self.routing.default
        department = await self.sub_department(tenant, routed, district)
        plan = Plan(location, lon, lat, district, department)
        if self.correlation.enabled:
            await self._correlate_plan(tenant, new, plan)
        return plan

    async def _correlate_plan(self, tenant: str, new: NewIncident, plan: Plan) -> None:
        """The area a machine report merges by, the places of its title, the segment incident's terms."""
        district_name = self.district_name(tenant, plan.district)
        area_kind = self.routing.area_kind(new.category) if new.source in corr.MACHINE_SOURCES else None
        if area_kind is not None and plan.district is not None:
            plan.area = f"district:{plan.district}"
            plan.places = [district_name or plan.district]
            if area_kind == "river" and plan.lon is not None and plan.lat is not None:
                river = await self.river_near(tenant, plan.lon, plan.lat)
                if river is not None:
                    plan.area = f"river:{river[0]}|{plan.district}"
                    plan.places = [river[1], district_name or plan.district]
        elif district_name:
            plan.places = [district_name]
        if new.auto_title:
            if new.segment_root:
                plan.title = messages.incident_title(corr.SEGMENT_CATEGORY, *self._segment_places(new.segment,
                                                                                                district_name))
            else:
                plan.title = messages.incident_title(new.category, new.place, *plan.places)
        if new.segment and corr.is_maintenance(new.category):
            routed = self.routing.department_for(corr.SEGMENT_CATEGORY) or plan.department
            plan.segment_department = await self.sub_department(tenant, routed, plan.district)
            plan.segment_policy = await self.policy_for(tenant, corr.SEGMENT_CATEGORY, "large")

    @staticmethod
    def _segment_places(segment: str | None, district_name: str | None) -> list[str]:
        places = []
        if segment and segment.startswith("gateway:"):
            places.append(f"网关 Gateway {segment.removeprefix('gateway:')}")
        if district_name:
            places.append(district_name)
        return places

    async def create(self, tenant: str, new: NewIncident, by: Principal | None = None,
                     actor: Actor | None = None,
                     check: Callable[[Plan], Awaitable[None]] | None = None, cause: Event | None = None) -> Created:
        """Open an incident (or merge the report into a nearby open one, or refresh the open
        incident of the same dedup key). `check(plan)` may refuse before anything is written.

        `cause` (the bus event that asked for it) is claimed in the write transaction; raises
        `AlreadyApplied` when it was applied before (a JetStream redelivery), writing nothing."""
        actor = actor or Actor.of(by)
        plan = await self.plan(tenant, new)
        if check is not None:
            await check(plan)
        if plan.title:
            new.title = plan.title
        policy = await self.policy_for(tenant, new.category, new.level)
        reporter_enc = self.keyring.encrypt(orjson.dumps(new.reporter).decode()) if new.reporter else None
        for attempt in range(3):
            try:
                result = await self._create_row(tenant, new, actor, plan, policy, reporter_enc, cause)
                break
            except IntegrityError:
                # A concurrent writer opened the incident of the same dedup key (or took the token).
                if attempt == 2:
                    raise
                new.token = secrets.token_hex(16) if new.token else None
        outcome, incident_id, parent_id, rows = result
        if outcome != "unchanged":
            await self._audit(actor, f"incident.{'report' if outcome == 'merged' else outcome}", tenant,
                              incident_id, source=new.source, category=new.category,
                              **({"mergedInto": str(parent_id)} if parent_id is not None else {}))
            if rows:
                # The rows as committed (INSERT/UPDATE … RETURNING): no read-back.
                views = await self._announce_views(tenant, [self.view(row, parent) for row, parent in rows])
            else:
                views = await self._announce(tenant, [incident_id] + ([parent_id] if parent_id is not None else []))
        else:
            views = [await self.get(tenant, incident_id)]
        return Created(views[0], outcome, views[1] if len(views) > 1 else None)

    async def _create_row(self, tenant: str, new: NewIncident, actor: Actor, plan: Plan,
                          policy: Policy | None, reporter_enc: str | None, cause: Event | None = None,
                          ) -> tuple[str, int, int | None, list[tuple[Any, Any]]]:
        """(outcome, id, parent id, [(row, its parent row)] of the rows written, as committed)."""
        result: tuple[str, int, int | None, list[tuple[Any, Any]]] = await self.write_tx(
            self._create_tx, tenant, new, actor, plan, policy, reporter_enc, clock.now(), cause)
        return result

    def _create_tx(self, conn: Connection, tenant: str, new: NewIncident, actor: Actor, plan: Plan,
                   policy: Policy | None, reporter_enc: str | None, now: datetime, cause: Event | None = None,
                   ) -> tuple[str, int, int | None, list[tuple[Any, Any]]]:
        if not claim_sync(conn, "incidents", cause):
            raise AlreadyApplied(cause.id if cause else None)
        location, lon, lat, district, department = plan.location, plan.lon, plan.lat, plan.district, \
            plan.department
        t = incidents
        if new.dedup_key:
            stmt = select(t).where(t.c.tenant == tenant, t.c.dedup_open == new.dedup_key)
            existing = (conn.execute(stmt if self._sqlite else stmt.with_for_update())).first()
            if existing is not None:
                return self._refresh(conn, existing, new, actor, now), existing.id, None, []
        correlate = self.correlation.enabled
        maintenance = corr.is_maintenance(new.category)
        parent = None
        attributes = dict(new.attributes) if new.attributes else None
        if correlate:
            extra = {k: v for k, v in (("area", plan.area), ("segment", new.segment), ("device", new.place),
                                       ("fault", new.fault)) if v}
            if extra:
                attributes = {**(attributes or {}), **extra}
            if plan.area is not None:
                parent = corr.area_candidate(conn, tenant, new.category, plan.area,
                                             now - timedelta(minutes=self.routing.merge_minutes))
            elif maintenance and new.segment and new.fault == "offline":
                parent = corr.open_by_key(conn, tenant, f"{corr.SEGMENT_PREFIX}{new.segment}", self._sqlite)
        if parent is None and new.source in MERGING_SOURCES and lon is not None and lat is not None \
                and not (correlate and (maintenance or new.segment_root or plan.area is not None)):
            parent = self._merge_candidate(conn, tenant, new.category, lon, lat, now)
        if parent is None and correlate and not maintenance and not new.segment_root \
                and corr.storm_load(conn, tenant, new.category, now) >= self.correlation.storm_per_minute:
            parent = self._storm_group(conn, tenant, new, actor, plan, policy, now)
            attributes = {**(attributes or {}), "storm": True}
        response_due, resolution_due = self._deadlines(policy, now)
        values: dict[str, Any] = {
            "tenant": tenant, "category": new.category, "title": new.title[:200],
            "description": new.description, "source": new.source, "status": "reported",
            "level": new.level, "severity": new.severity, "lon": lon, "lat": lat, "location": location,
            "address": new.address, "district": district, "department": department, "report_count": 1,
            "dedup_key": new.dedup_key, "dedup_open": new.dedup_key, "service_code": new.service_code,
            "attributes": attributes, "media_url": new.media_url, "entity_id": new.entity_id,
            "reporter_id": new.reporter_id, "reporter_enc": reporter_enc, "token": new.token,
            "reported_at": now, "updated_at": now, "sla_start": now, "response_due": response_due,
            "resolution_due": resolution_due, "response_state": "ok", "resolution_state": "ok",
            "escalations": 0, "version": 1, "hub_dirty": 1, "accepted_at": None, "resolved_at": None,
        }
        if parent is not None:
            # A merged report keeps its open dedup key: a repeat of its alarm must find it, not merge again.
            values.update(status="merged", parent_id=parent.id, response_due=None, resolution_due=None)
        values["sla_next_at"] = next_check(values)
        values.pop("accepted_at")
        values.pop("resolved_at")
        row = conn.execute(self._insert_stmt, values).one()
        new_id = row.id
        if parent is None:
            self._steps(conn, [(tenant, new_id, "report", actor, now, None, "reported", None,
                                {"source": new.source})])
            if correlate and new.segment_root:
                row = self._fold_segment(conn, row, corr.segment_orders(conn, tenant, new.segment or "", None),
                                         actor, now)
            elif correlate and maintenance and new.segment and new.fault == "offline":
                since = now - timedelta(minutes=self.correlation.segment_minutes)
                orders = corr.segment_orders(conn, tenant, new.segment, since)
                if len(orders) >= max(1, self.correlation.segment_min_devices):
                    segment_row = self._open_segment(conn, tenant, new, actor, plan, now)
                    segment_row = self._fold_segment(conn, segment_row, orders, actor, now)
                    row = conn.execute(select(t).where(t.c.id == new_id)).one()
                    return "merged", new_id, segment_row.id, [(row, segment_row), (segment_row, None)]
            return "created", new_id, None, [(row, None)]
        self._steps(conn, [
            (tenant, new_id, "report", actor, now, None, "reported", None, {"source": new.source}),
            (tenant, new_id, "merge", actor, now, "reported", "merged", None,
             {"into": str(parent.id), "automatic": True}),
            (tenant, parent.id, "merge", actor, now, parent.status, parent.status, None,
             {"child": str(new_id), "automatic": True})])
        extra_values: dict[str, Any] = {}
        if correlate and corr.kind_of(parent.category, parent.dedup_key) == "segment" and new.place:
            extra_values["attributes"] = corr.with_affected(parent.attributes, [new.place])
        parent_row = (conn.execute(update(t).where(t.c.id == parent.id).values(
            report_count=t.c.report_count + 1, updated_at=now, version=t.c.version + 1, hub_dirty=1, **extra_values)
            .returning(*t.c))).one()
        return "merged", new_id, parent.id, [(row, parent_row), (parent_row, None)]

    def _open_segment(self, conn: Connection, tenant: str, new: NewIncident, actor: Actor, plan: Plan,
                      now: datetime) -> Row[Any]:
        """The network-segment incident of `new.segment` (its devices went silent together)."""
        segment = new.segment or ""
        category = corr.SEGMENT_CATEGORY
        title = messages.incident_title(category, *self._segment_places(segment, self.district_name(
            tenant, plan.district)))
        response_due, resolution_due = self._deadlines(plan.segment_policy, now)
        key = f"{corr.SEGMENT_PREFIX}{segment}"
        values: dict[str, Any] = {
            "tenant": tenant, "category": category, "title": title, "source": "alarm", "status": "reported",
            "description": f"{self.correlation.segment_min_devices}+ devices of {segment} went silent together",
            "level": "large", "severity": new.severity, "lon": plan.lon, "lat": plan.lat, "location": plan.location,
            "district": plan.district, "department": plan.segment_department or plan.department, "report_count": 1,
            "dedup_key": key, "dedup_open": key, "attributes": {"segment": segment, "affectedDevices": [],
                                                                 "affectedCount": 0},
            "reported_at": now, "updated_at": now, "sla_start": now, "response_due": response_due,
            "resolution_due": resolution_due, "response_state": "ok", "resolution_state": "ok",
            "escalations": 0, "version": 1, "hub_dirty": 1, "accepted_at": None, "resolved_at": None}
        values["sla_next_at"] = next_check(values)
        values.pop("accepted_at")
        values.pop("resolved_at")
        row = conn.execute(self._insert_stmt, values).one()
        self._steps(conn, [(tenant, row.id, "report", actor, now, None, "reported", None,
                            {"source": "correlation", "segment": segment})])
        return row

    def _fold_segment(self, conn: Connection, segment_row: Row[Any], orders: list[Row[Any]], actor: Actor,
                      now: datetime) -> Row[Any]:
        """Merge device work orders into their segment's incident: one timeline entry listing them."""
        t = incidents
        orders = [o for o in orders if o.id != segment_row.id]
        if not orders:
            return segment_row
        ids = [o.id for o in orders]
        conn.execute(update(t).where(t.c.id.in_(ids)).values(
            status="merged", parent_id=segment_row.id, sla_next_at=None, response_due=None, resolution_due=None,
            updated_at=now, version=t.c.version + 1, hub_dirty=1))
        devices = [str((o.attributes or {}).get("device") or o.entity_id or o.id) for o in orders]
        self._steps(conn, [(segment_row.tenant, o.id, "merge", actor, now, o.status, "merged", None,
                            {"into": str(segment_row.id), "automatic": True, "rootCause": True}) for o in orders]
                    + [(segment_row.tenant, segment_row.id, "merge", actor, now, segment_row.status,
                        segment_row.status, None, {"children": [str(i) for i in ids], "automatic": True,
                                                   "rootCause": True})])
        return conn.execute(update(t).where(t.c.id == segment_row.id).values(
            report_count=t.c.report_count + sum(o.report_count for o in orders),
            attributes=corr.with_affected(segment_row.attributes, devices), updated_at=now,
            version=t.c.version + 1, hub_dirty=1).returning(*t.c)).one()

    def _storm_group(self, conn: Connection, tenant: str, new: NewIncident, actor: Actor, plan: Plan,
                     policy: Policy | None, now: datetime) -> Row[Any]:
        """The open storm group of `new.category`, opened now if there is none."""
        key = f"{corr.STORM_PREFIX}{new.category}"
        found = corr.open_by_key(conn, tenant, key, self._sqlite)
        if found is not None:
            return found
        response_due, resolution_due = self._deadlines(policy, now)
        values: dict[str, Any] = {
            "tenant": tenant, "category": new.category, "source": new.source, "status": "reported",
            "title": f"{messages.label('category', 'storm')} · {messages.category(new.category)}"[:200],
            "description": f"more than {self.correlation.storm_per_minute} new incidents a minute; "
                           "the next ones are grouped here",
            "level": new.level, "severity": new.severity, "lon": plan.lon, "lat": plan.lat,
            "location": plan.location, "district": plan.district, "department": plan.department, "report_count": 0,
            "dedup_key": key, "dedup_open": key, "attributes": {"storm": "group"}, "reported_at": now,
            "updated_at": now, "sla_start": now, "response_due": response_due, "resolution_due": resolution_due,
            "response_state": "ok", "resolution_state": "ok", "escalations": 0, "version": 1, "hub_dirty": 1,
            "accepted_at": None, "resolved_at": None}
        values["sla_next_at"] = next_check(values)
        values.pop("accepted_at")
        values.pop("resolved_at")
        row = conn.execute(self._insert_stmt, values).one()
        self._steps(conn, [(tenant, row.id, "storm", actor, now, None, "reported", None,
                            {"category": new.category, "perMinute": self.correlation.storm_per_minute})])
        return row

    def _refresh(self, conn: Connection, row: Row[Any], new: NewIncident, actor: Actor, now: datetime) -> str:
        """The dedup key's incident is open: raise its level if the new one is higher."""
        old = LEVELS.index(row.level) if row.level in LEVELS else 0
        if LEVELS.index(new.level) <= old:
            return "unchanged"
        conn.execute(update(incidents).where(incidents.c.id == row.id).values(
            level=new.level, severity=new.severity or row.severity, updated_at=now,
            version=incidents.c.version + 1, hub_dirty=1))
        self._steps(conn, [(row.tenant, row.id, "update", actor, now, row.status, row.status, None,
                            {"level": {"from": row.level, "to": new.level}, "source": new.source})])
        return "updated"

    def _merge_candidate(self, conn: Connection, tenant: str, category: str, lon: float, lat: float,
                         now: datetime) -> Row[Any] | None:
        metres = self.routing.merge_distance(category)
        dlat = metres / 111_195.0 * 1.01
        dlon = dlat / max(0.01, abs(math.cos(math.radians(lat))))
        rows = conn.execute(self._merge_stmt, {
            "m_tenant": tenant, "m_category": category,
            "m_since": now - timedelta(minutes=self.routing.merge_minutes),
            "m_lat0": lat - dlat, "m_lat1": lat + dlat, "m_lon0": lon - dlon, "m_lon1": lon + dlon}).all()
        best: tuple[float, int] | None = None
        chosen = None
        for row in rows:
            distance = haversine(lon, lat, row.lon, row.lat)
            if distance <= metres and (best is None or (distance, row.id) < best):
                best, chosen = (distance, row.id), row
        return chosen

    # ------------------------------------------------------------------ lifecycle

    async def act(self, tenant: str, incident_id: int | str, action: str, by: Principal | None,
                  note: str | None = None, department: str | None = None, actor: Actor | None = None,
                  detail: dict[str, Any] | None = None) -> dict[str, Any]:
        if action not in TRANSITIONS:
            raise ResourceNotFound(f"no action {action[:40]!r}")
        actor = actor or Actor.of(by)
        ident = parse_id(incident_id)
        now = clock.now()
        sources, target = TRANSITIONS[action]
        try:
            async with self.write() as conn:
                row = await self._row(conn, tenant, ident, lock=True)
                if row.status == "merged":
                    raise Conflict(f"incident {ident} is merged into {row.parent_id}; act on that incident or "
                                   "split it out first")
                if row.status not in sources:
                    raise Conflict(f"cannot {action} an incident that is {row.status} "
                                   f"(allowed from: {', '.join(sorted(sources))})")
                current = row._asdict()
                values: dict[str, Any] = {"status": target, "updated_at": now}
                if note:
                    values["status_notes"] = note
                step_detail: dict[str, Any] = dict(detail or {})
                if action == "dispatch":
                    values["dispatched_at"] = now
                    if department and department != row.department:
                        values["department"] = department
                        step_detail["department"] = {"from": row.department, "to": department}
                elif action == "accept":
                    if row.accepted_at is None:
                        values["accepted_at"] = now
                elif action == "arrive":
                    values["on_site_at"] = now
                elif action == "resolve":
                    values["resolved_at"] = now
                elif action == "close":
                    values["closed_at"] = now
                    values["dedup_open"] = None
                elif action == "reopen":
                    policy = await self.policy_for(tenant, row.category, row.level)
                    _response, resolution_due = self._deadlines(policy, now)
                    values.update(resolved_at=None, closed_at=None, sla_start=now, resolution_due=resolution_due,
                                  resolution_state="ok", dedup_open=row.dedup_key)
                current.update(values)
                for clock_name, start, due, done in (("response", "reported_at", "response_due", "accepted_at"),
                                                     ("resolution", "sla_start", "resolution_due", "resolved_at")):
                    if current[done] is not None and current[due] is not None:
                        state, _next = clock_state(clock.as_utc(current[start]), clock.as_utc(current[due]),
                                                   clock.as_utc(current[done]), now, current[f"{clock_name}_state"])
                        values[f"{clock_name}_state"] = current[f"{clock_name}_state"] = state
                values["sla_next_at"] = next_check(current)
                await conn.execute(update(incidents).where(incidents.c.id == ident).values(
                    **values, version=incidents.c.version + 1, hub_dirty=1))
                if action == "close":  # the merged reports close with it: their sources may open anew
                    await conn.execute(update(incidents).where(incidents.c.parent_id == ident)
                                       .values(dedup_open=None, updated_at=now))
                await self._step(conn, tenant, ident, action, actor, now, row.status, target, note, **step_detail)
        except IntegrityError as exc:
            raise Conflict("another open incident has the same source key; it cannot be reopened") from exc
        await self._audit(actor, f"incident.{action}", tenant, ident, **{"from": row.status, "to": target})
        return (await self._announce(tenant, [ident]))[0]

    async def confirm(self, tenant: str, incident_id: int | str, by: Principal | None, satisfied: bool,
                      note: str | None = None) -> dict[str, Any]:
        """The reporter confirms the resolution (→ closed) or rejects it (→ reopened)."""
        action = "close" if satisfied else "reopen"
        return await self.act(tenant, incident_id, action, by, note, detail={"confirmation": satisfied,
                                                                              "by": "reporter"})

    async def merge(self, tenant: str, incident_id: int | str, into: int | str, by: Principal | None) -> dict[str, Any]:
        child_id, parent_id = parse_id(incident_id), parse_id(into)
        if child_id == parent_id:
            raise Conflict("an incident cannot be merged into itself")
        actor = Actor.of(by)
        now = clock.now()
        t = incidents
        async with self.write() as conn:
            child = await self._row(conn, tenant, child_id, lock=True)
            parent = await self._row(conn, tenant, parent_id, lock=True)
            if child.status not in OPEN_STATUSES or child.parent_id is not None:
                raise Conflict(f"incident {child_id} is {child.status}; only an open incident can be merged")
            if parent.status not in OPEN_STATUSES or parent.parent_id is not None:
                raise Conflict(f"incident {parent_id} is {parent.status}; reports merge only into an open incident")
            has_children = (await conn.execute(select(t.c.id).where(t.c.parent_id == child_id).limit(1))).first()
            if has_children:
                raise Conflict(f"incident {child_id} has merged reports of its own; split them out first")
            await conn.execute(update(t).where(t.c.id == child_id).values(
                status="merged", parent_id=parent_id, sla_next_at=None, updated_at=now,
                version=t.c.version + 1, hub_dirty=1))
            await conn.execute(update(t).where(t.c.id == parent_id).values(
                report_count=t.c.report_count + child.report_count, updated_at=now, version=t.c.version + 1,
                hub_dirty=1))
            await self._step(conn, tenant, child_id, "merge", actor, now, child.status, "merged",
                             into=str(parent_id), previous=child.status)
            await self._step(conn, tenant, parent_id, "merge", actor, now, parent.status, parent.status,
                             child=str(child_id))
        await self._audit(actor, "incident.merge", tenant, child_id, into=str(parent_id))
        return (await self._announce(tenant, [child_id, parent_id]))[0]

    async def split(self, tenant: str, incident_id: int | str, by: Principal | None) -> dict[str, Any]:
        """Undo a merge: the report becomes an incident of its own again (status reported, fresh clocks)."""
        child_id = parse_id(incident_id)
        actor = Actor.of(by)
        now = clock.now()
        t = incidents
        async with self.write() as conn:
            child = await self._row(conn, tenant, child_id, lock=True)
            if child.status != "merged" or child.parent_id is None:
                raise Conflict(f"incident {child_id} is not merged into another incident")
            parent = await self._row(conn, tenant, child.parent_id, lock=True)
            policy = await self.policy_for(tenant, child.category, child.level)
            response_due, resolution_due = self._deadlines(policy, now)
            values: dict[str, Any] = {
                "status": "reported", "parent_id": None, "dedup_open": child.dedup_key, "sla_start": now,
                "response_due": response_due, "resolution_due": resolution_due, "response_state": "ok",
                "resolution_state": "ok", "updated_at": now}
            current = {**child._asdict(), **values, "reported_at": now}
            values["sla_next_at"] = next_check(current)
            values["reported_at"] = now
            await conn.execute(update(t).where(t.c.id == child_id).values(**values, version=t.c.version + 1,
                                                                          hub_dirty=1))
            await conn.execute(update(t).where(t.c.id == parent.id).values(
                report_count=t.c.report_count - child.report_count, updated_at=now, version=t.c.version + 1,
                hub_dirty=1))
            await self._step(conn, tenant, child_id, "split", actor, now, "merged", "reported",
                             **{"from": str(parent.id)})
            await self._step(conn, tenant, parent.id, "split", actor, now, parent.status, parent.status,
                             child=str(child_id))
        await self._audit(actor, "incident.split", tenant, child_id, **{"from": str(parent.id)})
        return (await self._announce(tenant, [child_id, parent.id]))[0]

    async def note(self, tenant: str, dedup_key: str, action: str, note: str,
                   cause: Event | None = None) -> dict[str, Any] | None:
        """A timeline entry on the open incident of `dedup_key` (e.g. its alarm cleared); None when
        there is none, or when `cause` was applied before (claimed with the entry: one entry per event)."""
        now = clock.now()
        async with self.write() as conn:
            if not await claim(conn, "incidents", cause):
                return None
            row = (await conn.execute(select(incidents).where(incidents.c.tenant == tenant,
                                                              incidents.c.dedup_open == dedup_key))).first()
            if row is None:
                return None
            await self._step(conn, tenant, row.id, action, SYSTEM, now, row.status, row.status, note)
            await conn.execute(update(incidents).where(incidents.c.id == row.id).values(updated_at=now))
        return (await self._announce(tenant, [row.id]))[0]

    # ------------------------------------------------------------------ SLA sweep

    async def tick(self, now: datetime | None = None) -> SweepResult:
        """Advance every SLA clock due by `now` (default: the clock); auto-close unconfirmed resolutions."""
        now = now or clock.now()
        result = SweepResult()
        t = incidents
        while True:
            async with self.engine.connect() as conn:
                due = (await conn.execute(select(t.c.tenant, t.c.id).where(t.c.sla_next_at <= now)
                                          .order_by(t.c.sla_next_at).limit(500))).all()
            if not due:
                break
            for tenant, ident in due:
                await self._sweep_one(tenant, ident, now, result)
        async with self.engine.connect() as conn:
            stale = (await conn.execute(select(t.c.tenant, t.c.id).where(
                t.c.status == "resolved", t.c.resolved_at <= now - self.auto_close).limit(1000))).all()
        hours = self.auto_close.total_seconds() / 3600
        for tenant, ident in stale:
            with contextlib.suppress(Conflict, ResourceNotFound):
                await self.act(tenant, ident, "close", None,
                               f"closed automatically: no confirmation within {hours:g} h",
                               actor=SYSTEM, detail={"automatic": True})
                result.closed += 1
        return result

    async def _sweep_one(self, tenant: str, ident: int, now: datetime, result: SweepResult) -> None:
        events: list[tuple[str, dict[str, Any]]] = []
        async with self.write() as conn:
            try:
                row = await self._row(conn, tenant, ident, lock=True)
            except ResourceNotFound:
                return
            current = row._asdict()
            if row.sla_next_at is None or clock.as_utc(row.sla_next_at) > now:
                return
            values: dict[str, Any] = {}
            level = row.level
            for name, start, due, done in (("response", "reported_at", "response_due", "accepted_at"),
                                           ("resolution", "sla_start", "resolution_due", "resolved_at")):
                if current[due] is None or current[done] is not None:
                    continue
                old = current[f"{name}_state"]
                state, _next = clock_state(clock.as_utc(current[start]), clock.as_utc(current[due]), None, now, old)
                if state == old:
                    continue
                values[f"{name}_state"] = current[f"{name}_state"] = state
                if state == "yellow":
                    result.yellow += 1
                    await self._step(conn, tenant, ident, "sla.yellow", SYSTEM, now, row.status, row.status,
                                     f"{name} deadline at 80 %", clock=name, due=_iso(current[due]))
                    events.append((SLA_EVENT, {"clock": name, "state": "yellow"}))
                elif state == "breached":
                    result.breached += 1
                    new_level = level_up(level)
                    await self._step(conn, tenant, ident, "escalate", SYSTEM, now, row.status, row.status,
                                     f"{name} deadline breached", clock=name, due=_iso(current[due]),
                                     level={"from": level, "to": new_level})
                    events.append((ESCALATED, {"clock": name, "from": level, "to": new_level}))
                    level = new_level
                    values["escalations"] = current["escalations"] = current["escalations"] + 1
                    result.escalated.append(str(ident))
            values["level"] = level
            values["sla_next_at"] = next_check(current)
            await conn.execute(update(incidents).where(incidents.c.id == ident).values(
                **values, version=incidents.c.version + 1, hub_dirty=1))
        for topic, detail in events:
            if topic == ESCALATED:
                await self._audit(SYSTEM, "incident.escalate", tenant, ident, **detail)
        views = await self._announce(tenant, [ident])
        for topic, detail in events:
            await self.bus.publish(topic, {"tenant": tenant, "incident": views[0] if views else None, **detail})

    # ------------------------------------------------------------------ reports

    async def sla_report(self, tenant: str, by: str, start: datetime, end: datetime,
                         departments_in: Iterable[str] | None = None) -> dict[str, Any]:
        if by not in ("department", "category", "district"):
            raise BadRequestData("by must be department, category or district")
        t = incidents
        conds = [t.c.tenant == tenant, t.c.parent_id.is_(None), t.c.reported_at >= start, t.c.reported_at < end]
        if departments_in is not None:
            conds.append(t.c.department.in_(list(departments_in)))
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(
                t.c.department, t.c.category, t.c.district, t.c.reported_at, t.c.accepted_at, t.c.sla_start,
                t.c.resolved_at, t.c.response_state, t.c.resolution_state).where(and_(*conds)))).all()
        groups: dict[str, list[Any]] = {}
        for row in rows:
            groups.setdefault(getattr(row, by) or "(none)", []).append(row)

        def summary(items: list[Any]) -> dict[str, Any]:
            out: dict[str, Any] = {"incidents": len(items)}
            for name in ("response", "resolution"):
                met = sum(1 for r in items if getattr(r, f"{name}_state") == "met")
                breached = sum(1 for r in items if getattr(r, f"{name}_state") == "breached")
                out[name] = {"met": met, "breached": breached, "pending": len(items) - met - breached,
                             "compliance": round(100.0 * met / (met + breached), 2) if met + breached else None}
            responses = [(clock.as_utc(r.accepted_at) - clock.as_utc(r.reported_at)).total_seconds() / 60
                         for r in items if r.accepted_at is not None]
            resolutions = [(clock.as_utc(r.resolved_at) - clock.as_utc(r.sla_start)).total_seconds() / 60
                           for r in items if r.resolved_at is not None]
            out["meanResponseMinutes"] = round(sum(responses) / len(responses), 2) if responses else None
            out["meanResolutionMinutes"] = round(sum(resolutions) / len(resolutions), 2) if resolutions else None
            return out

        return {"by": by, "from": clock.iso(start), "to": clock.iso(end), "total": summary(list(rows)),
                "groups": [{"key": key, **summary(items)} for key, items in sorted(groups.items())]}

    # ------------------------------------------------------------------ hub view

    def hub_entity(self, row: Any) -> dict[str, Any]:
        def prop(value: Any) -> dict[str, Any]:
            return {"type": "Property", "value": value}

        def moment(value: datetime | None) -> dict[str, Any] | None:
            if value is None:
                return None
            return {"type": "Property", "value": {"@type": "DateTime", "@value": _iso(value)}}

        entity: dict[str, Any] = {
            "id": f"{ENTITY_PREFIX}{row.id}", "type": "Incident",
            "category": prop(row.category), "status": prop(row.status), "level": prop(row.level),
            # Titles and descriptions are typed by people (hotline staff, citizens): the hub copy is
            # shared with other domains and may be public, so phone and ID numbers in them are masked.
            "source": prop(row.source), "title": prop(mask_public_text(row.title) if row.title else row.title),
            "department": prop(row.department),
            "reportCount": prop(row.report_count), "escalations": prop(row.escalations),
            "slaState": prop(overall_sla(row.response_state, row.resolution_state)),
            "responseState": prop(row.response_state), "resolutionState": prop(row.resolution_state),
        }
        if row.source != "hotline" and row.description:
            entity["description"] = prop(mask_public_text(row.description[:1000]))
        if row.severity:
            entity["severity"] = prop(row.severity)
        if row.location:
            entity["location"] = {"type": "GeoProperty", "value": row.location}
        if row.district:
            entity["district"] = prop(row.district)
        if row.entity_id:
            entity["alertSource"] = prop(row.entity_id)
        for name, value in (("dateReported", row.reported_at), ("dateModified", row.updated_at),
                            ("dateDispatched", row.dispatched_at), ("dateAccepted", row.accepted_at),
                            ("dateResolved", row.resolved_at), ("dateClosed", row.closed_at),
                            ("responseDue", row.response_due), ("resolutionDue", row.resolution_due)):
            rendered = moment(value)
            if rendered is not None:
                entity[name] = rendered
        return entity

    async def sync_hub(self, batch: int = 500) -> int:
        """Write every incident whose hub view is behind (the outbox); returns how many were written."""
        t = incidents
        written = 0
        clear = update(t).where(t.c.id == bindparam("b_id"), t.c.version == bindparam("b_version")) \
            .values(hub_dirty=0)
        after = 0
        while True:
            async with self.engine.connect() as conn:
                rows = (await conn.execute(select(t).where(t.c.hub_dirty == 1, t.c.id > after)
                                           .order_by(t.c.id).limit(batch))).all()
            if not rows:
                return written
            after = rows[-1].id
            by_tenant: dict[str, list[Any]] = {}
            for row in rows:
                by_tenant.setdefault(row.tenant, []).append(row)
            for tenant, items in by_tenant.items():
                bodies = [self.hub_entity(r) for r in items if r.status != "merged"]
                gone = [f"{ENTITY_PREFIX}{r.id}" for r in items if r.status == "merged"]
                if bodies:
                    result = await self.hub.batch_write(tenant, bodies, self.ctx, "upsert", set())
                    for error in result.errors:
                        log.error("incident hub view refused: %s", error)
                if gone:
                    with contextlib.suppress(ProblemError):
                        await self.hub.batch_delete(tenant, gone)
            async with self.write() as conn:
                await conn.execute(clear, [{"b_id": r.id, "b_version": r.version} for r in rows])
            written += len(rows)

    # ------------------------------------------------------------------ Open311 support

    async def by_token(self, token: str) -> tuple[str, int] | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(incidents.c.tenant, incidents.c.id)
                                      .where(incidents.c.token == token))).first()
        return (row.tenant, row.id) if row else None

    async def open311_rows(self, tenant: str, *, ids: list[int] | None = None, service_codes: list[str] | None = None,
                           start: datetime | None = None, end: datetime | None = None,
                           status: set[str] | None = None, limit: int = 1000) -> list[Any]:
        """Open311 service requests (source open311) with their effective incident (the parent if merged)."""
        t = incidents
        p = incidents.alias("p")
        effective = func.coalesce(p.c.status, t.c.status)
        conds: list[Any] = [t.c.tenant == tenant, t.c.source == "open311"]
        if ids is not None:
            conds.append(t.c.id.in_(ids))
        else:
            if start is not None:
                conds.append(t.c.reported_at >= start)
            if end is not None:
                conds.append(t.c.reported_at <= end)
        if service_codes:
            conds.append(t.c.service_code.in_(service_codes))
        if status == {"open"}:
            conds.append(~effective.in_(CLOSED_FOR_OPEN311))
        elif status == {"closed"}:
            conds.append(effective.in_(CLOSED_FOR_OPEN311))
        stmt = (select(t, p.c.status.label("p_status"), p.c.status_notes.label("p_notes"),
                       p.c.updated_at.label("p_updated"), p.c.department.label("p_department"),
                       p.c.resolution_due.label("p_due"))
                .select_from(t.outerjoin(p, t.c.parent_id == p.c.id)).where(and_(*conds))
                .order_by(t.c.reported_at.desc(), t.c.id.desc()).limit(limit))
        async with self.engine.connect() as conn:
            return list((await conn.execute(stmt)).all())
