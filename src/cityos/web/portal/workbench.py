"""`/workbench`: the officials' task inbox (department scope) and the task view.

Each task shows the applicant's form, the materials (download), the e-licences the platform
verified (a clear "verified ✓" badge), the time left (green / yellow / red), and the three
decisions: approve, reject (reason required), request a supplement (reason required).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from nicegui import ui

from cityos.web.auth import Session
from cityos.web.portal import common, labels
from cityos.web.portal.common import (
    STAFF_ROLES,
    call,
    deadline_badge,
    first,
    frame,
    get,
    items_of,
    problem_text,
    status_chip,
    when,
)
from cityos.web.portal.schema import fields_from_schema


def _task_id(task: dict[str, Any]) -> str:
    return str(first(task, "id", "taskId", default=""))


@ui.page("/workbench")
async def workbench_inbox() -> Any:
    session = await common.login(STAFF_ROLES)
    if not isinstance(session, Session):
        return session
    user = session.user or {}
    departments = " · ".join(labels.department(d) for d in first(user, "departments", default=[]) or []) \
        or labels.department(first(user, "department", default=""))
    with frame(session, "政务服务工作台 Workbench", active="/workbench", citizen=False):
        with ui.row().classes("items-end gap-4 w-full"):
            ui.label("待办任务 Task inbox").classes("text-2xl gov-title")
            ui.label(f"部门 Department: {departments}").classes("text-grey-8 t-department")
        body = await get("/api/services/tasks")
        tasks = [t for t in items_of(body, "tasks") if isinstance(t, dict)]
        names = await _service_names()
        for task in tasks:
            task.setdefault("serviceName", names.get(str(task.get("serviceCode")), task.get("serviceCode")))
        if not tasks:
            ui.label("暂无待办 No open tasks").classes("text-grey-8 t-empty")
        with ui.column().classes("w-full gap-2"):
            for task in tasks:
                _task_row(task)


def _task_row(task: dict[str, Any]) -> None:
    tid = _task_id(task)
    card = ui.card().classes(f"gov-card w-full p-4 cursor-pointer task-row task-{tid}") \
        .on("click", lambda t=tid: ui.navigate.to(f"/workbench/task/{quote(t)}"))
    with card, ui.row().classes("items-center w-full gap-4"):
        ui.icon("assignment", color="primary", size="md")
        with ui.column().classes("gap-0"):
            service = first(task, "serviceName", "service", "serviceCode", default="")
            step = first(task, "title", "step", "name", default="")
            ui.label(f"{service} · {step}").classes("text-lg font-bold gov-title")
            created = when(first(task, "createdAt", "submittedAt", "created_at"))
            ui.label(f"回执 Receipt {first(task, 'receipt', default='')} · 申请人 Applicant "
                     f"{first(task, 'applicantName', 'applicant', default='')} · "
                     f"{labels.department(first(task, 'department', default=''))} · 收件 received {created}") \
                .classes("text-grey-8 text-sm")
        ui.space()
        deadline_badge(first(task, "deadline"), compact=True)
        ui.button("办理 Open", on_click=lambda t=tid: ui.navigate.to(f"/workbench/task/{quote(t)}")) \
            .props("no-caps").classes("t-open")


async def _service_names() -> dict[str, str]:
    reply = await call("GET", "/api/services/catalogue")
    return {str(s.get("code")): str(s.get("name")) for s in items_of(reply.body) if isinstance(s, dict)} \
        if reply.ok else {}


def _form_labels(schema: Any) -> dict[str, str]:
    """field → title and 'field=value' → option label, from the service's form schema."""
    out: dict[str, str] = {}
    for f in fields_from_schema(schema):
        out[f.name] = f.label
        out.update({f"{f.name}={value}": text for value, text in f.options})
    return out


def _verified(entry: dict[str, Any]) -> bool | None:
    value = first(entry, "verified", "valid")
    if isinstance(value, dict):
        value = first(value, "valid", "verified")
    return None if value is None else bool(value)


