"""The service desk's workflow progression: task actions, 补正 (supplement), timers, and the
side effects of a committed change (licence, notices, event).

Every workflow step is: load the application and its serialized workflow, run the step in
SpiffWorkflow, reconcile the task rows with the workflow's ready user tasks, and write it all
in one transaction guarded by the workflow's version (optimistic lock: a concurrent step → 409)."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from cityos.core import clock
from cityos.core.clock import as_utc
from cityos.core.errors import Conflict, ResourceNotFound
from cityos.security.policy import Principal, Resource
from cityos.security.service import Forbidden
from cityos.services import models as m
from cityos.services.catalogue import Service
from cityos.services.deadlines import TIMER_LABELS, FiredTimer, fired_timers, freeze_timers, thaw_timers
from cityos.services.desk import CHANGED, TASK_OUTCOMES, Check, FieldErrors, form_errors
from cityos.services.uploads import UploadsDesk
from cityos.services.workflow import APPLICANT_LANE

log = logging.getLogger(__name__)


class ProgressionDesk(UploadsDesk):
    """Workflow steps on existing applications: reconcile, load/save, act, supplement, the timer sweep."""

    async def _publish(self, row: dict[str, Any]) -> None:
        await self.bus.publish(CHANGED, {"tenant": row["tenant"], "application": self._summary(row)})

    @staticmethod
    def _receipt_notice(row: dict[str, Any], svc: Service) -> tuple[str, str]:
        return f"已受理:{svc.definition.name}", f"您的申请已受理,受理号 {row['receipt']}。"

    @staticmethod
    def _final_notice(row: dict[str, Any], svc: Service) -> tuple[str, str] | None:
        name = svc.definition.name
        if row["status"] == m.APPROVED:
            return f"已办结:{name}", f"受理号 {row['receipt']} 已核准" + ("(秒批)" if row["instant"] else "") + "。"
        if row["status"] == m.REJECTED:
            return f"不予办理:{name}", f"受理号 {row['receipt']} 不予办理。理由:{row['outcome_reason'] or ''}"
        return None

    def _reconcile(self, row: dict[str, Any], svc: Service, wf: Any, open_tasks: dict[str, dict[str, Any]],
                   now: datetime, rejected: bool = False) -> tuple[list[dict[str, Any]], list[str]]:
        """Bring `row` (status, steps, timers) in line with `wf`; returns (task rows to insert, ids to cancel)."""
        ready = {str(t.id): t for t in self.workflow.ready_user_tasks(wf)}
        new_tasks = []
        for task_id, task in ready.items():
            if task_id in open_tasks:
                continue
            name = task.task_spec.name
            meta = svc.info.tasks.get(name, {"title": name, "lane": task.task_spec.lane or row["department"]})
            new_tasks.append({"id": task_id, "tenant": row["tenant"], "application_id": row["id"], "name": name,
                              "title": meta["title"], "department": meta["lane"], "status": "open", "outcome": None,
                              "comment": None, "actor": None, "created_at": now, "due_at": row["due_at"],
                              "completed_at": None})
        cancelled = [tid for tid in open_tasks if tid not in ready]
        steps = list(row["steps"])
        recorded = {s["step"] for s in steps if s.get("outcome") in ("escalated", "decided")}
        completed = self.workflow.completed(wf)
        for task in completed:
            name = task.task_spec.name
            if name.endswith("_escalate") and name not in recorded:
                recorded.add(name)
                steps.append({"step": name, "title": "超时督办", "at": now.isoformat(),
                              "department": task.task_spec.lane or row["department"], "outcome": "escalated"})
                row["escalated"] = True
            elif type(task.task_spec).__name__ == "BusinessRuleTask" and name not in recorded:
                recorded.add(name)
                instant = bool(task.data.get("instant"))
                steps.append({"step": name, "title": "秒批规则", "at": now.isoformat(),
                              "department": task.task_spec.lane or row["department"], "outcome": "decided",
                              "comment": str(task.data.get("instant_reason", ""))[:200], "instant": instant})
        row["steps"] = steps
        if wf.is_completed():
            row["status"] = m.REJECTED if rejected else m.APPROVED
            row["completed_at"] = now
            row["handling_seconds"] = (now - as_utc(row["submitted_at"])).total_seconds()
            row["next_timer_at"] = None
            if not rejected and not row["instant"] and \
                    any(t.task_spec.name == "auto_approve" for t in completed):
                row["instant"] = True
                steps.append({"step": "auto_approve", "title": "自动核准(秒批)", "at": now.isoformat(),
                              "department": row["department"], "outcome": "approved"})
            if row["paused_since"] is not None:
                self._resume(row, now)
        else:
            lanes = {t.task_spec.lane for t in ready.values()}
            row["status"] = m.SUPPLEMENT if APPLICANT_LANE in lanes else m.IN_REVIEW
            if row["status"] == m.SUPPLEMENT and row["paused_since"] is None:
                row["paused_since"] = now
            nxt = self.workflow.next_timer(wf)
            row["next_timer_at"] = nxt
        row["updated_at"] = now
        return new_tasks, cancelled

    def _resume(self, row: dict[str, Any], now: datetime) -> None:
        since = as_utc(row["paused_since"])
        row["paused_days"] = int(row["paused_days"]) + self.calendar.working_days_between(
            self.calendar.local_date(since), self.calendar.local_date(now))
        row["paused_since"] = None
        row["due_at"] = self.calendar.due_at(as_utc(row["submitted_at"]), int(row["limit_days"]),
                                             int(row["paused_days"]))

    async def _load(self, tenant: str, app_id: str) -> tuple[dict[str, Any], dict[str, dict[str, Any]], int,
                                                             dict[str, Any]]:
        """The application row, its open tasks, the workflow version and the decoded state (spec loaded)."""
        async with self._read() as conn:
            row = (await conn.execute(select(m.applications).where(
                m.applications.c.id == app_id, m.applications.c.tenant == tenant))).mappings().first()
            if row is None:
                raise ResourceNotFound(f"no application {app_id!r}")
            wf_row = (await conn.execute(select(m.workflows.c.version, m.workflows.c.state).where(
                m.workflows.c.application_id == app_id))).first()
            open_rows = (await conn.execute(select(m.tasks).where(
                m.tasks.c.application_id == app_id, m.tasks.c.status == "open"))).mappings().all()
            if wf_row is None:
                raise Conflict(f"application {app_id} has no workflow state")
            state = self.workflow.decode(bytes(wf_row[1]))
            ref = self.workflow.needed_spec(state)
            if ref is not None and not self.workflow.has_spec(ref):
                doc = (await conn.execute(select(m.workflow_specs.c.doc).where(
                    m.workflow_specs.c.ref == ref))).scalar_one_or_none()
                if doc is None:
                    raise Conflict(f"application {app_id}: its process definition {ref[:12]}… is missing")
                self.workflow.add_spec_doc(ref, bytes(doc))
                self._stored_specs.add(ref)
        return dict(row), {r["id"]: dict(r) for r in open_rows}, int(wf_row[0]), state

    async def _save(self, row: dict[str, Any], wf: Any, version: int, new_tasks: list[dict[str, Any]],
                    cancelled: list[str], completed: list[tuple[str, dict[str, Any]]]) -> None:
        blob = self.workflow.dump(wf)
        now = row["updated_at"]
        async with self.write() as conn:
            stored = await self._store_spec(conn, wf.spec)
            done = await conn.execute(update(m.workflows).where(
                m.workflows.c.application_id == row["id"], m.workflows.c.version == version).values(
                version=version + 1, state=blob, updated_at=now))
            if done.rowcount != 1:
                raise Conflict("the application changed meanwhile; reload and try again")
            for task_id, values in completed:
                result = await conn.execute(update(m.tasks).where(
                    m.tasks.c.id == task_id, m.tasks.c.status == "open").values(**values))
                if result.rowcount != 1:
                    raise Conflict(f"task {task_id} is no longer open")
            if cancelled:
                await conn.execute(update(m.tasks).where(m.tasks.c.id.in_(cancelled), m.tasks.c.status == "open")
                                   .values(status="cancelled", completed_at=now))
            if new_tasks:
                await conn.execute(m.tasks.insert(), new_tasks)
            values = {k: row[k] for k in ("status", "instant", "escalated", "form", "materials", "steps",
                                           "licence_ids", "outcome_reason", "paused_days", "paused_since",
                                           "due_at", "completed_at", "handling_seconds", "next_timer_at",
                                           "updated_at")}
            await conn.execute(update(m.applications).where(m.applications.c.id == row["id"]).values(**values))
            await conn.execute(update(m.tasks).where(m.tasks.c.application_id == row["id"],
                                                     m.tasks.c.status == "open").values(due_at=row["due_at"]))
            wake = await self._record_timer_events(conn, row, wf)
        if stored:
            self._stored_specs.add(stored)
        if wake:
            self._peer("notifier").wake()

    async def _after_change(self, row: dict[str, Any], svc: Service, principal: Principal | None,
                            submitted: bool = False) -> dict[str, Any]:
        """Side effects after a committed change: licence, notifications, event."""
        tenant, applicant = row["tenant"], row["applicant"]
        notified = int(row.pop("_notified", 0))  # notices already written with the new application
        if submitted and notified < 1:
            await self._notify(tenant, applicant, *self._receipt_notice(row, svc))
        if row["status"] == m.APPROVED and svc.definition.licence and not row["licence_ids"]:
            await self._issue_licence(row, svc)
        final = self._final_notice(row, svc)
        if final is not None and not (submitted and notified >= 2):
            await self._notify(tenant, applicant, *final)
        await self._publish(row)
        return self.view(row, svc)

    async def _issue_licence(self, row: dict[str, Any], svc: Service) -> None:
        licences = self._peer("licences")
        spec = svc.definition.licence
        if licences is None or spec is None:
            return
        form = row["form"]
        subject = {k: _licence_value(v) for k, v in form.items() if spec.subject is None or k in spec.subject}
        try:
            doc = await licences.issue(row["tenant"], row["applicant"], spec.type, subject,
                                       svc.definition.department, row["id"])
        except Exception:
            log.exception("licence issuance failed for application %s", row["id"])
            return
        licence_id = doc.get("id") if isinstance(doc, dict) else getattr(doc, "id", None)
        if not licence_id:
            return
        row["licence_ids"] = [*row["licence_ids"], licence_id]
        row["steps"] = [*row["steps"], {"step": "licence", "title": "电子证照签发", "at": clock.now().isoformat(),
                                        "department": svc.definition.department, "outcome": "issued"}]
        async with self.write() as conn:
            await conn.execute(update(m.applications).where(m.applications.c.id == row["id"]).values(
                licence_ids=row["licence_ids"], steps=row["steps"]))
        await self._notify(row["tenant"], row["applicant"], f"电子证照已签发:{svc.definition.name}",
                           f"证照编号 {licence_id} 已存入您的卡包。")

    async def act(self, principal: Principal, tenant: str, task_id: str, action: str, body: Any,
                  check: Check) -> dict[str, Any]:
        if action not in TASK_OUTCOMES:
            raise ResourceNotFound(f"no task action {action!r}")
        task = await self._task_row(tenant, task_id)
        await check("task.act", Resource("task", tenant, id=task_id, department=task["department"]))
        if task["department"] == APPLICANT_LANE:
            raise Forbidden("this task is the applicant's (补正); they answer it through /supplement")
        if task["status"] != "open":
            raise Conflict(f"task {task_id} is {task['status']}")
        body = body if isinstance(body, dict) else {}
        reason = body.get("reason") if action != "approve" else body.get("comment")
        if reason is not None and not isinstance(reason, str):
            raise FieldErrors([{"field": "reason" if action != "approve" else "comment", "message": "must be text"}])
        reason = (reason or "").strip()[:2000]
        if action != "approve" and not reason:
            raise FieldErrors([{"field": "reason", "message": f"{action} needs a reason"}])
        outcome = TASK_OUTCOMES[action]
        row, open_tasks, version, state = await self._load(tenant, task["application_id"])
        svc = await self.service(tenant, row["service_code"])
        wf = self.workflow.restore(state)
        now = clock.now()
        ready = {str(t.id) for t in self.workflow.ready_user_tasks(wf)}
        if task_id not in ready:
            raise Conflict(f"task {task_id} is not ready in the workflow")
        self.workflow.complete(wf, task_id, {f"{task['name']}_decision": outcome, "decision": outcome})
        if outcome == "reject":
            row["outcome_reason"] = reason
        step = {"step": task["name"], "title": task["title"], "at": now.isoformat(), "department": task["department"],
                "outcome": outcome}
        if reason:
            step["comment"] = reason
        row["steps"] = [*row["steps"], step]
        open_tasks.pop(task_id, None)
        new_tasks, cancelled = self._reconcile(row, svc, wf, open_tasks, now, rejected=outcome == "reject")
        if row["status"] == m.SUPPLEMENT:  # 补正: the clock stops on every branch until the applicant answers
            freeze_timers(wf, as_utc(row["due_at"]))
            row["next_timer_at"] = None
        await self._save(row, wf, version, new_tasks, cancelled, [(task_id, {
            "status": "completed", "outcome": outcome, "comment": reason or None, "actor": principal.id,
            "completed_at": now})])
        if outcome == "supplement":
            await self._notify(tenant, row["applicant"], f"请补正材料:{svc.definition.name}",
                               f"受理号 {row['receipt']} 需要补正:{reason}")
        return await self._after_change(row, svc, principal)

    async def supplement(self, principal: Principal, tenant: str, app_id: str, body: Any,
                         check: Check) -> dict[str, Any]:
        row, open_tasks, version, state = await self._load(tenant, app_id)
        await check("application.submit", Resource("application", tenant, id=app_id, owner=row["applicant"],
                                                   department=row["department"]))
        if row["status"] != m.SUPPLEMENT:
            raise Conflict(f"application {app_id} is {row['status']}; no supplement was asked for")
        body = body if isinstance(body, dict) else {}
        patch = body.get("form", {})
        if not isinstance(patch, dict):
            raise FieldErrors([{"field": "form", "message": "must be an object"}])
        svc = await self.service(tenant, row["service_code"])
        form = {**row["form"], **patch}
        errors = form_errors(svc.validator, form)
        given = body.get("materials", [])
        new_materials, material_errors = await self._materials(svc, principal, tenant, given)
        # Only the materials given now are re-checked; the rest stay as submitted.
        material_errors = [e for e in material_errors if not e["message"].startswith("missing required")]
        if errors or material_errors:
            raise FieldErrors(errors + material_errors)
        replaced = {x["name"] for x in new_materials}
        row["form"] = form
        row["materials"] = [x for x in row["materials"] if x["name"] not in replaced] + new_materials
        wf = self.workflow.restore(state)
        now = clock.now()
        paused_before = int(row["paused_days"])
        self._resume(row, now)
        # Every branch's timers move on by the paused working days, not only the asking branch's.
        thaw_timers(wf, self.calendar, int(row["paused_days"]) - paused_before, row["due_at"])
        applicant_tasks = [t for t in self.workflow.ready_user_tasks(wf) if t.task_spec.lane == APPLICANT_LANE]
        completed = []
        for task in applicant_tasks:
            self.workflow.complete(wf, str(task.id), {"form": form, "deadline_at": row["due_at"].isoformat()})
            open_tasks.pop(str(task.id), None)
            completed.append((str(task.id), {"status": "completed", "outcome": "supplied", "actor": principal.id,
                                             "completed_at": now}))
        row["steps"] = [*row["steps"], {"step": "supplement", "title": "申请人补正", "at": now.isoformat(),
                                        "department": APPLICANT_LANE, "outcome": "supplied"}]
        new_tasks, cancelled = self._reconcile(row, svc, wf, open_tasks, now)
        await self._save(row, wf, version, new_tasks, cancelled, completed)
        return await self._after_change(row, svc, principal)

    async def sweep(self, now: datetime | None = None) -> int:
        """Fire due BPMN timers (escalation on the deadline); returns how many applications moved."""
        now = now or clock.now()
        async with self._read() as conn:
            # Not paused cases (补正): their clock stands still, and so do their timers.
            rows = (await conn.execute(select(m.applications.c.tenant, m.applications.c.id).where(
                m.applications.c.next_timer_at <= now, m.applications.c.status == m.IN_REVIEW)
                .order_by(m.applications.c.next_timer_at).limit(500))).all()
        moved = 0
        for tenant, app_id in rows:
            try:
                row, open_tasks, version, state = await self._load(tenant, app_id)
                svc = await self.service(tenant, row["service_code"])
                wf = self.workflow.restore(state)
                self.workflow.advance(wf)
                before = len(row["steps"])
                new_tasks, cancelled = self._reconcile(row, svc, wf, open_tasks, now)
                await self._save(row, wf, version, new_tasks, cancelled, [])
            except Conflict:
                continue
            except Exception:
                log.exception("timer sweep failed for application %s", app_id)
                continue
            moved += 1
            if len(row["steps"]) != before:
                await self.bus.publish("services.application.escalated",
                                       {"tenant": tenant, "application": self._summary(row)})
                await self._publish(row)
        return moved

    async def _record_timer_events(self, conn: AsyncConnection, row: dict[str, Any], wf: Any) -> bool:
        """The step's newly fired timers (warning / escalation / overdue): one `svc_timer_events` row each
        and a notice to the responsible department's staff and to the supervisors, in the step's own
        transaction. A firing is known by its timer task id, so it is told once: not again on the next
        sweep tick, by a racing sweeper (its step conflicts and rolls back) or after a restart.
        Returns whether e-mail / SMS deliveries were queued (the caller wakes the notifier)."""
        fired = fired_timers(wf)
        if not fired:
            return False
        e = m.timer_events
        known = set((await conn.execute(select(e.c.event_id).where(e.c.application_id == row["id"]))).scalars())
        fresh = [f for f in fired if f.event_id not in known]
        if not fresh:
            return False
        notifier = self._peer("notifier")
        svc = self.services.get(row["service_code"])
        name = svc.definition.name if svc else row["service_code"]
        wake = False
        for event in fresh:
            department = event.lane if event.lane and event.lane != APPLICANT_LANE else row["department"]
            notified: list[str] = []
            if notifier is not None and hasattr(notifier, "department_recipients"):
                for who in await notifier.department_recipients(conn, row["tenant"], department):
                    subject, body, link = self._timer_notice(row, name, event, department, who.role)
                    result = await notifier.notify(row["tenant"], who.user_id, subject, body, email=who.email,
                                                   phone=who.phone, link=link, conn=conn)
                    wake = wake or bool(result.get("deliveries"))
                    notified.append(who.user_id)
            await conn.execute(e.insert().values(
                application_id=row["id"], event_id=event.event_id, tenant=row["tenant"], kind=event.kind,
                name=event.name[:128], department=department, due_at=event.due_at, fired_at=row["updated_at"],
                notified=notified))
        return wake

    def _timer_notice(self, row: dict[str, Any], name: str, event: FiredTimer, department: str,
                      role: str) -> tuple[str, str, str]:
        label = TIMER_LABELS.get(event.kind, "超时督办")
        due = event.due_at or as_utc(row["due_at"])
        due_text = due.astimezone(self.calendar.tz).strftime("%Y-%m-%d %H:%M")
        what = f"{name}「{event.title}」(受理号 {row['receipt']},承办部门 {department})"
        if event.kind == "warning":
            text = f"{what}临近承诺时限 {due_text},请及时办理。"
        else:
            text = f"{what}已超过承诺时限 {due_text},请尽快办理。"
        if role == "supervisor":
            return f"督办提醒·{label}:{name}", f"{text}请督促{department}办结。", "/supervision"
        return f"{label}:{name}", text, "/workbench"


def _licence_value(value: Any) -> Any:
    """Signed licences take no floating-point numbers (canonical JSON): integral → int, else text."""
    if isinstance(value, float):
        return int(value) if value.is_integer() else repr(value)
    if isinstance(value, dict):
        return {k: _licence_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_licence_value(v) for v in value]
    return value
