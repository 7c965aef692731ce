"""Incidents: the lifecycle (dispatch … close, reopen, confirm, merge, split, notes) and the SLA
sweep (`tick`): yellow at 80 % of a clock's span, breached and escalated at its deadline,
unconfirmed resolutions closed automatically."""

from __future__ import annotations

import contextlib
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from cityos.core import clock
from cityos.core.bus_models import claim
from cityos.core.errors import Conflict, ResourceNotFound
from cityos.core.events import Event
from cityos.ops.incidents.core import ESCALATED, SLA_EVENT, SYSTEM, Actor, SweepResult, _iso, next_check, parse_id
from cityos.ops.incidents.intake import IncidentIntake
from cityos.ops.incidents.models import OPEN_STATUSES, TRANSITIONS, incidents
from cityos.ops.incidents.routing import clock_state, level_up
from cityos.security.policy import Principal


class IncidentLifecycle(IncidentIntake):
    """Actions on open incidents and the SLA sweep."""

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
