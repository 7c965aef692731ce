"""Staff desks of 一网协同: an appointment site's day (today's slots and appointments, no-shows, marking who came)
and a service-hall window (call the next ticket, start, finish, no-show, transfer). Through the REST API as the
signed-in staff member; times in the city's zone."""

from __future__ import annotations

import datetime as dt
from typing import Any
from urllib.parse import quote

from nicegui import ui

from cityos.core import clock, messages
from cityos.web.auth import Session
from cityos.web.portal import common
from cityos.web.portal.common import STAFF_ROLES, call, frame, problem_text

APPOINTMENT_STATUS = {"booked": ("已预约 Booked", "blue"), "cancelled": ("已取消 Cancelled", "grey"),
                      "noshow": ("爽约 No-show", "red"), "fulfilled": ("已到 Came", "green")}
TICKET_STATUS = {"called": "已叫号 Called", "serving": "办理中 Serving"}


def register_nav() -> None:
    from cityos.web.shell import add_nav

    add_nav("预约现场 Appointment sites", "/appointments/sites", STAFF_ROLES, icon="event_note")
    add_nav("窗口 Hall window", "/hall/civic-centre/window/1", STAFF_ROLES, icon="support_agent")


def mask_person(person: str | None) -> str:
    """Staff see enough of the account to match it with the person at the desk, not the whole identifier."""
    if not person:
        return "—"
    return person if len(person) <= 3 else person[:3] + "*" * min(6, len(person) - 3)


# ---------------------------------------------------------------------------------- appointment sites


@ui.page("/appointments/sites", title="预约现场 Appointment sites · CityOS")
async def appointment_sites() -> Any:
    session = await common.login(STAFF_ROLES)
    if not isinstance(session, Session):
        return session
    with frame(session, "预约现场 Appointment sites", active="/appointments/sites", citizen=False):
        ui.label("预约现场 Appointment sites").classes("text-2xl gov-title")
        reply = await call("GET", "/api/appointments/schedules")
        items = reply.body if reply.ok and isinstance(reply.body, list) else []
        if not items:
            ui.label("暂无预约服务 No schedules yet").classes("text-grey-8")
        for item in items:
            link = ui.link(target=f"/appointments/site/{quote(item['id'])}").classes("w-full no-underline t-site")
            with link, ui.row().classes("gov-card w-full items-center gap-3 p-3"):
                ui.label(item["site"]).classes("font-bold")
                ui.label(f"{item['service']} {item.get('actor') or ''}").classes("text-grey-8")


@ui.page("/appointments/site/{schedule_id}", title="预约现场 Site · CityOS")
async def appointment_site(schedule_id: str, day: str | None = None) -> Any:
    session = await common.login(STAFF_ROLES)
    if not isinstance(session, Session):
        return session
    today = clock.now().astimezone(messages.city_zone()).date()
    try:
        shown = dt.date.fromisoformat(day) if day else today
    except ValueError:
        shown = today
    with frame(session, "预约现场 Appointment site", active="/appointments/sites", citizen=False):
        schedule = await call("GET", f"/api/appointments/schedules/{quote(schedule_id)}")
        if not schedule.ok:
            ui.label(problem_text(schedule.body, schedule.status)).classes("text-negative")
            return
        ui.label(f"{schedule.body['site']} · {schedule.body['service']} {schedule.body.get('actor') or ''}") \
            .classes("text-2xl gov-title")
        with ui.row().classes("items-center gap-3"):
            for offset, label in ((-1, "← 前一天 Previous"), (1, "后一天 Next →")):
                target = (shown + dt.timedelta(days=offset)).isoformat()
                ui.link(label, f"/appointments/site/{quote(schedule_id)}?day={target}").classes("t-day-nav")
            ui.label(f"{shown.isoformat()}{'（今天 today）' if shown == today else ''}").classes("text-lg font-bold")
        listed = await call("GET", f"/api/appointments/schedules/{quote(schedule_id)}/appointments",
                            params={"day": shown.isoformat()})
        if not listed.ok:
            ui.label(problem_text(listed.body, listed.status)).classes("text-negative t-site-refused")
            return
        appointments = listed.body if isinstance(listed.body, list) else []
        start = dt.datetime.combine(shown, dt.time(0), messages.city_zone())
        slots_reply = await call("GET", "/api/appointments/slots", params={
            "scheduleId": schedule_id, "from": start.isoformat(), "to": (start + dt.timedelta(days=1)).isoformat()})
        slots = slots_reply.body if slots_reply.ok and isinstance(slots_reply.body, list) else []
        counts = {status: sum(a["status"] == status for a in appointments) for status in APPOINTMENT_STATUS}
        ui.label(f"时段 {len(slots)} slots · 预约 {counts['booked']} booked · 已到 {counts['fulfilled']} came · "
                 f"爽约 {counts['noshow']} no-shows · 取消 {counts['cancelled']} cancelled") \
            .classes("section-title t-site-counts")
        by_slot: dict[str, list[dict[str, Any]]] = {}
        for item in appointments:
            by_slot.setdefault(item["slotId"], []).append(item)
        if not slots:
            ui.label("当天没有时段 No slots on this day").classes("text-grey-8")
        for slot in slots:
            with ui.card().classes("gov-card w-full p-2 gap-1 t-site-slot"):
                with ui.row().classes("items-center gap-3"):
                    ui.label(messages.local_time(slot["start"], "%H:%M", zone=False)).classes("text-lg font-bold")
                    ui.label(f"{slot['booked']}/{slot['capacity']} 已约 booked").classes("text-grey-8")
                for item in by_slot.get(slot["id"], []):
                    _appointment_row(item)


