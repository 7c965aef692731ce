"""Incidents: the records the service works with (new reports, actors, plans, results), the
SLA helpers, and the service's state and plumbing (transactions, timeline steps, audit).

The service (`cityos.ops.incidents.service.IncidentService`) is composed of one part per
responsibility; this is the part every other one builds on."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import orjson
import shapely
from shapely.geometry import shape
from sqlalchemy import Connection, Row, bindparam, event, insert, literal_column, select
from sqlalchemy import create_engine as create_sync_engine
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from cityos.config import env_float
from cityos.core import clock
from cityos.core.db import _configure_sqlite, json_dumps
from cityos.core.errors import ResourceNotFound
from cityos.core.events import EventBus
from cityos.hub.jsonld import ActiveContext
from cityos.hub.service import HubService
from cityos.ops.incidents import correlation as corr
from cityos.ops.incidents.models import OPEN_STATUSES, incidents, steps
from cityos.ops.incidents.routing import Policy, Routing, default_policies
from cityos.security.audit import AuditEvent
from cityos.security.crypto import ENCRYPTED_COLUMNS, KeyRing, register_encrypted
from cityos.security.policy import Principal

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



class IncidentCore:
    """The incident service's state (routing, caches, prepared statements) and its plumbing."""

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