@ui.page("/workbench/task/{task_id}")
async def workbench_task(task_id: str) -> Any:
    session = await common.login(STAFF_ROLES)
    if not isinstance(session, Session):
        return session
    with frame(session, "审批 Review task", active="/workbench", citizen=False):
        task = await get(f"/api/services/tasks/{quote(task_id)}")
        if not isinstance(task, dict):
            ui.button("返回 Back", on_click=lambda: ui.navigate.to("/workbench"))
            return
        application = first(task, "application", default={}) or {}
        names = _form_labels(first(task, "formSchema", default=None))
        with ui.card().classes("gov-card w-full p-6"):
            with ui.row().classes("items-center gap-4 w-full"):
                ui.label(f"{first(task, 'serviceName', 'serviceCode', default='')}"
                         f" · {first(task, 'title', 'step', default='')}").classes("text-2xl gov-title")
                status_chip(first(task, "status", default=None) or first(application, "status"))
                ui.space()
                deadline_badge(first(task, "deadline", default=None) or first(application, "deadline"))
            ui.label(f"回执 Receipt {first(task, 'receipt', default=None) or first(application, 'receipt', default='')}"
                     f" · 申请人 Applicant {first(task, 'applicantName', 'applicant', default='')}"
                     f" · 部门 Department {labels.department(first(task, 'department', default=''))}") \
                .classes("text-grey-8")
            if first(task, "status") != "open":
                ui.label(f"此任务已办结 This task is closed ({first(task, 'outcome', default='')})") \
                    .classes("text-warning font-bold")

        with ui.card().classes("gov-card w-full p-6 t-form"):
            ui.label("申请表 Application form").classes("section-title")
            form = first(task, "form", default=None) or first(application, "form", default={}) or {}
            with ui.grid(columns="auto 1fr").classes("gap-x-6 gap-y-1"):
                for key, value in form.items():
                    ui.label(names.get(key, key)).classes("kv-key")
                    shown = names.get(f"{key}={value}", value)
                    if isinstance(shown, bool):
                        shown = "是 Yes" if shown else "否 No"
                    ui.label(str(shown)).classes(f"kv-value form-{key}")

        await _materials_card(task, application)

        with ui.card().classes("gov-card w-full p-6 t-actions"):
            ui.label("审批意见 Decision").classes("section-title")
            comment = ui.textarea("意见 / 理由 Comment / reason").props("outlined").classes("w-full t-comment")
            error = ui.label().classes("text-negative t-action-error")

            async def decide(verb: str) -> None:
                text = (comment.value or "").strip()
                error.text = ""
                if verb in ("reject", "request-supplement") and not text:
                    error.text = "请填写理由 A reason is required"
                    comment.props(add="error")
                    return
                payload = {"comment": text} if verb == "approve" else {"reason": text, "comment": text}
                reply = await call("POST", f"/api/services/tasks/{quote(task_id)}/{verb}", json=payload)
                if not reply.ok:
                    error.text = problem_text(reply.body, reply.status)
                    return
                done = {"approve": "已通过 Approved", "reject": "已驳回 Rejected",
                        "request-supplement": "已要求补正 Supplement requested"}[verb]
                ui.notify(done, type="positive")
                ui.navigate.to("/workbench")

            with ui.row().classes("gap-3"):
                ui.button("通过 Approve", icon="check", color="positive", on_click=lambda: decide("approve")) \
                    .props("no-caps size=lg").classes("t-approve")
                ui.button("要求补正 Request supplement", icon="undo", color="warning",
                          on_click=lambda: decide("request-supplement")).props("no-caps size=lg") \
                    .classes("t-supplement")
                ui.button("驳回 Reject", icon="close", color="negative", on_click=lambda: decide("reject")) \
                    .props("no-caps size=lg").classes("t-reject")


async def _materials_card(task: dict[str, Any], application: dict[str, Any]) -> None:
    materials = [m for m in (first(task, "materials", default=None) or first(application, "materials", default=[])
                             or []) if isinstance(m, dict)]
    licences = [x for x in (first(task, "licences", "verifiedLicences", default=None) or []) if isinstance(x, dict)]
    with ui.card().classes("gov-card w-full p-6 t-materials"):
        ui.label("申请材料 Materials").classes("section-title")
        if not materials and not licences:
            ui.label("无材料 No materials").classes("text-grey-8")
        for material in materials:
            with ui.row().classes("items-center gap-3 material-row"):
                ui.icon("description", color="primary")
                ui.label(str(first(material, "title", "name", default=""))).classes("font-medium")
                upload_id = first(material, "uploadId")
                licence_id = first(material, "licenceId")
                if upload_id:
                    extension = {"application/pdf": ".pdf", "image/png": ".png", "image/jpeg": ".jpg"}.get(
                        str(first(material, "contentType", default="")), "")
                    filename = str(first(material, "filename", default=None) or
                                   f"{first(material, 'name', default='material')}{extension}")
                    ui.button(f"下载 Download {filename}", icon="download",
                              on_click=lambda u=upload_id, f=filename: _download(u, f)) \
                        .props("flat dense no-caps").classes("t-download")
                if licence_id:
                    match = next((x for x in licences if str(first(x, "id", "licenceId")) == str(licence_id)),
                                 material)
                    _licence_badge(match, str(licence_id))
        for licence in licences:
            lid = str(first(licence, "id", "licenceId", default=""))
            if any(str(first(m, "licenceId", default="")) == lid for m in materials):
                continue
            with ui.row().classes("items-center gap-3 material-row"):
                ui.icon("badge", color="primary")
                ui.label(str(first(licence, "name", "type", default=lid))).classes("font-medium")
                _licence_badge(licence, lid)


def _licence_badge(entry: dict[str, Any], licence_id: str) -> None:
    verified = _verified(entry)
    kind = labels.licence_type(first(entry, "licenceType", "type", default=""))
    ui.label(f"电子证照 E-licence · {kind} · {licence_id}").classes("text-grey-8")
    if verified:
        ui.label("已核验 verified ✓").classes("verified-badge t-verified")
    elif verified is False:
        reason = first(entry, "reason", "detail", default="")
        ui.label(f"核验失败 not verified ✗ {reason}").classes("unverified-badge t-unverified")
    else:
        ui.label("未核验 unchecked").classes("text-grey-8")
    ui.link("详情 details", f"/verify?id={quote(licence_id)}").classes("text-sm")


async def _download(upload_id: str, filename: str) -> None:
    reply = await call("GET", f"/api/services/uploads/{quote(upload_id)}")
    if not reply.ok:
        ui.notify(problem_text(reply.body, reply.status), type="negative")
        return
    body = reply.body
    data = body if isinstance(body, bytes) else (body.encode() if isinstance(body, str) else str(body).encode())
    ui.download.content(data, filename)
