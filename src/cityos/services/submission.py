"""The service desk's submissions: validating and starting new applications (on PostgreSQL in
one statement), and recovering submission audit records lost in a crash."""

from __future__ import annotations

import logging
import secrets
import uuid
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import orjson
from sqlalchemy import JSON, select
from sqlalchemy.ext.asyncio import AsyncEngine

from cityos.core import clock
from cityos.core.errors import BadRequestData
from cityos.security.audit import AuditEvent
from cityos.security.policy import Principal, Resource, Role
from cityos.services import models as m
from cityos.services.catalogue import Service
from cityos.services.desk import Check, FieldErrors, _iso, form_errors
from cityos.services.notify import models as notify_models
from cityos.services.progression import ProgressionDesk

log = logging.getLogger(__name__)


class SubmissionDesk(ProgressionDesk):
    """New applications: validation, the first workflow step and its notices, one transaction (or statement) each."""

    async def reconcile_audit(self, window: timedelta = timedelta(days=2),
                              settle: timedelta = timedelta(minutes=1)) -> int:
        """Record `application.submit` for submissions committed in the last `window` whose audit record
        is missing: the process died between the application's commit and its audit record (which the
        API writes after the commit, so that the one-statement insert stays fast). Runs at start; only
        submissions older than `settle` count, so another process's record still in flight is not
        doubled. Recovered records say so (``recovered: true``). Returns how many were recorded."""
        security = self._peer("security")
        if security is None:
            return 0
        now = clock.now()
        a = m.applications
        async with self._read() as conn:
            rows = (await conn.execute(select(a.c.id, a.c.tenant, a.c.applicant, a.c.service_code, a.c.receipt,
                                              a.c.bundle_id, a.c.submitted_at)
                                       .where(a.c.submitted_at >= now - window, a.c.submitted_at < now - settle)
                                       )).mappings().all()
        if not rows:
            return 0
        resource = {r["id"]: f"case:{r['bundle_id']}" if r["bundle_id"] else f"application:{r['id']}" for r in rows}
        # A record written before its application's commit time cannot exist: search from the window's start.
        present = await security.audit.recorded("application.submit", list(resource.values()),
                                                now - window - settle)
        missing: dict[str, AuditEvent] = {}
        for r in rows:
            if resource[r["id"]] in present or resource[r["id"]] in missing:
                continue
            missing[resource[r["id"]]] = AuditEvent(
                "application.submit", resource[r["id"]], actor=r["applicant"], actor_kind="user", role="unknown",
                tenant=r["tenant"], detail={"service": r["service_code"], "receipt": r["receipt"], "recovered": True,
                                            "submittedAt": _iso(r["submitted_at"])})
        if missing:
            log.warning("audit: %d submissions had no audit record (lost in a crash); recorded now", len(missing))
            await security.audit.append_many(list(missing.values()))
        return len(missing)

    async def _validate_submission(self, svc: Service, principal: Principal, tenant: str, form: Any,
                                   materials: Any, prefix: str = "") -> tuple[list[dict[str, Any]],
                                                                              list[dict[str, str]]]:
        check = svc.form_check  # compiled: a valid form skips jsonschema's per-property validator objects
        errors = [] if check is not None and check(form) else form_errors(svc.validator, form, f"{prefix}form")
        if not isinstance(form, dict):
            return [], errors or [{"field": f"{prefix}form", "message": "must be an object"}]
        out, material_errors = await self._materials(svc, principal, tenant, materials, f"{prefix}materials")
        return out, errors + material_errors

    def _new_row(self, svc: Service, principal: Principal, tenant: str, form: dict[str, Any],
                 materials: list[dict[str, Any]], channel: str, now: datetime, bundle_id: str | None,
                 app_id: str | None = None) -> dict[str, Any]:
        limit = svc.definition.time_limit_days
        app_id = app_id or uuid.uuid4().hex
        local = now.astimezone(self.calendar.tz)
        return {
            "id": app_id, "tenant": tenant, "receipt": f"YW{local:%Y%m%d}{secrets.randbelow(10**10):010d}",
            "service_code": svc.code, "department": svc.definition.department, "applicant": principal.id,
            "applicant_kind": "enterprise" if principal.role == Role.ENTERPRISE else "citizen",
            "channel": channel, "status": m.IN_REVIEW, "instant": False, "escalated": False, "form": form,
            "materials": materials, "steps": [{"step": "submitted", "title": "提交申请", "at": now.isoformat(),
                                               "department": svc.definition.department, "outcome": "accepted"}],
            "licence_ids": [], "outcome_reason": None, "bundle_id": bundle_id, "limit_days": limit,
            "paused_days": 0, "paused_since": None,
            "trips_saved": svc.definition.hall_trips if channel == "online" else 0,
            "submitted_at": now, "due_at": self.calendar.due_at(now, limit), "completed_at": None,
            "handling_seconds": None, "next_timer_at": None, "updated_at": now,
        }

    async def submit(self, principal: Principal, tenant: str, body: Any, check: Check,
                     bundle_id: str | None = None) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise BadRequestData("the body is a JSON object {serviceCode, form, materials}")
        code = body.get("serviceCode")
        if not isinstance(code, str):
            raise FieldErrors([{"field": "serviceCode", "message": "required"}])
        svc = await self.service(tenant, code)
        await check("application.submit", Resource("application", tenant, owner=principal.id,
                                                   department=svc.definition.department))
        channel = body.get("channel", "online")
        if channel not in svc.definition.channels:
            raise FieldErrors([{"field": "channel", "message": f"{svc.code} is offered on {svc.definition.channels}"}])
        form = body.get("form")
        materials, errors = await self._validate_submission(svc, principal, tenant, form, body.get("materials"))
        if errors:
            raise FieldErrors(errors)
        assert isinstance(form, dict)  # form_errors refused anything else
        row = await self._start(svc, principal, tenant, form, materials, channel, bundle_id)
        return await self._after_change(row, svc, principal, submitted=True)

    def _start_notices(self, row: dict[str, Any], svc: Service) -> list[tuple[str, str]]:
        """The notices written with a new application: the receipt, and the outcome when the workflow has
        already decided (秒批) and no licence has to be issued first (its notice comes in between)."""
        notices = [self._receipt_notice(row, svc)]
        final = self._final_notice(row, svc)
        if final is not None and not (row["status"] == m.APPROVED and svc.definition.licence):
            notices.append(final)
        return notices

    async def _start(self, svc: Service, principal: Principal, tenant: str, form: dict[str, Any],
                     materials: list[dict[str, Any]], channel: str, bundle_id: str | None,
                     app_id: str | None = None) -> dict[str, Any]:
        now = clock.now()
        row = self._new_row(svc, principal, tenant, form, materials, channel, now, bundle_id, app_id)
        data = {"form": form, "deadline_at": row["due_at"].isoformat(), "application_id": row["id"],
                "service_code": svc.code}
        wf = self.workflow.start(svc.spec, data)
        new_tasks, _cancelled = self._reconcile(row, svc, wf, {}, now)
        blob = self.workflow.dump(wf)
        notifier = self._peer("notifier")
        if self._pg and (notifier is None or hasattr(notifier, "prepare")):
            await self._insert_pg(row, blob, new_tasks, wf.spec, notifier, svc)
            return row
        # One transaction: the application, its workflow state, its open tasks and the receipt notice.
        async with self.write() as conn:
            stored = await self._store_spec(conn, wf.spec)
            await conn.execute(m.applications.insert(), row)
            await conn.execute(m.workflows.insert(), {"application_id": row["id"], "version": 1, "state": blob,
                                                      "updated_at": now})
            if new_tasks:
                await conn.execute(m.tasks.insert(), new_tasks)
            written = []
            for subject, body in self._start_notices(row, svc):
                notice = await self._notify_in(conn, tenant, principal.id, subject, body)
                if notice is None:
                    break
                written.append(notice)
        if stored:
            self._stored_specs.add(stored)
        if written:
            if any(n.get("deliveries") for n in written):
                self._peer("notifier").wake()
            row["_notified"] = len(written)
        return row

    async def _insert_pg(self, row: dict[str, Any], blob: bytes, new_tasks: list[dict[str, Any]], spec: Any,
                         notifier: Any, svc: Service) -> None:
        """A new application on PostgreSQL in one statement: one round trip instead of BEGIN, four INSERTs and
        COMMIT. A single statement is atomic on its own (so it runs in autocommit), and PostgreSQL runs every
        data-modifying CTE whether the outer statement reads it or not. The SQL text depends only on the
        shape (how many tasks, spec or outbox rows), so asyncpg's prepared statement cache serves it."""
        entry = self.workflow.spec_entry(spec)
        now = row["updated_at"]
        params: list[Any] = []
        parts = [_pg_values(m.workflows, [{"application_id": row["id"], "version": 1, "state": blob,
                                           "updated_at": now}], params)]
        if new_tasks:
            parts.append(_pg_values(m.tasks, new_tasks, params))
        if entry.ref not in self._stored_specs:
            parts.append(_pg_values(m.workflow_specs, [{"ref": entry.ref, "doc": entry.doc, "created_at": now}],
                                    params) + " ON CONFLICT (ref) DO NOTHING")
        deliveries: list[Any] = []
        notices = self._start_notices(row, svc) if notifier is not None else []
        messages, outbox_rows = [], []
        for subject, body in notices:
            message, outbox_part, result = notifier.prepare(row["tenant"], row["applicant"], subject, body)
            messages.append(message)
            outbox_rows.extend(outbox_part)
            deliveries.extend(result["deliveries"])
        if messages:
            parts.append(_pg_values(notify_models.notifications, messages, params))
        if outbox_rows:
            parts.append(_pg_values(notify_models.outbox, outbox_rows, params))
        main = _pg_values(m.applications, [row], params)
        sql = "WITH " + ", ".join(f"w{i} AS ({part})" for i, part in enumerate(parts)) + " " + main
        await _pg_autocommit(self.db, sql, params)
        self._stored_specs.add(entry.ref)
        if deliveries:
            notifier.wake()
        if notices:
            row["_notified"] = len(notices)


