"""Operator actions: acknowledge an alarm; move an incident through its lifecycle.

Buttons show only for roles the policy matrix allows and for states the lifecycle allows; the API
decides for real and its refusal (ProblemDetails `detail`) is shown as it is.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote

from nicegui import ui

from cityos.core import messages
from cityos.web.auth import ApiError, Session
from cityos.web.cockpit import data
from cityos.web.cockpit.common import fmt_time

# action → (states it starts from, label, icon, colour, needs a department)
INCIDENT_ACTIONS: dict[str, tuple[frozenset[str], str, str, str]] = {
    "dispatch": (frozenset({"reported", "reopened"}), "派遣 Dispatch", "send", "cyan-7"),
    "accept": (frozenset({"dispatched"}), "接单 Accept", "assignment_turned_in", "blue-7"),
    "arrive": (frozenset({"accepted"}), "到场 On site", "place", "indigo-6"),
    "resolve": (frozenset({"on_site"}), "处置完成 Resolve", "task_alt", "green-7"),
    "close": (frozenset({"resolved"}), "关闭 Close", "lock", "teal-8"),
    "reopen": (frozenset({"resolved", "closed"}), "重开 Reopen", "restart_alt", "orange-8"),
}


def incident_path(incident_id: Any) -> str:
    return f"/api/ops/incidents/{quote(str(incident_id), safe='')}"


async def incident_action(session: Session, incident_id: Any, action: str, note: str | None = None,
                          department: str | None = None) -> dict[str, Any] | None:
    body: dict[str, Any] = {}
    if note:
        body["note"] = note
    if department:
        body["department"] = department
    result = await session.api("POST", f"{incident_path(incident_id)}/{action}", json=body)
    return result if isinstance(result, dict) else None


def incident_buttons(session: Session, item: dict[str, Any], on_done: Callable[[], Awaitable[None]],
                     departments: list[str] | None = None) -> None:
    """The actions this user may take on `item` in its current state."""
    if not session.can("incident.act"):
        return
    status = str(item.get("status"))
    for action, (sources, label, icon, colour) in INCIDENT_ACTIONS.items():
        if status not in sources:
            continue

        async def run(action: str = action, label: str = label) -> None:
            await _action_dialog(session, item, action, label, on_done, departments or [])

        ui.button(label, icon=icon, on_click=run).props(f"unelevated color={colour} no-caps") \
            .classes(f"cityos-action-{action}")


async def _action_dialog(session: Session, item: dict[str, Any], action: str, label: str,
                         on_done: Callable[[], Awaitable[None]], departments: list[str]) -> None:
    with ui.dialog() as dialog, ui.card().classes("cityos-panel min-w-[420px] cityos-action-dialog"):
        ui.label(f"{label} · #{item.get('id')} {item.get('title') or ''}").classes("text-lg text-slate-100")
        department = None
        if action == "dispatch":
            current = str(item.get("department") or "")
            options = sorted({*departments, *([current] if current else [])})
            department = ui.select(options, value=current or None, with_input=True, new_value_mode="add-unique",
                                   label="处置部门 Department").props("dark outlined").classes("w-full cityos-dept")
        note = ui.textarea("处置说明 Note").props("dark outlined autogrow").classes("w-full cityos-note")
        error = ui.label("").classes("text-red-400")
        error.set_visibility(False)
        with ui.row().classes("w-full justify-end"):
            ui.button("取消 Cancel", on_click=dialog.close).props("flat")

            async def confirm() -> None:
                try:
                    await incident_action(session, item.get("id"), action, note.value or None,
                                          department.value if department is not None else None)
                except ApiError as exc:
                    error.text = exc.detail
                    error.set_visibility(True)
                    return
                dialog.close()
                ui.notify(f"{label}: #{item.get('id')} ✓", type="positive")
                await on_done()

            ui.button("确认 Confirm", on_click=confirm).props("unelevated color=cyan-7 no-caps") \
                .classes("cityos-confirm")
    # A fresh dialog per action: once hidden it is deleted, so an operator's long session does not
    # pile up closed dialogs (and the next action's dialog is the only one on the page).
    dialog.on("hide", dialog.delete)
    dialog.open()


def alarm_title(alarm: dict[str, Any]) -> str:
    """An alarm's display name from the catalogue: what it is about and where, never a rule id."""
    incident = alarm.get("incident") if isinstance(alarm.get("incident"), dict) else {}
    code = (incident or {}).get("category") or ".".join(
        str(x) for x in (alarm.get("category"), alarm.get("subCategory")) if x)
    what = messages.category(code) if code else str(alarm.get("title") or alarm.get("id"))
    where = str(alarm.get("device") or alarm.get("entityId") or "").rsplit(":", 1)[-1]
    return " · ".join(x for x in (what, messages.place(alarm.get("district")) or where) if x)


def alarm_row(session: Session, alarm: dict[str, Any]) -> None:
    """One alarm in the live list, with its acknowledge button."""
    severity = str(alarm.get("severity") or "")
    colour = data.SEVERITY_COLOURS.get(severity, "#ef4444")
    with ui.row().classes("w-full items-center gap-2 no-wrap rounded px-1 cityos-alarm-row"):
        ui.element("span").style(f"display:inline-block;width:10px;height:10px;border-radius:50%;"
                                 f"background:{colour};box-shadow:0 0 6px {colour}")
        with ui.column().classes("gap-0 flex-1 min-w-0"):
            ui.label(alarm_title(alarm)).classes("text-slate-100 ellipsis w-full")
            where = alarm.get("device") or alarm.get("entityId") or alarm.get("entity_id") or ""
            ui.label(f"{messages.label('severity', severity)} · {str(where).rsplit(':', 1)[-1]} · "
                     f"{fmt_time(alarm.get('raisedAt') or alarm.get('raised_at') or alarm.get('createdAt'))}") \
                .classes("text-xs text-slate-400")
        status = str(alarm.get("status") or "")
        if status == "acknowledged" or alarm.get("acknowledgedAt") or alarm.get("acknowledged_at"):
            ui.badge("已确认 Ack'd", color="grey").props("outline")
        elif session.can("alarm.act"):
            async def ack(alarm_id: Any = alarm.get("id")) -> None:
                try:
                    await session.api("POST", f"/api/ops/alarms/{quote(str(alarm_id), safe='')}/acknowledge",
                                      json={})
                except ApiError as exc:
                    ui.notify(f"确认失败 Acknowledge refused: {exc.detail}", type="negative")
                    return
                data.Pulse.version += 1
                ui.notify("告警已确认 Alarm acknowledged", type="positive")

            ui.button("确认 Ack", on_click=ack).props("dense flat color=amber no-caps").classes("cityos-ack")
