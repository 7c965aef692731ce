"""`/portal`: the citizens' and companies' one-stop service portal (一网通办).

Search the catalogue, read a guide, apply (schema form + uploads or e-licences from the wallet),
track applications, answer supplement requests, rate, and the e-licence wallet with QR codes.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from nicegui import ui

from cityos.security.masking import mask_string
from cityos.web.auth import Session
from cityos.web.portal import common, labels
from cityos.web.portal.bundle import BUNDLE_BADGE, bundle_card
from cityos.web.portal.common import call, deadline_badge, first, frame, get, items_of, problem_text, status_chip, when
from cityos.web.portal.forms import SchemaForm

LIFE_EVENTS = labels.LIFE_EVENTS

OUTCOMES = {"approve": "通过 approved", "reject": "驳回 rejected", "supplement": "要求补正 supplement requested",
            "supplied": "已补正 supplied", "submitted": "已提交 submitted", "instant": "秒批 instant approval",
            "accepted": "已受理 accepted", "issued": "已出证 issued"}

AUDIENCES = {"citizen": "个人 Citizens", "enterprise": "法人 Companies"}


def _guide_fields(guide: dict[str, Any]) -> list[tuple[str, Any]]:
    limit = first(guide, "timeLimitDays", "time_limit_days", "limitDays", "timeLimit")
    fees = first(guide, "fees", "fee", default="")
    if isinstance(fees, list):
        fees = "; ".join(str(first(f, "name", "item", default=f)) + (f" {first(f, 'amount', default='')}"
                                                                   if isinstance(f, dict) else "")
                         for f in fees) or "免费 Free"
    elif isinstance(fees, int | float):
        fees = "免费 Free" if fees == 0 else f"¥{fees}"
    channels = first(guide, "channels", default=[])
    if isinstance(channels, list):
        channels = " · ".join(labels.value(c) for c in channels)
    return [
        ("事项编码 Code", first(guide, "code")),
        ("实施部门 Department", labels.department(first(guide, "departmentName", "department"))),
        ("并联部门 Joint departments", " · ".join(labels.department(d) for d in
                                                  (first(guide, "departments", default=[]) or [])[1:]) or None),
        ("设定依据 Legal basis", first(guide, "legalBasis", "legal_basis")),
        ("承诺时限 Time limit", f"{limit} 个工作日 working days" if limit is not None else None),
        ("收费 Fees", fees or "免费 Free"),
        ("办理渠道 Channels", channels),
        ("服务对象 Audience", " · ".join(labels.value(a) for a in first(guide, "audience", default=[]) or [])),
    ]


def _is_instant(guide: dict[str, Any]) -> bool:
    return bool(first(guide, "instant", "instantApproval", "instant_approval", default=False))


def _materials(guide: dict[str, Any]) -> list[dict[str, Any]]:
    return [m if isinstance(m, dict) else {"name": str(m)} for m in first(guide, "materials", default=[]) or []]


def _material_title(material: dict[str, Any]) -> str:
    return str(first(material, "title", "name", default="material"))


def _licence_types(material: dict[str, Any]) -> list[str]:
    kinds = first(material, "licenceTypes", "licence_types", "eLicenceTypes", "licenceType", default=[])
    return [kinds] if isinstance(kinds, str) else list(kinds or [])


def _kv(rows: list[tuple[str, Any]]) -> None:
    with ui.grid(columns="auto 1fr").classes("gap-x-6 gap-y-1 w-full"):
        for key, value in rows:
            if value in (None, "", []):
                continue
            ui.label(key).classes("kv-key")
            ui.label(str(value)).classes("kv-value")


async def service_names() -> dict[str, str]:
    """code → name of every service in the catalogue (list answers carry only the code)."""
    reply = await call("GET", "/api/services/catalogue")
    return {str(s.get("code")): str(s.get("name")) for s in items_of(reply.body) if isinstance(s, dict)} \
        if reply.ok else {}


# ---------------------------------------------------------------------------------- search


@ui.page("/portal")
async def portal_home(q: str = "", lifeEvent: str = "", audience: str = "citizen") -> Any:
    return await _search_page(q, lifeEvent, audience)


@ui.page("/portal/services")
async def portal_services(q: str = "", lifeEvent: str = "", audience: str = "citizen") -> Any:
    return await _search_page(q, lifeEvent, audience)


async def _search_page(q: str, lifeEvent: str, audience: str) -> Any:
    session = await common.login()
    if not isinstance(session, Session):
        return session
    if session.role == "enterprise" and audience == "citizen":
        audience = "enterprise"
    state = {"q": q, "lifeEvent": lifeEvent, "audience": audience if audience in AUDIENCES else "citizen"}

    with frame(session, "办事服务 Services", active="/portal/services"):
        with ui.card().classes("gov-card w-full p-6"):
            ui.label("一网通办 One-stop services").classes("text-2xl gov-title")
            ui.label("一次登录、全网通办：搜索事项，查看办事指南，在线申请。 "
                     "Sign in once: find a service, read its guide, apply online.").classes("text-grey-8")
            with ui.row().classes("w-full items-end gap-4 mt-2"):
                search = ui.input("搜索事项 Search services", value=q, placeholder="例如 e.g. 企业开办 company") \
                    .props("outlined clearable").classes("grow t-search")
                ui.select(LIFE_EVENTS, label="人生事件 Life event", value=lifeEvent if lifeEvent in LIFE_EVENTS else "",
                          on_change=lambda e: update(lifeEvent=e.value or "")) \
                    .props("outlined").classes("w-64 t-life-event")
                ui.toggle(AUDIENCES, value=state["audience"],
                          on_change=lambda e: update(audience=e.value)) \
                    .classes("t-audience")
                ui.button("搜索 Search", icon="search",
                          on_click=lambda: update(q=search.value or "")) \
                    .classes("t-search-go")
            search.on("keydown.enter", lambda: update(q=search.value or ""))

        def update(**changes: str) -> None:
            state.update(changes)
            results.refresh()

        @ui.refreshable
        async def results() -> None:
            params = {k: v for k, v in state.items() if v}
            body = await get("/api/services/catalogue", params=params)
            services = items_of(body, "services")
            bundles = [x for x in (body.get("bundles") if isinstance(body, dict) else None) or []
                       if isinstance(x, dict)]
            if bundles:
                names = {str(s.get("code")): str(s.get("name")) for s in services if isinstance(s, dict)}
                if any(str(c) not in names for b in bundles for c in b.get("services") or []):
                    names = await service_names()
                ui.label(f"{BUNDLE_BADGE} · {len(bundles)} 项").classes("section-title t-bundles")
                with ui.grid(columns=2).classes("w-full gap-4"):
                    for bundle in bundles:
                        bundle_card(bundle, names)
            ui.label(f"共 {len(services)} 项服务 {len(services)} services").classes("section-title")
            if not services:
                ui.label("没有找到匹配的事项 No matching service").classes("text-grey-8")
            with ui.grid(columns=2).classes("w-full gap-4"):
                for service in services:
                    _service_card(service)

        await results()


def _service_card(service: dict[str, Any]) -> None:
    code = str(first(service, "code", "id", default=""))
    with ui.card().classes(f"gov-card p-4 service-card service-{code}"):
        with ui.row().classes("items-center gap-2 w-full"):
            ui.label(str(first(service, "name", "title", default=code))).classes("text-lg font-bold gov-title")
            if _is_instant(service):
                ui.badge("秒批 Instant", color="red").classes("text-sm")
        limit = first(service, "timeLimitDays", "time_limit_days", "limitDays")
        ui.label(f"{labels.department(first(service, 'departmentName', 'department', default=''))}"
                 f"{f' · 时限 {limit} 个工作日 {limit} working days' if limit is not None else ''}") \
            .classes("text-grey-8 text-sm")
        summary = first(service, "summary", "description")
        if summary:
            ui.label(str(summary)).classes("text-sm")
        with ui.row().classes("gap-2 mt-1"):
            ui.button("办事指南 Guide", icon="menu_book",
                      on_click=lambda c=code: ui.navigate.to(f"/portal/service/{quote(c)}")) \
                .props("outline no-caps").classes("t-guide")
            ui.button("在线办理 Apply", icon="edit_document",
                      on_click=lambda c=code: ui.navigate.to(f"/portal/apply/{quote(c)}")) \
                .props("no-caps").classes("t-apply")


# ---------------------------------------------------------------------------------- guide


async def _single_service(code: str) -> dict[str, Any] | None:
    """A service's catalogue entry; None (with the page sent elsewhere or told) for a bundle or an unknown code."""
    guide = await get(f"/api/services/catalogue/{quote(code)}")
    if isinstance(guide, dict) and first(guide, "bundle", default=False):
        ui.navigate.to(f"/portal/bundle/{quote(code)}")
        return None
    if not isinstance(guide, dict):
        ui.label("事项不存在 Unknown service").classes("text-negative")
        return None
    return guide