_JSON_COLUMNS: dict[str, frozenset[str]] = {}


# asyncpg errors after which the connection is not reused (what SQLAlchemy's own error handling would do).
_PG_DISCONNECTS = (asyncpg.exceptions.PostgresConnectionError, asyncpg.exceptions.InterfaceError,
                   asyncpg.exceptions.OperatorInterventionError, OSError)


async def _pg_autocommit(db: AsyncEngine, sql: str, params: list[Any]) -> None:
    """One statement on PostgreSQL, committed on its own, on a pooled connection's asyncpg connection directly:
    SQLAlchemy's cursor layer and isolation-level switching cost more CPU than the statement itself. No
    transaction is opened (asyncpg runs a statement outside a block in autocommit), so the pool's reset on
    return has nothing to roll back. asyncpg's statement cache serves the prepared statement."""
    async with db.connect() as conn:
        driver: Any = (await conn.get_raw_connection()).driver_connection
        try:
            await driver.execute(sql, *params)
        except _PG_DISCONNECTS:
            await conn.invalidate()
            raise


def _pg_values(table: Any, rows: list[dict[str, Any]], params: list[Any]) -> str:
    """``INSERT INTO table (keys of rows[0]) VALUES ($n, …), …`` appending the values to `params` (asyncpg style:
    JSON columns as JSON text, like SQLAlchemy's asyncpg dialect sends them)."""
    json_cols = _JSON_COLUMNS.get(table.name)
    if json_cols is None:
        json_cols = _JSON_COLUMNS[table.name] = frozenset(c.name for c in table.c if isinstance(c.type, JSON))
    cols = list(rows[0])
    groups = []
    for r in rows:
        marks = []
        for c in cols:
            value = r[c]
            params.append(orjson.dumps(value).decode() if c in json_cols and value is not None else value)
            marks.append(f"${len(params)}")
        groups.append(f"({', '.join(marks)})")
    return f"INSERT INTO {table.name} ({', '.join(cols)}) VALUES {', '.join(groups)}"
