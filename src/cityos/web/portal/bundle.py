"""一件事一次办 One-thing bundles in the portal.

- the bundle cards of the service search (`bundle_card`);
- `/portal/bundle/{code}`: the guide (member services, departments, time limits) and ONE form with
  the materials, submitted to `POST /api/services/bundles` (one case, several applications);
- `/portal/bundles/{caseId}`: the case with the status of each member application.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from nicegui import ui

from cityos.web.auth import Session
from cityos.web.portal import common, labels
from cityos.web.portal.common import call, deadline_badge, first, frame, get, status_chip, when
from cityos.web.portal.forms import SchemaForm

BUNDLE_BADGE = "一件事一次办 One-thing bundle"


def bundle_card(bundle: dict[str, Any], names: dict[str, str]) -> None:
    """A search result for a bundle: its badge, the member services, and the way in."""
    code = str(first(bundle, "code", default=""))
    with ui.card().classes(f"gov-card p-4 bundle-card bundle-{code}").style("border-left: 6px solid #b71c1c"):
        with ui.row().classes("items-center gap-2 w-full"):
            ui.label(str(first(bundle, "name", default=code))).classes("text-lg font-bold gov-title")
            ui.badge(BUNDLE_BADGE, color="red-9").classes("text-sm t-bundle-badge")
        if first(bundle, "nameEn"):
            ui.label(str(bundle["nameEn"])).classes("text-grey-8 text-sm")
        members = [str(first(s, "code", default=s)) if isinstance(s, dict) else str(s)
                   for s in first(bundle, "services", default=[]) or []]
        if members:
            ui.label(f"一次填报，{len(members)} 项事项并联办理 One form, {len(members)} services at once: "
                     + " · ".join(names.get(c, c) for c in members)).classes("text-sm")
        ui.button("一次办理 Guide & apply", icon="all_inclusive",
                  on_click=lambda: ui.navigate.to(f"/portal/bundle/{quote(code)}")) \
            .props("no-caps").classes("mt-1 t-bundle-open")


# ---------------------------------------------------------------------------------- guide and form


@ui.page("/portal/bundle/{code}")
async def portal_bundle(code: str) -> Any:
    session = await common.login()
    if not isinstance(session, Session):
        return session
    # Imported here: `portal` imports this module for the search page's cards.
    from cityos.web.portal.portal import SubmissionPanel, _kv, _wallet

    with frame(session, "一件事一次办 One-thing bundle", active="/portal/services"):
        guide = await get(f"/api/services/catalogue/{quote(code)}")
        if not isinstance(guide, dict) or not first(guide, "bundle", default=False):
            ui.label("一件事不存在 Unknown bundle").classes("text-negative")
            return
        members = [s for s in first(guide, "services", default=[]) or [] if isinstance(s, dict)]
        limit = first(guide, "timeLimitDays")
        with ui.card().classes("gov-card w-full p-6 t-bundle-guide"):
            with ui.row().classes("items-center gap-3"):
                ui.label(str(first(guide, "name", default=code))).classes("text-2xl gov-title")
                ui.badge(BUNDLE_BADGE, color="red-9").classes("text-sm t-bundle-badge")
            if first(guide, "nameEn"):
                ui.label(str(guide["nameEn"])).classes("text-grey-8")
            if first(guide, "description"):
                ui.label(str(guide["description"])).classes("mt-1")
            ui.label("办事指南 Guide").classes("section-title mt-2")
            departments = list(dict.fromkeys(str(first(s, "department", default="")) for s in members))
            _kv([("一件事编码 Code", code),
                 ("包含事项 Services", f"{len(members)} 项 services"),
                 ("涉及部门 Departments", " · ".join(labels.department(d) for d in departments if d)),
                 ("承诺时限 Time limit", f"最长 {limit} 个工作日 at most {limit} working days (并联办理 in parallel)"
                  if limit is not None else None)])
            ui.label("并联办理事项 Services handled together").classes("section-title mt-4")
            columns = [{"name": "name", "label": "事项 Service", "field": "name", "align": "left"},
                       {"name": "department", "label": "实施部门 Department", "field": "department", "align": "left"},
                       {"name": "limit", "label": "时限 Time limit", "field": "limit", "align": "left"}]
            rows = [{"code": str(first(s, "code", default="")),
                     "name": f"{first(s, 'name', default='')} {first(s, 'nameEn', default='')}".strip(),
                     "department": labels.department(first(s, "department", default="")),
                     "limit": f"{first(s, 'timeLimitDays')} 个工作日 working days"
                     if first(s, "timeLimitDays") is not None else "—"} for s in members]
            ui.table(columns=columns, rows=rows, row_key="code").props("flat bordered dense") \
                .classes("w-full t-bundle-services")

        wallet = await _wallet()
        simple = common.elderly()
        with ui.card().classes("gov-card w-full p-6"):
            ui.label("① 一表填报 Fill in one form").classes("section-title")
            ui.label("填写一次，自动分发到各部门 Filled once, shared with every department") \
                .classes("text-grey-8 text-sm")
            form = SchemaForm(first(guide, "form"), one_per_step=simple)
            form.render()
        panel = SubmissionPanel(guide, wallet, form, simple,
                                "② 提交材料 Materials (一次提交，多部门共享 submitted once, shared)",
                                "③ 一次提交 Submit all", error_classes="text-negative t-bundle-error")

        async def send() -> None:
            doc = panel.collect()
            if doc is None:
                return
            panel.submit.disable()
            try:
                reply = await call("POST", "/api/services/bundles", json={
                    "bundleCode": code, "form": doc, "materials": panel.materials})
            finally:
                panel.submit.enable()
            if reply.ok and isinstance(reply.body, dict):
                case_id = str(first(reply.body, "caseId", default=""))
                apps = [a for a in first(reply.body, "applications", default=[]) or [] if isinstance(a, dict)]

                def case_lines() -> None:
                    ui.label(f"一件事办件号 Case: {case_id}").classes("text-lg case-no")
                    ui.label(f"已分发 {len(apps)} 个部门办件 {len(apps)} applications started").classes("text-grey-8")

                panel.show_submitted(case_lines, f"/portal/bundles/{quote(case_id)}")
                return
            panel.show_refusal(reply)

        panel.submit.on_click(send)


# ---------------------------------------------------------------------------------- the case


@ui.page("/portal/bundles/{case_id}")
async def portal_bundle_case(case_id: str) -> Any:
    session = await common.login()
    if not isinstance(session, Session):
        return session
    from cityos.web.portal.portal import service_names

    with frame(session, "一件事办件 Bundle case", active="/portal/applications"):
        case = await get(f"/api/services/bundles/{quote(case_id)}")
        if not isinstance(case, dict):
            ui.label("办件不存在 Unknown case").classes("text-negative")
            return
        names = await service_names()
        apps = [a for a in first(case, "applications", default=[]) or [] if isinstance(a, dict)]
        done = sum(1 for a in apps if first(a, "status") in common.DONE_STATES)
        with ui.card().classes("gov-card w-full p-6 t-bundle-case"):
            with ui.row().classes("items-center gap-3 w-full"):
                ui.label(str(first(case, "name", default=""))).classes("text-2xl gov-title")
                ui.badge(BUNDLE_BADGE, color="red-9").classes("text-sm")
                status_chip(first(case, "status")).classes("t-case-status")
            ui.label(f"一件事办件号 Case: {case_id} · 提交于 submitted {when(first(case, 'createdAt'))}") \
                .classes("text-grey-8")
            ui.label(f"已办结 {done} / {len(apps)} 项 {done} of {len(apps)} completed").classes("font-medium")
        ui.label(f"并联办件 Applications ({len(apps)})").classes("section-title")
        for item in apps:
            app_id = str(first(item, "id", default=""))
            code = str(first(item, "serviceCode", default=""))
            with ui.card().classes(f"gov-card w-full p-4 cursor-pointer bundle-app app-{app_id}") \
                    .on("click", lambda i=app_id: ui.navigate.to(f"/portal/applications/{quote(i)}")):
                with ui.row().classes("items-center w-full gap-4"):
                    ui.label(names.get(code, code)).classes("text-lg font-bold gov-title")
                    status_chip(first(item, "status"))
                    ui.space()
                    deadline_badge(first(item, "deadline"), compact=True, status=first(item, "status"))
                with ui.row().classes("items-center gap-4"):
                    ui.label(f"{labels.department(first(item, 'department', default=''))} · "
                             f"回执 Receipt {first(item, 'receipt', default='')}").classes("text-grey-8 text-sm")
                    ui.link("查看进度 Track →", f"/portal/applications/{quote(app_id)}").classes("text-sm t-app-link")