@ui.page("/portal/service/{code}")
async def portal_guide(code: str) -> Any:
    session = await common.login()
    if not isinstance(session, Session):
        return session
    with frame(session, "办事指南 Guide", active="/portal/services"):
        guide = await _single_service(code)
        if guide is None:
            return
        with ui.card().classes("gov-card w-full p-6"):
            with ui.row().classes("items-center gap-3"):
                ui.label(str(first(guide, "name", default=code))).classes("text-2xl gov-title")
                if _is_instant(guide):
                    ui.badge("秒批秒办 Instant approval", color="red").classes("text-sm")
            ui.label("办事指南 Service guide").classes("section-title mt-2")
            _kv(_guide_fields(guide))
            summary = first(guide, "summary", "description")
            if summary:
                ui.label(str(summary)).classes("mt-2")
            ui.label("申请材料 Materials").classes("section-title mt-4")
            materials = _materials(guide)
            if not materials:
                ui.label("无需提交材料 No materials needed").classes("text-grey-8")
            for material in materials:
                kinds = _licence_types(material)
                with ui.row().classes("items-center gap-2"):
                    ui.icon("description", color="primary")
                    ui.label(_material_title(material)).classes("font-medium")
                    if first(material, "required", default=True):
                        ui.badge("必交 Required", color="grey-7")
                    if kinds:
                        ui.badge("可用电子证照 E-licence accepted: " + ", ".join(map(labels.licence_type, kinds)),
                                 color="green-8")
            ui.button("在线办理 Apply online", icon="edit_document",
                      on_click=lambda: ui.navigate.to(f"/portal/apply/{quote(code)}")) \
                .props("size=lg no-caps").classes("mt-4 t-apply")