def _appointment_row(item: dict[str, Any]) -> None:
    label, colour = APPOINTMENT_STATUS.get(item["status"], (item["status"], "blue-grey"))
    with ui.row().classes("w-full items-center gap-2 pl-4 t-site-appointment"):
        ui.label(mask_person(item["person"])).classes("font-mono")
        ui.chip(label, color=colour, text_color="white").props("dense square")
        if item.get("note"):
            ui.label(item["note"][:60]).classes("text-sm text-grey-7")
        ui.space()
        if item["status"] == "booked":
            ui.button("已到 Came", on_click=lambda i=item: _outcome(i, "fulfilled")) \
                .props("dense unelevated color=positive no-caps").classes("t-came")
            if clock.parse_iso(item["start"]) <= clock.now():  # a no-show only once the time has come
                ui.button("爽约 No-show", on_click=lambda i=item: _outcome(i, "noshow")) \
                    .props("dense outline color=negative no-caps").classes("t-noshow")


async def _outcome(item: dict[str, Any], status: str) -> None:
    reply = await call("POST", f"/api/appointments/appointments/{quote(item['id'])}/outcome", json={"status": status})
    if reply.ok:
        ui.notify("已记录 Recorded", type="positive")
        ui.navigate.reload()
    else:
        ui.notify(problem_text(reply.body, reply.status), type="negative")


# ---------------------------------------------------------------------------------- a hall window


