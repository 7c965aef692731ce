"""Incidents: intake. Planning where a report goes, and opening it, merging it into a nearby or
correlated open incident, grouping a storm, or refreshing the open incident of its dedup key."""

from __future__ import annotations

import math
import secrets
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import Connection, Row, select, update
from sqlalchemy.exc import IntegrityError

from cityos.core import clock, messages
from cityos.core.bus_models import AlreadyApplied, claim_sync
from cityos.core.errors import BadRequestData
from cityos.core.events import Event
from cityos.hub.geoquery import haversine, validate_geojson
from cityos.ops.incidents import correlation as corr
from cityos.ops.incidents.core import Actor, Created, NewIncident, Plan, _point, next_check
from cityos.ops.incidents.models import LEVELS, MERGING_SOURCES, incidents
from cityos.ops.incidents.routing import Policy
from cityos.ops.incidents.views import IncidentViews
from cityos.security.policy import Principal


class IncidentIntake(IncidentViews):
    """New reports: plan, correlate, create (one write transaction each)."""

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