# ---------------------------------------------------------------------------------- apply


async def _wallet() -> list[dict[str, Any]]:
    reply = await call("GET", "/api/services/licences/wallet")
    return [x for x in items_of(reply.body, "licences") if isinstance(x, dict)] if reply.ok else []


def _licence_id(licence: dict[str, Any]) -> str:
    return str(first(licence, "id", "licenceId", default=""))


def _licence_type(licence: dict[str, Any]) -> str:
    return str(first(licence, "type", "licenceType", "kind", default=""))


def _licence_title(licence: dict[str, Any]) -> str:
    subject = first(first(licence, "document", default={}), "subject", default={}) or {}
    owner = first(subject, "companyName", "name", "childName", default="") if isinstance(subject, dict) else ""
    return f"{labels.licence_type(_licence_type(licence))} {owner}".strip()


class MaterialPicker:
    """One required material: upload a file or pick a matching e-licence from the wallet."""

    def __init__(self, material: dict[str, Any], wallet: list[dict[str, Any]]) -> None:
        self.name = _material_title(material)
        self.code = str(first(material, "name", "code", default=self.name))
        self.required = bool(first(material, "required", default=True))
        kinds = _licence_types(material)
        self.matching = [lic for lic in wallet if not kinds or _licence_type(lic) in kinds] if kinds else []
        self.content_types = list(first(material, "contentTypes", default=None) or
                                  ["application/pdf", "image/jpeg", "image/png"])
        self.max_bytes = int(first(material, "maxBytes", default=10 * 1024 * 1024))
        self.choice: dict[str, Any] | None = None
        self.status: ui.label | None = None

    def render(self) -> None:
        css = "m-" + "".join(c if c.isalnum() else "_" for c in self.code)
        with ui.card().classes(f"gov-card w-full p-3 material {css}"):
            with ui.row().classes("items-center gap-2"):
                ui.icon("description", color="primary")
                ui.label(self.name).classes("font-bold")
                if self.required:
                    ui.badge("必交 Required", color="grey-7")
            if self.matching:
                options = {_licence_id(lic): "📇 " + _licence_title(lic) for lic in self.matching}
                ui.select(options, label="从电子证照库选择（免提交）Use an e-licence from my wallet",
                          on_change=lambda e: self.pick_licence(e.value)) \
                    .props("outlined clearable").classes("w-full t-pick-licence")
                ui.label("或上传文件 or upload a file").classes("text-caption text-grey-8")
            kinds = {"application/pdf": ".pdf", "image/jpeg": ".jpg,.jpeg", "image/png": ".png"}
            accept = ",".join(kinds.get(t, t) for t in self.content_types)
            shown = "/".join(kinds.get(t, t).split(",")[0].lstrip(".").upper() for t in self.content_types)
            ui.upload(label=f"上传 Upload ({shown})", auto_upload=True, max_file_size=self.max_bytes,
                      on_upload=self.uploaded,
                      on_rejected=lambda: ui.notify("文件类型或大小不符 Wrong file type or size", type="warning")) \
                .props(f'accept="{accept}" flat bordered').classes("t-upload")
            self.status = ui.label().classes("text-positive font-medium material-status")

    def pick_licence(self, licence_id: str | None) -> None:
        if not licence_id:
            self.choice = None
            self._show("")
            return
        self.choice = {"name": self.code, "licenceId": licence_id}
        self._show("✓ 使用电子证照 Using e-licence — 免提交 no paper needed")

    async def uploaded(self, event: Any) -> None:
        file = event.file
        data = await file.read()
        reply = await call("POST", "/api/services/uploads",
                           files={"file": (file.name, data, file.content_type or "application/octet-stream")})
        if not reply.ok:
            ui.notify(f"上传失败 Upload failed: {problem_text(reply.body, reply.status)}", type="negative")
            return
        upload_id = first(reply.body, "uploadId", "id")
        self.choice = {"name": self.code, "uploadId": upload_id}
        self._show(f"✓ 已上传 Uploaded: {file.name}")

    def _show(self, text: str) -> None:
        if self.status is not None:
            self.status.text = text


