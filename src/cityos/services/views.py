"""The service desk's reads: application and task views, listings, the inbox, bundle views,
supervision (overdue applications) and metrics."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import and_, bindparam, case, func, literal_column, or_, select

from cityos.core import clock
from cityos.core.clock import as_utc, as_utc_or_none
from cityos.core.errors import ResourceNotFound
from cityos.security.policy import STAFF_ROLES, Principal, Resource, Role, Scope, role_of, scope_for
from cityos.security.service import Forbidden
from cityos.services import models as m
from cityos.services.catalogue import Bundle, Service
from cityos.services.catalogue_admin import CatalogueDesk
from cityos.services.desk import Check, _iso

log = logging.getLogger(__name__)


class ViewsDesk(CatalogueDesk):
    """Read views: applications, cases, tasks, the inbox, overdue applications, metrics."""

    def deadline(self, row: dict[str, Any]) -> dict[str, Any]:
        return self.calendar.deadline(submitted_at=as_utc(row["submitted_at"]), limit_days=int(row["limit_days"]),
                                      paused_days=int(row["paused_days"]),
                                      paused_since=as_utc_or_none(row["paused_since"]),
                                      completed_at=as_utc_or_none(row["completed_at"]), now=clock.now())

    def _summary(self, row: dict[str, Any]) -> dict[str, Any]:
        return {"id": row["id"], "receipt": row["receipt"], "serviceCode": row["service_code"],
                "department": row["department"], "applicant": row["applicant"], "status": row["status"],
                "instant": bool(row["instant"]), "channel": row["channel"], "bundleId": row["bundle_id"],
                "submittedAt": _iso(row["submitted_at"]), "completedAt": _iso(row["completed_at"]),
                "licenceIds": list(row["licence_ids"] or [])}

    def view(self, row: dict[str, Any], svc: Service | None = None,
             open_tasks: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        out = self._summary(row)
        out.update({"serviceName": svc.definition.name if svc else None, "form": row["form"],
                    "materials": row["materials"], "steps": row["steps"], "deadline": self.deadline(row),
                    "escalated": bool(row["escalated"]), "outcomeReason": row["outcome_reason"]})
        if open_tasks is not None:
            out["openTasks"] = [{"id": t["id"], "step": t["name"], "title": t["title"],
                                 "department": t["department"]} for t in open_tasks]
        return out

    async def _task_row(self, tenant: str, task_id: str) -> dict[str, Any]:
        async with self._read() as conn:
            task = (await conn.execute(select(m.tasks).where(
                m.tasks.c.id == task_id, m.tasks.c.tenant == tenant))).mappings().first()
        if task is None:
            raise ResourceNotFound(f"no task {task_id!r}")
        return dict(task)

    @staticmethod
    def _read_resource(principal: Principal | None, tenant: str, row: Any, task_departments: Iterable[str]) -> Resource:
        """The resource `application.read` is checked on: the application's department, or, for staff,
        whichever involved department (the lead's or a task's) is one of theirs."""
        department = row["department"]
        if principal is not None and principal.role in STAFF_ROLES:
            involved = set(task_departments) | {department}
            department = next((d for d in sorted(involved, key=str) if d in principal.departments), department)
        return Resource("application", tenant, id=row["id"], department=department, owner=row["applicant"])

    async def application(self, principal: Principal | None, tenant: str, app_id: str,
                          check: Check) -> dict[str, Any]:
        async with self._read() as conn:
            row = (await conn.execute(select(m.applications).where(
                m.applications.c.id == app_id, m.applications.c.tenant == tenant))).mappings().first()
            if row is None:
                raise ResourceNotFound(f"no application {app_id!r}")
            task_rows = (await conn.execute(select(m.tasks).where(m.tasks.c.application_id == app_id)
                                            .order_by(m.tasks.c.created_at))).mappings().all()
        await check("application.read", self._read_resource(principal, tenant, row,
                                                            (t["department"] for t in task_rows)))
        svc = self.services.get(row["service_code"])
        return self.view(dict(row), svc, [dict(t) for t in task_rows if t["status"] == "open"])

    async def applications(self, principal: Principal, tenant: str, *, status: str | None, limit: int,
                           offset: int, group: str | None = None) -> dict[str, Any]:
        """The applications the caller may list, newest first. With ``group="case"`` a one-thing bundle
        (一件事) is one item (kind ``bundle``: its overall status, progress and member applications, and
        the link to its page) and paging counts cases; other items are kind ``application``."""
        a = m.applications
        query = select(a).where(a.c.tenant == tenant)
        if principal.role in (Role.CITIZEN, Role.ENTERPRISE):
            query = query.where(a.c.applicant == principal.id)
        elif principal.role in (Role.OFFICIAL, Role.DEPT_ADMIN):
            depts = sorted(principal.departments)
            involved = select(m.tasks.c.application_id).where(m.tasks.c.tenant == tenant,
                                                              m.tasks.c.department.in_(depts))
            query = query.where(or_(a.c.department.in_(depts), a.c.id.in_(involved)))
        elif principal.role not in (Role.AUDITOR, Role.SYS_ADMIN):
            raise Forbidden(f"role {principal.role} may not list applications")
        if group == "case":
            return await self._cases(query, tenant, status, limit, offset)
        if status:
            query = query.where(a.c.status == status)
        async with self._read() as conn:
            rows = (await conn.execute(query.order_by(a.c.submitted_at.desc(), a.c.id)
                                       .limit(limit).offset(offset))).mappings().all()
        items = []
        for r in rows:
            item = self._summary(dict(r))
            item["deadline"] = self.deadline(dict(r))
            items.append(item)
        return {"items": items, "limit": limit, "offset": offset}

    async def _cases(self, query: Any, tenant: str, status: str | None, limit: int, offset: int) -> dict[str, Any]:
        """`applications` grouped by case: a bundle's members under one item (see `applications`)."""
        a = m.applications
        key = func.coalesce(a.c.bundle_id, a.c.id)
        keyed = query.where(a.c.status == status) if status else query
        page = (keyed.with_only_columns(key.label("case_key"), func.max(a.c.submitted_at).label("latest"))
                .group_by(key).order_by(literal_column("latest").desc(), literal_column("case_key"))
                .limit(limit).offset(offset))
        async with self._read() as conn:
            keys = [k for k, _ in (await conn.execute(page)).all()]
            rows = (await conn.execute(query.where(or_(a.c.id.in_(keys), a.c.bundle_id.in_(keys)))
                                       .order_by(a.c.submitted_at, a.c.id))).mappings().all() if keys else []
            found_cases = (await conn.execute(select(m.bundles).where(
                m.bundles.c.tenant == tenant, m.bundles.c.id.in_(keys)))).mappings().all() if keys else []
        cases = {r["id"]: dict(r) for r in found_cases}
        members: dict[str, list[dict[str, Any]]] = {}
        for found_row in rows:
            members.setdefault(found_row["bundle_id"] or found_row["id"], []).append(dict(found_row))
        items: list[dict[str, Any]] = []
        for k in keys:
            case, bundle = cases.get(k), None
            if case is not None:
                bundle = self.bundles.get(case["bundle_code"])
            found = members.get(k, [])
            if case is None or bundle is None:  # a plain application (or a case being created right now)
                for r in found:
                    items.append({"kind": "application", **self._summary(r), "deadline": self.deadline(r)})
                continue
            order = {app_id: i for i, app_id in enumerate(case["application_ids"])}
            found.sort(key=lambda r: order.get(r["id"], len(order)))
            views = [{**self._summary(r), "deadline": self.deadline(r)} for r in found]
            item = self._bundle_view(k, bundle, case["applicant"], views, as_utc(case["created_at"]))
            names = {v["id"]: self.services[v["serviceCode"]].definition.name
                     for v in views if v["serviceCode"] in self.services}
            for view in item["applications"]:
                view["serviceName"] = names.get(view["id"])
            done = sum(1 for v in views if v["status"] in (m.APPROVED, m.REJECTED))
            item.update({"kind": "bundle", "nameEn": bundle.definition.name_en, "submittedAt": item["createdAt"],
                         "progress": {"completed": done, "total": len(views)},
                         "link": f"/portal/bundles/{k}"})
            items.append(item)
        return {"items": items, "limit": limit, "offset": offset, "group": "case"}

    def _task_item(self, t: Any) -> dict[str, Any]:
        app_row = {"submitted_at": t["submitted_at"], "limit_days": t["limit_days"], "paused_days": t["paused_days"],
                   "paused_since": t["paused_since"], "completed_at": t["app_completed_at"]}
        return {"id": t["id"], "applicationId": t["application_id"], "receipt": t["receipt"],
                "serviceCode": t["service_code"], "step": t["name"], "title": t["title"],
                "department": t["department"], "status": t["status"], "outcome": t["outcome"],
                "createdAt": _iso(t["created_at"]), "dueAt": _iso(t["due_at"]),
                "completedAt": _iso(t["completed_at"]), "applicationStatus": t["app_status"],
                "deadline": self.deadline(app_row)}

    def _task_query(self) -> Any:
        t, a = m.tasks, m.applications
        return select(t, a.c.receipt, a.c.service_code, a.c.submitted_at, a.c.limit_days, a.c.paused_days,
                      a.c.paused_since, a.c.completed_at.label("app_completed_at"),
                      a.c.status.label("app_status")).select_from(t.join(a, a.c.id == t.c.application_id))

    def _inbox_statement(self, status: str) -> Any:
        """The inbox query for `status`, built once: bind parameters, and for open tasks the literal
        ``status = 'open'`` (so PostgreSQL can use the partial index `ix_svc_tasks_open` also under a
        generic plan) with the open total as a scalar subquery (one round trip, no COUNT over history)."""
        stmt = self._inbox_statements.get(status)
        if stmt is not None:
            return stmt
        t = m.tasks
        where = [t.c.tenant == bindparam("tenant"), t.c.department.in_(bindparam("depts", expanding=True))]
        if status == "open":
            where.append(t.c.status == literal_column("'open'"))
        elif status != "all":
            where.append(t.c.status == bindparam("status"))
        order = [t.c.due_at, t.c.id] if status == "open" else [t.c.due_at.desc(), t.c.id]
        query = self._task_query()
        if status == "open":
            total = select(func.count()).select_from(t).where(*where).scalar_subquery()
            query = query.add_columns(total.label("open_total"))
        stmt = query.where(*where).order_by(*order).limit(bindparam("limit")).offset(bindparam("offset"))
        self._inbox_statements[status] = stmt
        return stmt

    async def inbox(self, principal: Principal, tenant: str, *, status: str, limit: int, offset: int,
                    department: str | None = None) -> dict[str, Any]:
        t = m.tasks
        depts = sorted(principal.departments)
        if department is not None:
            if department not in principal.departments:
                raise Forbidden(f"department {department!r} is not yours")
            depts = [department]
        if not depts:
            return {"items": [], "total": 0, "limit": limit, "offset": offset}
        params = {"tenant": tenant, "depts": depts, "limit": limit, "offset": offset, "status": status}
        async with self._read() as conn:
            rows = (await conn.execute(self._inbox_statement(status), params)).mappings().all()
            total = None
            if status == "open":
                if rows:
                    total = int(rows[0]["open_total"])
                elif offset == 0:
                    total = 0
                else:  # a page past the end: the total still counts the open tasks
                    total = (await conn.execute(select(func.count()).select_from(t).where(
                        t.c.tenant == tenant, t.c.department.in_(depts), t.c.status == "open"))).scalar_one()
        return {"items": [self._task_item(r) for r in rows], "total": total, "limit": limit, "offset": offset}

    async def task(self, principal: Principal, tenant: str, task_id: str, check: Check) -> dict[str, Any]:
        async with self._read() as conn:
            row = (await conn.execute(self._task_query().where(
                m.tasks.c.id == task_id, m.tasks.c.tenant == tenant))).mappings().first()
            if row is None:
                raise ResourceNotFound(f"no task {task_id!r}")
            app_row = (await conn.execute(select(m.applications).where(
                m.applications.c.id == row["application_id"]))).mappings().one()
        await check("task.act", Resource("task", tenant, id=task_id, department=row["department"]))
        item = self._task_item(dict(row))
        svc = self.services.get(app_row["service_code"])
        item.update({"form": app_row["form"], "materials": app_row["materials"],
                     "verifiedLicences": [x for x in app_row["materials"] if x.get("kind") == "licence"],
                     "steps": app_row["steps"], "applicant": app_row["applicant"],
                     "serviceName": svc.definition.name if svc else None,
                     "formSchema": svc.definition.form if svc else None,
                     "actions": ["approve", "reject", "request-supplement"] if row["status"] == "open" else []})
        return item

    def _bundle_view(self, case_id: str, bundle: Bundle, applicant: str, views: list[dict[str, Any]],
                     created: datetime) -> dict[str, Any]:
        statuses = {v["status"] for v in views}
        if statuses == {m.APPROVED}:
            status = m.APPROVED
        elif m.REJECTED in statuses:
            status = "partially_rejected" if m.APPROVED in statuses or statuses & set(m.OPEN_STATUSES) else m.REJECTED
        elif m.SUPPLEMENT in statuses:
            status = m.SUPPLEMENT
        else:
            status = m.IN_REVIEW
        return {"caseId": case_id, "bundleCode": bundle.code, "name": bundle.definition.name, "applicant": applicant,
                "status": status, "createdAt": as_utc(created).isoformat(),
                "applications": [{k: v[k] for k in ("id", "receipt", "serviceCode", "department", "status",
                                                     "deadline", "licenceIds")} for v in views]}

    async def overdue(self, principal: Principal, tenant: str, department: str | None, limit: int) -> dict[str, Any]:
        a = m.applications
        now = clock.now()
        where = [a.c.tenant == tenant, a.c.status == m.IN_REVIEW, a.c.due_at < now]
        if department:
            where.append(a.c.department == department)
        if principal.role in (Role.DEPT_ADMIN, Role.OFFICIAL):
            where.append(a.c.department.in_(sorted(principal.departments)))
        async with self._read() as conn:
            rows = (await conn.execute(select(a).where(*where).order_by(a.c.due_at).limit(limit))).mappings().all()
            counts = (await conn.execute(select(a.c.department, func.count()).where(*where)
                                         .group_by(a.c.department))).all()
            open_tasks = (await conn.execute(select(m.tasks.c.application_id, m.tasks.c.department).where(
                m.tasks.c.application_id.in_([r["id"] for r in rows]), m.tasks.c.status == "open"))).all()
        waiting: dict[str, list[str]] = {}
        for app_id, dept in open_tasks:
            waiting.setdefault(app_id, []).append(dept)
        items = []
        for r in rows:
            d = self.deadline(dict(r))
            items.append({"id": r["id"], "receipt": r["receipt"], "serviceCode": r["service_code"],
                          "department": r["department"], "dueAt": _iso(r["due_at"]), "deadline": d,
                          "overdueDays": max(0, -int(d["leftDays"])), "escalated": bool(r["escalated"]),
                          "waitingOn": sorted(set(waiting.get(r["id"], [])))})
        return {"asOf": now.isoformat(), "byDepartment": {dept: n for dept, n in counts}, "items": items}

    async def metrics(self, principal: Principal | None, tenant: str, by: str) -> dict[str, Any]:
        """Per service or department. A caller whose `supervision.read` is department-scoped (a
        dept_admin) sees only its own departments' applications and ratings."""
        a = m.applications
        departments = None if scope_for(role_of(principal), "supervision.read") in (Scope.TENANT, Scope.ALL) \
            else sorted(principal.departments if principal is not None else ())
        key = a.c.service_code if by == "service" else a.c.department
        now = clock.now()
        overdue = case((and_(a.c.completed_at.is_not(None), a.c.completed_at > a.c.due_at), 1),
                       (and_(a.c.completed_at.is_(None), a.c.status == m.IN_REVIEW, a.c.due_at < now), 1), else_=0)
        query = select(key.label("key"), func.count().label("total"),
                       func.sum(case((a.c.channel == "online", 1), else_=0)).label("online"),
                       func.sum(case((a.c.instant.is_(True), 1), else_=0)).label("instant"),
                       func.sum(case((a.c.completed_at.is_not(None), 1), else_=0)).label("completed"),
                       func.avg(a.c.handling_seconds).label("avg_seconds"),
                       func.sum(overdue).label("overdue"),
                       func.sum(a.c.trips_saved).label("trips_saved")).where(a.c.tenant == tenant).group_by(key)
        if departments is not None:
            query = query.where(a.c.department.in_(departments))
        async with self._read() as conn:
            rows = (await conn.execute(query)).mappings().all()
        satisfaction = await self._satisfaction(tenant, departments)
        items = []
        for r in rows:
            total = int(r["total"])
            items.append({by: r["key"], "applications": total, "completed": int(r["completed"] or 0),
                          "onlineRate": round(int(r["online"] or 0) / total, 4),
                          "averageHandlingMinutes": None if r["avg_seconds"] is None
                          else round(float(r["avg_seconds"]) / 60, 2),
                          "instantShare": round(int(r["instant"] or 0) / total, 4),
                          "overdueRate": round(int(r["overdue"] or 0) / total, 4),
                          "tripsSaved": int(r["trips_saved"] or 0),
                          "satisfaction": _pick(satisfaction, by, r["key"])})
        items.sort(key=lambda x: str(x[by]))
        return {"by": by, "asOf": now.isoformat(), "items": items, "satisfaction": satisfaction}

    async def _satisfaction(self, tenant: str, departments: list[str] | None = None) -> Any:
        ratings = self._peer("ratings")
        if ratings is None or not hasattr(ratings, "satisfaction"):
            return None
        try:
            return await ratings.satisfaction(tenant, departments)
        except Exception:
            log.exception("ratings.satisfaction failed")
            return None


def _pick(satisfaction: Any, by: str, key: str) -> Any:
    """The per-service / per-department figure from a ratings summary, whatever its exact shape."""
    if not isinstance(satisfaction, dict):
        return None
    for name in (f"by{by.capitalize()}", by, f"{by}s", "byDepartment" if by == "department" else "byService"):
        part = satisfaction.get(name)
        if isinstance(part, dict) and key in part:
            return part[key]
        if isinstance(part, list):
            for item in part:
                if isinstance(item, dict) and key in (item.get(by), item.get("code"), item.get("key"),
                                                      item.get("serviceCode")):
                    return item
    return None
