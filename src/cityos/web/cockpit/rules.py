"""`/cockpit/rules`: the alarm rules — list, edit the definition (YAML or JSON), enable/disable, versions.

The editor sends the text as it is to the rules API; the API's validation error (a ProblemDetails
naming the offending path) is shown under the editor.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import yaml
from fastapi.responses import RedirectResponse
from nicegui import ui

from cityos.core import messages
from cityos.web.auth import ApiError, Session, require_login
from cityos.web.cockpit import data
from cityos.web.cockpit.common import COCKPIT_ROLES, fmt_time
from cityos.web.shell import frame, panel

NEW_RULE = """\
# 新规则 New rule (YAML or JSON; schema: GET /api/ops/rules/schema)
id: pm25-high
name: PM2.5 重度污染 PM2.5 above 150 µg/m³
entityTypes: [AirQualityObserved]
condition:
  threshold: {attr: pm25, op: ">", value: 150}
severity: major
category: environment
incident: {category: environment.air, level: general}
"""


def rule_path(rule_id: Any) -> str:
    return f"/api/ops/rules/{quote(str(rule_id), safe='')}"


ORDER = ("id", "name", "description", "entityTypes", "idPattern", "condition", "severity", "category",
         "subCategory", "incident", "department")
META = ("enabled", "version", "createdAt", "createdBy", "updatedAt", "updatedBy")


def definition_text(rule: dict[str, Any]) -> str:
    """A rule (the API's view, or a version's `rule`) as the YAML document to edit: its fields less the metadata."""
    inner = rule.get("rule")
    doc: dict[str, Any] = inner if isinstance(inner, dict) else rule
    body = {k: v for k, v in doc.items() if k not in META}
    ordered = {k: body.pop(k) for k in ORDER if k in body}
    return str(yaml.safe_dump({**ordered, **body}, allow_unicode=True, sort_keys=False))


@ui.page("/cockpit/rules", title="告警规则 Rules · CityOS")
async def rules_page(rule: str | None = None) -> RedirectResponse | None:
    session = await require_login(COCKPIT_ROLES)
    if not isinstance(session, Session):
        return session
    may_edit = session.can("rule.manage")
    selected: dict[str, Any] = {"id": rule, "rule": None}
    with frame(session, "告警规则 Alarm rules", active="/cockpit/rules"), \
            ui.row().classes("w-full gap-3 no-wrap items-start"):
            with panel("规则列表 Rules", classes="w-[480px] cityos-rule-list"):
                if may_edit:
                    ui.button("新建规则 New rule", icon="add", on_click=lambda: open_rule(None)) \
                        .props("unelevated color=cyan-7 no-caps dense").classes("cityos-new-rule")
                listing = ui.column().classes("w-full gap-1")
            with panel(classes="flex-1 cityos-rule-editor"):
                heading = ui.label("选择规则 Choose a rule").classes("cityos-panel-title text-lg")
                meta = ui.label("").classes("text-slate-400 text-sm")
                editor = ui.codemirror(NEW_RULE, language="YAML", theme="dracula") \
                    .classes("w-full h-[56vh] cityos-rule-text")
                editor.enabled = may_edit
                error = ui.label("").classes("text-red-400 whitespace-pre-wrap cityos-rule-error")
                error.set_visibility(False)
                with ui.row().classes("gap-2"):
                    save = ui.button("保存为新版本 Save new version", icon="save") \
                        .props("unelevated color=cyan-7 no-caps").classes("cityos-save-rule")
                    toggle = ui.button("").props("outline no-caps").classes("cityos-toggle-rule")
                    save.set_visibility(may_edit)
                    toggle.set_visibility(False)
                with ui.expansion("版本历史 Versions", icon="history").classes("w-full cityos-versions"):
                    versions = ui.column().classes("w-full gap-1")

    async def refresh_list() -> None:
        items = await data.rules(session)
        listing.clear()
        with listing:
            if not items:
                ui.label("暂无规则 No rules yet").classes("text-slate-500")
            for item in items:
                enabled = bool(item.get("enabled", True))
                with ui.row().classes("w-full items-center gap-2 no-wrap cursor-pointer hover:bg-slate-800 "
                                      "rounded px-1 cityos-rule-row") \
                        .on("click", lambda i=item.get("id"): open_rule(i)):
                    ui.icon("rule", color="cyan-4" if enabled else "grey-6")
                    with ui.column().classes("gap-0 flex-1 min-w-0"):
                        ui.label(str(item.get("name") or item.get("id"))).classes("text-slate-100 ellipsis w-full")
                        ui.label(f"{item.get('id')} · v{item.get('version', 1)} · "
                                 f"{messages.label('severity', item.get('severity'))}") \
                            .classes("text-xs text-slate-400")
                    ui.badge("启用 On" if enabled else "停用 Off", color="positive" if enabled else "grey") \
                        .props("outline")

    async def open_rule(rule_id: Any) -> None:
        error.set_visibility(False)
        versions.clear()
        selected.update(id=rule_id, rule=None)
        if rule_id is None:
            heading.text = "新建规则 New rule"
            meta.text = ""
            editor.value = NEW_RULE
            toggle.set_visibility(False)
            return
        try:
            item = await session.api("GET", rule_path(rule_id))
        except ApiError as exc:
            ui.notify(exc.detail, type="negative")
            return
        selected["rule"] = item
        heading.text = f"{item.get('name') or rule_id}"
        meta.text = (f"{rule_id} · 版本 version {item.get('version', 1)} · "
                     f"{'启用 enabled' if item.get('enabled', True) else '停用 disabled'} · "
                     f"{fmt_time(item.get('updatedAt') or item.get('updated_at'))}")
        editor.value = definition_text(item)
        enabled = bool(item.get("enabled", True))
        toggle.text = "停用 Disable" if enabled else "启用 Enable"
        toggle.set_visibility(may_edit)
        try:
            history = await session.api("GET", f"{rule_path(rule_id)}/versions")
        except ApiError:
            history = []
        rows = history if isinstance(history, list) else (history or {}).get("items", [])
        with versions:
            for version in reversed(rows):
                with ui.row().classes("w-full items-center gap-2 cityos-version-row"):
                    ui.label(f"v{version.get('version')}").classes("text-cyan-300 font-mono")
                    ui.label(f"{version.get('change') or ''} · {fmt_time(version.get('changedAt'))} · "
                             f"{version.get('changedBy') or ''}").classes("text-slate-400 text-sm")
                    ui.button("载入 Load", on_click=lambda v=version: _load_version(v)).props("flat dense no-caps")

    def _load_version(version: dict[str, Any]) -> None:
        editor.value = definition_text(version)
        ui.notify(f"已载入 v{version.get('version')}，保存即成为新版本 Loaded; save to make it the newest")

    async def do_save() -> None:
        """Send the text as it is (YAML is a superset of JSON): the API parses and validates it."""
        error.set_visibility(False)
        rule_id = selected["id"]
        text = (editor.value or "").encode()
        headers = {"Content-Type": "application/yaml"}
        try:
            if rule_id is None:
                result = await session.api("POST", "/api/ops/rules", content=text, headers=headers)
            else:
                result = await session.api("PUT", rule_path(rule_id), content=text, headers=headers)
        except ApiError as exc:
            error.text = f"校验失败 Rejected: {exc.detail}"
            error.set_visibility(True)
            return
        ui.notify("规则已保存 Rule saved", type="positive")
        new_id = result.get("id") if isinstance(result, dict) else None
        await refresh_list()
        await open_rule(new_id or rule_id)

    async def do_toggle() -> None:
        item = selected.get("rule") or {}
        enabled = bool(item.get("enabled", True))
        try:
            await session.api("POST", f"{rule_path(selected['id'])}/{'disable' if enabled else 'enable'}", json={})
        except ApiError as exc:
            ui.notify(exc.detail, type="negative")
            return
        await refresh_list()
        await open_rule(selected["id"])

    save.on_click(do_save)
    toggle.on_click(do_toggle)
    await refresh_list()
    if rule:
        await open_rule(rule)
    return None