class SubmissionPanel:
    """The materials (upload or wallet licence) and the submit button under a service or bundle form.

    In the simple (elderly) mode they appear only after the form's last question.
    """

    def __init__(self, guide: dict[str, Any], wallet: list[dict[str, Any]], form: SchemaForm, simple: bool,
                 materials_title: str, submit_label: str, error_classes: str = "text-negative") -> None:
        self.form = form
        self.pickers = [MaterialPicker(m, wallet) for m in _materials(guide)]
        with ui.card().classes("gov-card w-full p-6") as materials_card:
            ui.label(materials_title).classes("section-title")
            if not self.pickers:
                ui.label("无需提交材料 No materials needed").classes("text-grey-8")
            for picker in self.pickers:
                picker.render()
        with ui.row().classes("items-center gap-4") as submit_row:
            self.submit = ui.button(submit_label, icon="send").props("size=lg no-caps").classes("t-submit")
            self.error = ui.label().classes(error_classes)
        if simple:
            def on_last(last: bool) -> None:
                materials_card.set_visibility(last)
                submit_row.set_visibility(last)

            form.on_last_step = on_last
            on_last(form.is_last_step)

    def collect(self) -> dict[str, Any] | None:
        """The filled form, or None with the reason shown (marked fields, missing materials)."""
        doc, errors = self.form.submit()
        self.error.text = ""
        if errors:
            self.error.text = "请修改标红的项目 Please correct the marked fields"
            return None
        missing = [p.name for p in self.pickers if p.required and p.choice is None]
        if missing:
            self.error.text = "缺少材料 Missing materials: " + ", ".join(missing)
            return None
        return dict(doc)

    @property
    def materials(self) -> list[Any]:
        return [p.choice for p in self.pickers if p.choice]

    def show_submitted(self, lines: Callable[[], None], track_url: str) -> None:
        """The receipt dialog after a successful submission: what `lines` shows, and a button to track it."""
        with ui.dialog().props("persistent") as dialog, ui.card().classes("p-6 t-receipt"):
            ui.label("✓ 提交成功 Submitted").classes("text-2xl text-positive font-bold")
            lines()
            ui.button("查看进度 Track", on_click=lambda: ui.navigate.to(track_url)).props("no-caps").classes("t-track")
        dialog.open()

    def show_refusal(self, reply: Any) -> None:
        """The server's refusal: field errors next to their fields, anything else under the button."""
        leftover = self.form.show_problem(reply.body)
        if leftover:
            self.error.text = "; ".join(leftover)
        elif any(label.visible for label in self.form.error_labels.values()):
            self.error.text = "请修改标红的项目 Please correct the marked fields"
        else:
            self.error.text = problem_text(reply.body, reply.status)