@ui.page("/hall/{hall}/window/{number}", title="窗口 Window · CityOS")
async def hall_window(hall: str, number: int) -> Any:
    session = await common.login(STAFF_ROLES)
    if not isinstance(session, Session):
        return session
    with frame(session, f"{number} 号窗口 Window {number}", active="/hall/civic-centre/window/1", citizen=False):
        ui.label(f"{number} 号窗口 Window {number} · {hall}").classes("text-2xl gov-title")
        state = await call("GET", f"/api/hall/{quote(hall)}/windows/{number}")
        board = await call("GET", f"/api/hall/{quote(hall)}/board")
        groups = {q["group"]: q["name"] for q in (board.body.get("queues", []) if board.ok else [])}
        if state.status == 404 and groups:  # not opened yet: the desk opens it with its skills
            _desk(hall, number, groups, None)
            return
        if not state.ok:
            ui.label(problem_text(state.body, state.status)).classes("text-negative t-window-refused")
            return
        body = state.body
        _desk(hall, number, groups, body)
        ui.label(("开放 Open" if body["open"] else "已关闭 Closed") + " · 受理 serves: "
                 + "、".join(f"{g} {groups.get(g, '')}" for g in body["skills"])).classes("text-grey-8")
        ui.label(f"等候 {body['waiting']} 人 waiting · 今日办结 {body['doneToday']} done · 未到 "
                 f"{body['noShowsToday']} no-shows").classes("section-title t-window-counts")
        current = body.get("current")
        with ui.card().classes("gov-card w-full p-4 gap-3 t-window-current"):
            if current is None:
                ui.label("当前无号 No ticket at this window").classes("text-xl text-grey-8")
                ui.timer(15.0, ui.navigate.reload, once=True)  # the waiting count moves while the desk is idle
                ui.button("叫下一位 Call next", on_click=lambda: _act(hall, number, "call-next", None)) \
                    .props("unelevated color=primary size=xl no-caps").classes("t-call-next")
                return
            ui.label(current["number"]).classes("text-6xl font-bold gov-title t-current-number")
            ui.label(f"{TICKET_STATUS.get(current['status'], current['status'])} · 取号 "
                     f"{messages.local_time(current['taken'], '%H:%M')}"
                     + (f" · 转办 {current['transfers']} 次 transfers" if current["transfers"] else "")) \
                .classes("text-lg")
            with ui.row().classes("gap-3 flex-wrap"):
                if current["status"] == "called":
                    ui.button("开始办理 Start", on_click=lambda: _act(hall, number, "serving", current)) \
                        .props("unelevated color=primary no-caps").classes("t-serving")
                    ui.button("未到 No-show", on_click=lambda: _act(hall, number, "noshow", current)) \
                        .props("outline color=negative no-caps").classes("t-window-noshow")
                else:
                    ui.button("办结 Done", on_click=lambda: _act(hall, number, "done", current)) \
                        .props("unelevated color=positive no-caps").classes("t-done")
                others = {g: f"{g} {name}" for g, name in groups.items() if g != current["group"]}
                if others:
                    target = ui.select(others, label="转到 Transfer to").props("outlined dense") \
                        .classes("t-transfer-group").style("min-width: 12rem")
                    ui.button("转办 Transfer", on_click=lambda: _act(hall, number, "transfer", current,
                                                                    target.value)) \
                        .props("outline no-caps").classes("t-transfer")


def _desk(hall: str, number: int, groups: dict[str, str], state: dict[str, Any] | None) -> None:
    """Open the window with the services it handles (its skills), change them, or close it."""
    with ui.row().classes("items-center gap-2 flex-wrap t-window-desk"):
        skills = ui.select({g: f"{g} {name}" for g, name in groups.items()}, multiple=True,
                           value=list(state["skills"]) if state else [], label="受理业务 Skills") \
            .props("outlined dense use-chips").classes("t-window-skills").style("min-width: 18rem")

        async def open_window() -> None:
            if not skills.value:
                ui.notify("请选择受理业务 Choose the services this window handles", type="negative")
                return
            reply = await call("PUT", f"/api/hall/{quote(hall)}/windows/{number}", json={"skills": skills.value})
            if reply.ok:
                ui.navigate.reload()
            else:
                ui.notify(problem_text(reply.body, reply.status), type="negative")

        async def close_window() -> None:
            reply = await call("POST", f"/api/hall/{quote(hall)}/windows/{number}/close")
            if reply.ok:
                ui.navigate.reload()
            else:
                ui.notify(problem_text(reply.body, reply.status), type="negative")

        ui.button("开窗 Open" if not state or not state["open"] else "更新业务 Update skills", on_click=open_window) \
            .props("unelevated color=primary no-caps").classes("t-window-open")
        if state and state["open"]:
            ui.button("关窗 Close", on_click=close_window).props("outline color=negative no-caps") \
                .classes("t-window-close")


async def _act(hall: str, number: int, to: str, ticket: dict[str, Any] | None, group: str | None = None) -> None:
    if to == "call-next":
        reply = await call("POST", f"/api/hall/{quote(hall)}/windows/{number}/call-next")
    else:
        assert ticket is not None
        if to == "transfer" and not group:
            ui.notify("请选择转到的业务 Choose the service to transfer to", type="negative")
            return
        reply = await call("POST", f"/api/hall/{quote(hall)}/tickets/{quote(ticket['id'])}/advance",
                           json={"to": to, **({"group": group} if group else {})})
    if reply.ok:
        ui.navigate.reload()
    else:
        ui.notify(problem_text(reply.body, reply.status), type="negative")


register_nav()
