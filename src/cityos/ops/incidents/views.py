"""Incidents: reads and what is published of them. API views, timelines, search, the SLA report,
Open311 rows, the change events, and the hub view (`Incident` entities, written from an
outbox by `sync_hub`)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import and_, bindparam, func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from cityos.core import clock
from cityos.core.errors import BadRequestData, ProblemError, ResourceNotFound
from cityos.ops.incidents import correlation as corr
from cityos.ops.incidents.core import CHANGED, CLOSED_FOR_OPEN311, ENTITY_PREFIX, _iso, overall_sla, parse_id
from cityos.ops.incidents.models import OPEN_STATUSES, incidents, steps
from cityos.ops.incidents.policies import IncidentPolicies
from cityos.security.masking import mask_public_text

log = logging.getLogger(__name__)


class IncidentViews(IncidentPolicies):
    """Incident views and reads, change announcements, the SLA report, the hub view, Open311 rows."""

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