@ui.page("/portal/apply/{code}")
async def portal_apply(code: str) -> Any:
    session = await common.login()
    if not isinstance(session, Session):
        return session
    with frame(session, "在线申请 Apply", active="/portal/services"):
        guide = await _single_service(code)
        if guide is None:
            return
        wallet = await _wallet()
        simple = common.elderly()
        ui.label(f"在线申请 Apply: {first(guide, 'name', default=code)}").classes("text-2xl gov-title")
        with ui.card().classes("gov-card w-full p-6"):
            ui.label("① 填写表单 Fill in the form").classes("section-title")
            form = SchemaForm(first(guide, "form", "formSchema", "schema"), one_per_step=simple)
            form.render()
        panel = SubmissionPanel(guide, wallet, form, simple, "② 提交材料 Materials", "③ 提交申请 Submit")

        async def send() -> None:
            doc = panel.collect()
            if doc is None:
                return
            panel.submit.disable()
            try:
                reply = await call("POST", "/api/services/applications", json={
                    "serviceCode": code, "form": doc, "materials": panel.materials})
            finally:
                panel.submit.enable()
            if reply.status == 201 or reply.ok:
                receipt = first(reply.body, "receipt", "receiptNo", default="")
                app_id = first(reply.body, "id", "applicationId", default="")
                body = reply.body

                def receipt_lines() -> None:
                    ui.label(f"受理回执 Receipt: {receipt}").classes("text-lg receipt-no")
                    status_chip(first(body, "status"))

                panel.show_submitted(receipt_lines, f"/portal/applications/{app_id}")
                return
            panel.show_refusal(reply)

        panel.submit.on_click(send)


# ---------------------------------------------------------------------------------- my applications


@ui.page("/portal/applications")
async def portal_applications() -> Any:
    session = await common.login()
    if not isinstance(session, Session):
        return session
    with frame(session, "我的办件 My applications", active="/portal/applications"):
        ui.label("我的办件 My applications").classes("text-2xl gov-title")
        body = await get("/api/services/applications", params={"group": "case"})
        apps = [a for a in items_of(body, "applications") if isinstance(a, dict)]
        names = await service_names()
        if not apps:
            ui.label("暂无办件 No applications yet").classes("text-grey-8")
        for item in apps:
            if first(item, "kind") == "bundle":
                _bundle_case_row(item, names)
                continue
            app_id = first(item, "id", default="")
            with ui.card().classes(f"gov-card w-full p-4 cursor-pointer application-row app-{app_id}") \
                    .on("click", lambda i=app_id: ui.navigate.to(f"/portal/applications/{i}")):
                with ui.row().classes("items-center w-full gap-4"):
                    code = str(first(item, "serviceCode", default=""))
                    ui.label(str(first(item, "serviceName", default=None) or names.get(code, code))) \
                        .classes("text-lg font-bold gov-title")
                    status_chip(first(item, "status"))
                    ui.space()
                    deadline_badge(first(item, "deadline"), compact=True, status=first(item, "status"))
                submitted = when(first(item, "submittedAt", "createdAt", "created_at"))
                ui.label(f"回执 Receipt {first(item, 'receipt', default='')} · 提交于 submitted {submitted}") \
                    .classes("text-grey-8 text-sm")


def _bundle_case_row(item: dict[str, Any], names: dict[str, str]) -> None:
    """One 一件事 case in "my applications": its overall status and progress, each member service with the
    department handling it and its own status; the whole card opens the case page."""
    case_id = str(first(item, "caseId", default=""))
    link = f"/portal/bundles/{quote(case_id)}"
    members = [a for a in first(item, "applications", default=[]) or [] if isinstance(a, dict)]
    progress = first(item, "progress", default={}) or {}
    done = progress.get("completed", sum(1 for a in members if first(a, "status") in common.DONE_STATES))
    total = progress.get("total", len(members))
    with ui.card().classes(f"gov-card w-full p-4 cursor-pointer application-row bundle-row case-{case_id}") \
            .style("border-left: 6px solid #b71c1c").on("click", lambda: ui.navigate.to(link)):
        with ui.row().classes("items-center w-full gap-3"):
            ui.label(str(first(item, "name", default=""))).classes("text-lg font-bold gov-title")
            ui.badge(BUNDLE_BADGE, color="red-9").classes("text-sm")
            status_chip(first(item, "status")).classes("t-case-status")
            ui.space()
            ui.label(f"已办结 {done} / {total} 项 {done} of {total} done").classes("font-medium t-case-progress")
        ui.label(f"一次提交，{total} 个部门同时办理 Submitted once, {total} departments work on it at the same time"
                 f" · 提交于 submitted {when(first(item, 'submittedAt', 'createdAt'))}").classes("text-grey-8 text-sm")
        with ui.column().classes("w-full gap-1 mt-1"):
            for member in members:
                code = str(first(member, "serviceCode", default=""))
                with ui.row().classes("items-center w-full gap-3 bundle-member pl-2 no-wrap"):
                    ui.icon("subdirectory_arrow_right", color="grey-7")
                    ui.label(str(first(member, "serviceName", default=None) or names.get(code, code))) \
                        .classes("font-medium").style("min-width: 10rem")
                    ui.label(labels.department(first(member, "department", default=""))) \
                        .classes("text-grey-8 text-sm").style("min-width: 20rem")
                    status_chip(first(member, "status"))
                    ui.label(f"回执 Receipt {first(member, 'receipt', default='')}").classes("text-grey-8 text-sm")
                    ui.space()
                    deadline_badge(first(member, "deadline"), compact=True, status=first(member, "status"))
        ui.link("查看整个办件 View the whole case →", link).classes("text-sm t-case-link")


@ui.page("/portal/applications/{app_id}")
async def portal_application(app_id: str) -> Any:
    session = await common.login()
    if not isinstance(session, Session):
        return session
    with frame(session, "办件进度 Progress", active="/portal/applications"):
        @ui.refreshable
        async def view() -> None:
            item = await get(f"/api/services/applications/{quote(app_id)}")
            if not isinstance(item, dict):
                return
            await _application_view(item, view.refresh)

        await view()


async def _application_view(item: dict[str, Any], refresh: Any) -> None:
    app_id = str(first(item, "id", default=""))
    status = str(first(item, "status", default=""))
    with ui.card().classes("gov-card w-full p-6"):
        with ui.row().classes("items-center gap-4 w-full"):
            ui.label(str(first(item, "serviceName", "service", "serviceCode", default=""))) \
                .classes("text-2xl gov-title")
            status_chip(status).classes("t-status")
        ui.label(f"受理回执 Receipt: {first(item, 'receipt', default='')}").classes("text-grey-8")
        case_id = first(item, "bundleId")
        if case_id:
            ui.link(f"{BUNDLE_BADGE}: 查看整个办件 View the whole case →", f"/portal/bundles/{quote(str(case_id))}") \
                .classes("t-bundle-case-link")
        if status == "rejected" and first(item, "outcomeReason"):
            ui.label(f"不予许可理由 Reason: {first(item, 'outcomeReason')}").classes("text-negative text-lg")
        open_tasks = [t for t in first(item, "openTasks", default=[]) or [] if isinstance(t, dict)]
        if open_tasks:
            with ui.row().classes("items-center gap-2 t-open-tasks"):
                ui.label("正在办理 In progress at:").classes("kv-key")
                for task in open_tasks:
                    ui.chip(f"{labels.department(task.get('department'))} · {task.get('title', '')}",
                            icon="hourglass_top", color="indigo-1").props("dense")
        ui.label("办理时限 Time limit").classes("section-title mt-2")
        deadline_badge(first(item, "deadline"), status=status)
    with ui.card().classes("gov-card w-full p-6"):
        ui.label("办理进度 Timeline").classes("section-title")
        steps = [s for s in first(item, "steps", "history", default=[]) or [] if isinstance(s, dict)]
        if not steps:
            ui.label("等待受理 Waiting to be received").classes("text-grey-8")
        with ui.timeline(side="right").classes("w-full t-timeline"):
            for step in steps:
                outcome = str(first(step, "outcome", "result", default="") or "")
                colour = {"approved": "green", "approve": "green", "rejected": "red", "reject": "red",
                          "supplement": "orange", "supplied": "blue"}.get(outcome, "primary")
                outcome = OUTCOMES.get(outcome, outcome)
                ui.timeline_entry(
                    body=" · ".join(x for x in (labels.department(first(step, "department", default="")),
                                                outcome, str(first(step, "comment", default="") or "")) if x),
                    title=str(first(step, "title", "step", "name", default="")),
                    subtitle=when(first(step, "at", "time")), color=colour)
    if status in ("supplement_requested", "supplement", "awaiting_supplement"):
        await _supplement_card(item, refresh)
    licence_ids = first(item, "licenceIds", "licences", default=[]) or []
    if licence_ids:
        with ui.card().classes("gov-card w-full p-6 t-issued"):
            ui.label("已发电子证照 E-licences issued").classes("section-title")
            for lid in licence_ids:
                lid_text = str(first(lid, "id", default=lid)) if isinstance(lid, dict) else str(lid)
                with ui.row().classes("items-center gap-2"):
                    ui.icon("verified", color="green")
                    ui.link(f"{lid_text}", "/portal/wallet").classes("licence-link")
    if status in common.DONE_STATES or status == "rejected":
        mine = await call("GET", "/api/services/ratings", params={"applicationId": app_id})
        _rating_card(app_id, mine.body if mine.ok else None)


async def _supplement_card(item: dict[str, Any], refresh: Any) -> None:
    app_id = str(first(item, "id", default=""))
    request = first(item, "supplement", "supplementRequest", default={}) or {}
    reason = first(request, "reason", "comment") if isinstance(request, dict) else None
    if reason is None:
        for step in reversed(first(item, "steps", default=[]) or []):
            if isinstance(step, dict) and "supplement" in str(first(step, "outcome", default="")):
                reason = first(step, "reason", "comment")
                break
    with ui.card().classes("gov-card w-full p-6 t-supplement").style("border-left: 6px solid #ef6c00"):
        ui.label("请补正材料 Supplement requested").classes("section-title")
        if reason:
            ui.label(f"原因 Reason: {reason}").classes("text-lg supplement-reason")
        comment = ui.textarea("说明 Comment").props("outlined").classes("w-full t-supplement-comment")
        picker = MaterialPicker({"title": "补正材料 Supplementary material", "name": "supplement", "required": False},
                                [])
        picker.render()

        async def send() -> None:
            materials = [picker.choice] if picker.choice else []
            reply = await call("POST", f"/api/services/applications/{quote(app_id)}/supplement",
                               json={"comment": comment.value or "", "materials": materials})
            if reply.ok:
                ui.notify("已提交补正 Supplement sent", type="positive")
                refresh()
            else:
                ui.notify(problem_text(reply.body, reply.status), type="negative")

        ui.button("提交补正 Send supplement", icon="send", on_click=send).props("no-caps").classes("t-supplement-send")


def _rating_card(app_id: str, rated: Any) -> None:
    with ui.card().classes("gov-card w-full p-6 t-rating"):
        ui.label("好差评 Rate this service").classes("section-title")
        if isinstance(rated, dict) and rated.get("score"):
            score = int(rated["score"])
            ui.label(f"您已评价 You rated: {'★' * score}{'☆' * (5 - score)}").classes("text-xl text-amber-8 t-rated")
            if rated.get("comment"):
                ui.label(str(rated["comment"])).classes("text-grey-8")
            return
        stars = ui.rating(value=5, max=5, size="2.5em", icon="star_border", icon_selected="star") \
            .classes("t-stars")
        comment = ui.textarea("意见建议 Comment").props("outlined").classes("w-full t-rating-comment")
        error = ui.label().classes("text-negative t-rating-error")

        async def send() -> None:
            reply = await call("POST", "/api/services/ratings",
                               json={"applicationId": app_id, "score": int(stars.value or 0),
                                     "comment": comment.value or ""})
            if reply.ok:
                ui.notify("感谢您的评价 Thank you for your rating", type="positive")
                button.disable()
                button.text = "已评价 Rated ✓"
                error.text = ""
            else:
                error.text = f"评价未成功 Rating not accepted: {problem_text(reply.body, reply.status)}"

        button = ui.button("提交评价 Submit rating", on_click=send).props("no-caps").classes("t-rate")


# ---------------------------------------------------------------------------------- wallet


@ui.page("/portal/wallet")
async def portal_wallet() -> Any:
    session = await common.login()
    if not isinstance(session, Session):
        return session
    with frame(session, "电子证照 Wallet", active="/portal/wallet"):
        ui.label("我的电子证照 My e-licences").classes("text-2xl gov-title")
        licences = await _wallet()
        if not licences:
            ui.label("证照库为空 No e-licences yet").classes("text-grey-8")
        with ui.grid(columns=2).classes("w-full gap-4"):
            user = session.user or {}
            for licence in licences:
                await _licence_card(licence, str(user.get("displayName") or user.get("username") or "") or None)


HOLDER_NAME_KEYS = ("holderName", "name", "applicantName", "companyName", "childName", "fullName")


def _holder_name(licence: dict[str, Any], account_name: str | None) -> str:
    """The holder's name, masked (王*明): from the licence's own subject, else the signed-in holder's
    account; never the internal user id."""
    document = first(licence, "document", default={}) or {}
    subject = first(document, "subject", "credentialSubject", default={}) if isinstance(document, dict) else {}
    name = first(subject, *HOLDER_NAME_KEYS) if isinstance(subject, dict) else None
    name = name or first(licence, "holderName") or account_name
    return mask_string(str(name)) if name else "本人 You"


async def _licence_card(licence: dict[str, Any], holder_name: str | None = None) -> None:
    lid = _licence_id(licence)
    with ui.card().classes(f"gov-card p-4 licence-card licence-{_licence_type(licence)}"), \
            ui.row().classes("w-full no-wrap gap-4"):
        with ui.column().classes("gap-1 grow"):
            ui.label(_licence_title(licence)).classes("text-lg font-bold gov-title")
            status = str(first(licence, "status", default=""))
            _kv([("证照编号 Licence no.", lid),
                 ("持证人 Holder", _holder_name(licence, holder_name)),
                 ("发证机关 Issuer", labels.department(first(licence, "issuerDepartment", "department"))),
                 ("发证日期 Issued", when(first(licence, "issuedAt", "issued")) or None),
                 ("有效期至 Valid until", when(first(licence, "expiresAt", "validUntil")) or "长期 No expiry"),
                 ("状态 Status", {"valid": "有效 Valid", "revoked": "已注销 Revoked",
                                  "expired": "已过期 Expired"}.get(status, status))])
            ui.link("核验 Verify ↗", f"/verify?id={quote(lid)}").classes("text-sm")
        reply = await call("GET", f"/api/services/licences/{quote(lid)}/qr.svg")
        if reply.ok and reply.body is not None:
            svg = reply.body if isinstance(reply.body, str) else ""
            if svg:
                data = base64.b64encode(svg.encode()).decode()
                ui.image(f"data:image/svg+xml;base64,{data}").classes("w-36 h-36 licence-qr")
