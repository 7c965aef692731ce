"""一网协同 pages: booking appointments (预约) in the portal, and the service hall's call screen (叫号屏) and
kiosk (取号机). Every figure comes from the REST API as the signed-in user (or anonymously for the public
call screen); times are shown in the city's zone."""

from __future__ import annotations

from collections import defaultdict
from typing import Any
from urllib.parse import quote

from nicegui import ui

from cityos.core import clock, messages
from cityos.web.auth import Session
from cityos.web.portal import common
from cityos.web.portal.common import CITIZEN_ROLES, STAFF_ROLES, call, frame, problem_text

KIND_LABELS = {"hospital": "医院挂号 Hospital", "vaccination": "疫苗接种 Vaccination",
               "hall": "政务窗口 Service window"}
APPOINTMENT_STATUS = {"booked": ("已预约 Booked", "blue"), "cancelled": ("已取消 Cancelled", "grey"),
                      "noshow": ("爽约 Missed", "red"), "fulfilled": ("已就诊 Done", "green")}
SCREEN_CSS = """
body { background: #0b1d33 !important; }
.hall-screen { color: #fff; font-family: 'WenQuanYi Micro Hei', sans-serif; }
.hall-screen .call-number { font-size: 4.5rem; font-weight: 800; color: #ffd54f; letter-spacing: .05em; }
.hall-screen .call-window { font-size: 2.4rem; font-weight: 700; }
.hall-screen .queue-card { background: #12304f; border-radius: 10px; padding: 12px 18px; min-width: 15rem; }
.hall-screen .muted { color: #b0c4de; }
.kiosk-button { font-size: 1.8rem !important; min-height: 6rem; min-width: 18rem; font-weight: 700; }
"""


def register_nav() -> None:
    from cityos.web.shell import add_nav

    add_nav("预约 Appointments", "/portal/appointments", CITIZEN_ROLES, icon="event_available")
    add_nav("大厅 Service hall", "/hall/civic-centre/kiosk", STAFF_ROLES, icon="confirmation_number")
    add_nav("取号 Hall ticket", "/portal/hall/civic-centre", CITIZEN_ROLES, icon="confirmation_number")
    add_nav("阳光政务 Spending", "/transparency", icon="account_balance_wallet")


def slot_time(value: Any) -> str:
    return messages.local_time(value, "%m-%d %H:%M")


# ---------------------------------------------------------------------------------- appointments


@ui.page("/portal/appointments")
async def portal_appointments(schedule: str | None = None, move: str | None = None) -> Any:
    session = await common.login()
    if not isinstance(session, Session):
        return session
    with frame(session, "预约 Appointments", active="/portal/appointments"):
        ui.label("预约服务 Book an appointment").classes("text-2xl gov-title")
        listed = await call("GET", "/api/appointments/schedules")
        schedules = listed.body if listed.ok and isinstance(listed.body, list) else []
        if not schedules:
            ui.label("暂无可预约的服务 Nothing to book yet").classes("text-grey-8")
        with ui.row().classes("w-full gap-3 flex-wrap"):
            for item in schedules:
                chosen = item["id"] == schedule
                with ui.card().classes(f"gov-card p-3 t-schedule {'border-2 border-blue-8' if chosen else ''}"):
                    ui.label(f"{item['site']} · {item['service']}").classes("font-bold gov-title")
                    ui.label(" ".join(x for x in (KIND_LABELS.get(item["kind"], item["kind"]), item.get("actor") or "")
                                      if x)).classes("text-sm text-grey-8")
                    ui.link("选择时段 Choose a time →", f"/portal/appointments?schedule={quote(item['id'])}") \
                        .classes("t-choose")
        if schedule:
            if move:
                ui.label("改约：请选择新的时间 Rescheduling: choose the new time") \
                    .classes("text-lg text-primary t-moving")
            await _free_slots(schedule, move)
        await _my_appointments()


async def _free_slots(schedule: str, move: str | None = None) -> None:
    ui.label("可预约时段 Free times").classes("section-title mt-2")
    zone = messages.zone_name(clock.now().astimezone(messages.city_zone()))
    ui.label(f"时间为城市时间（{zone}） Times in the city's zone ({zone})").classes("text-sm text-grey-7")
    reply = await call("GET", "/api/appointments/slots", params={"scheduleId": schedule, "free": "true",
                                                                 "limit": 200})
    slots = reply.body if reply.ok and isinstance(reply.body, list) else []
    if not slots:
        ui.label("所选服务暂无空余时段 No free time left; join the waiting list below").classes("text-grey-8")
    by_day: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for slot in slots:
        by_day[messages.local_time(slot["start"], "%Y-%m-%d", zone=False)].append(slot)
    for day, day_slots in sorted(by_day.items()):
        ui.label(day).classes("font-bold mt-2")
        with ui.row().classes("gap-2 flex-wrap"):
            for slot in day_slots:
                ui.button(f"{messages.local_time(slot['start'], '%H:%M', zone=False)} · 余 {slot['free']}",
                          on_click=lambda s=slot: book(s, move)).props("outline no-caps").classes("t-slot")
    with ui.row().classes("items-center gap-2 mt-2"):
        day_input = ui.input("候补日期 Waiting-list day (YYYY-MM-DD)").props("outlined dense").classes("t-wait-day")

        async def wait() -> None:
            joined = await call("POST", "/api/appointments/waitlist",
                                json={"scheduleId": schedule, "day": day_input.value or ""})
            if joined.ok:
                ui.notify(f"已加入候补，第 {joined.body['position']} 位 On the waiting list, position "
                          f"{joined.body['position']}", type="positive")
            else:
                ui.notify(problem_text(joined.body, joined.status), type="negative")

        ui.button("加入候补 Join the waiting list", on_click=wait).props("no-caps").classes("t-wait")


async def book(slot: dict[str, Any], move: str | None = None) -> None:
    """Book the slot, or move the appointment `move` to it (改约: the old place is freed for the waiting list)."""
    if move:
        reply = await call("POST", f"/api/appointments/appointments/{quote(move)}/reschedule",
                           json={"slotId": slot["id"]})
    else:
        reply = await call("POST", "/api/appointments/appointments", json={"slotId": slot["id"]})
    if reply.ok:
        ui.notify(f"{'改约成功 Moved' if move else '预约成功 Booked'}: {slot_time(slot['start'])}", type="positive")
        ui.navigate.to(f"/portal/appointments?schedule={quote(slot['scheduleId'])}")
    else:
        ui.notify(f"预约未成功 Not booked: {problem_text(reply.body, reply.status)}", type="negative")


async def _my_appointments() -> None:
    ui.label("我的预约 My appointments").classes("section-title mt-4")
    reply = await call("GET", "/api/appointments/appointments/mine")
    mine = reply.body if reply.ok and isinstance(reply.body, list) else []
    if not mine:
        ui.label("暂无预约 No appointments").classes("text-grey-8 t-no-appointments")
    for item in mine:
        label, colour = APPOINTMENT_STATUS.get(item["status"], (item["status"], "blue-grey"))
        with ui.row().classes("gov-card w-full items-center gap-3 p-3 t-appointment"):
            ui.label(slot_time(item["start"])).classes("text-lg font-bold")
            ui.chip(label, color=colour, text_color="white").props("dense square")
            if item.get("fromWaitlist"):
                ui.chip("候补成功 From the waiting list", color="teal", text_color="white").props("dense square")
            ui.space()
            if item["status"] == "booked":
                ui.link("改约 Reschedule", f"/portal/appointments?schedule={quote(item['scheduleId'])}"
                                          f"&move={quote(item['id'])}").classes("t-reschedule")
                ui.button("取消 Cancel", on_click=lambda i=item: cancel(i)).props("flat no-caps color=negative") \
                    .classes("t-cancel")


async def cancel(item: dict[str, Any]) -> None:
    reply = await call("POST", f"/api/appointments/appointments/{quote(item['id'])}/cancel", json={})
    if reply.ok:
        ui.notify("已取消 Cancelled", type="positive")
        ui.navigate.reload()
    else:
        ui.notify(problem_text(reply.body, reply.status), type="negative")


# ---------------------------------------------------------------------------------- the hall


@ui.page("/hall/{hall}/screen")
async def hall_screen(hall: str) -> None:
    """The call screen on the hall's wall: public, refreshed every 3 s, no personal data."""
    ui.add_css(SCREEN_CSS)
    with ui.column().classes("hall-screen w-full p-6 gap-4"):
        with ui.row().classes("w-full items-baseline"):
            ui.label("叫号 Now calling").classes("text-3xl font-bold")
            ui.space()
            clock_label = ui.label().classes("text-2xl muted t-clock")
        calls = ui.column().classes("w-full gap-2 t-calls")
        queues = ui.row().classes("w-full gap-4 flex-wrap t-queues")

    async def refresh() -> None:
        reply = await call("GET", f"/api/hall/{quote(hall)}/board")  # a public read: no sign-in on the wall
        body = reply.body if reply.ok else None
        clock_label.text = messages.local_time(clock.now(), "%H:%M:%S")
        calls.clear()
        queues.clear()
        if not isinstance(body, dict):
            with calls:
                ui.label("大厅信息暂不可用 The hall's board is not available").classes("text-2xl")
            return
        with calls:
            latest = body.get("calls", [])[:5]
            if not latest:
                ui.label("请取号等候 Please take a ticket").classes("text-3xl muted")
            for item in latest:
                with ui.row().classes("items-baseline gap-8"):
                    ui.label(item["number"]).classes("call-number t-call-number")
                    ui.label(f"请到 {item['window']} 号窗口 → Window {item['window']}").classes("call-window")
        with queues:
            for queue in body.get("queues", []):
                with ui.column().classes("queue-card gap-1"):
                    ui.label(f"{queue['group']} · {queue['name']}").classes("text-xl font-bold")
                    ui.label(f"等候 {queue['waiting']} 人 waiting").classes("text-lg")
                    wait = queue.get("waitMinutes")
                    ui.label(f"预计 {wait:.0f} 分钟 about {wait:.0f} min" if wait is not None
                             else "暂停服务 Closed").classes("muted")

    await refresh()
    ui.timer(3.0, refresh)


@ui.page("/hall/{hall}/kiosk")
async def hall_kiosk(hall: str) -> Any:
    """The ticket machine (取号机): large buttons, one per service group; signed in as hall staff."""
    session = await common.login(STAFF_ROLES)
    if not isinstance(session, Session):
        return session
    with frame(session, "取号 Take a ticket", active=f"/hall/{hall}/kiosk", citizen=False):
        ui.add_css(SCREEN_CSS)
        ui.label("请选择办理的业务 Choose your service").classes("text-3xl gov-title")
        board = await call("GET", f"/api/hall/{quote(hall)}/board")
        if not board.ok:
            ui.label(problem_text(board.body, board.status)).classes("text-negative text-xl")
            return
        result = ui.column().classes("w-full t-kiosk-result")
        with ui.row().classes("gap-4 flex-wrap"):
            for queue in board.body.get("queues", []):
                async def take(code: str = queue["group"]) -> None:
                    reply = await call("POST", f"/api/hall/{quote(hall)}/tickets",
                                       json={"group": code, "channel": "kiosk"})
                    result.clear()
                    with result:
                        if reply.ok:
                            prediction = reply.body.get("prediction") or {}
                            ui.label(f"您的号码 Your number: {reply.body['number']}") \
                                .classes("text-5xl font-bold gov-title t-ticket-number")
                            ui.label(f"前面还有 {prediction.get('ahead', 0)} 人，预计等候 "
                                     f"{prediction.get('waitMinutes')} 分钟 · {prediction.get('ahead', 0)} ahead, "
                                     f"about {prediction.get('waitMinutes')} min").classes("text-2xl")
                        else:
                            ui.label(problem_text(reply.body, reply.status)).classes("text-2xl text-negative")

                ui.button(f"{queue['group']} {queue['name']}", on_click=take) \
                    .props("no-caps color=primary").classes("kiosk-button t-kiosk-group")
        ui.link("叫号屏 Call screen ↗", f"/hall/{quote(hall)}/screen").classes("text-lg")


@ui.page("/portal/hall/{hall}")
async def portal_hall(hall: str) -> Any:
    """A citizen takes a ticket online and watches it: people ahead and the predicted wait, refreshed."""
    session = await common.login(CITIZEN_ROLES)
    if not isinstance(session, Session):
        return session
    with frame(session, "网上取号 Hall ticket", active=f"/portal/hall/{hall}"):
        ui.label("网上取号 Take a hall ticket online").classes("text-2xl gov-title")
        board = await call("GET", f"/api/hall/{quote(hall)}/board")
        if not board.ok:
            ui.label(problem_text(board.body, board.status)).classes("text-negative")
            return
        cards = ui.row().classes("gap-3 flex-wrap")
        ui.label("我的号 My ticket (每 10 秒更新 updated every 10 s)").classes("section-title mt-2")
        mine = ui.column().classes("w-full gap-2 t-my-tickets")

        async def refresh() -> None:
            reply = await call("GET", f"/api/hall/{quote(hall)}/tickets/mine")
            tickets = reply.body if reply.ok and isinstance(reply.body, list) else []
            mine.clear()
            with mine:
                for ticket in tickets[:3]:
                    _my_ticket_card(ticket)

        with cards:
            for queue in board.body.get("queues", []):
                async def take(code: str = queue["group"]) -> None:
                    reply = await call("POST", f"/api/hall/{quote(hall)}/tickets",
                                       json={"group": code, "channel": "online"})
                    if reply.ok:
                        ui.notify(f"取号成功 {reply.body['number']} Ticket taken", type="positive")
                    else:
                        ui.notify(problem_text(reply.body, reply.status), type="negative")
                    await refresh()

                wait = queue.get("waitMinutes")
                with ui.card().classes("gov-card p-3 gap-1"):
                    ui.label(f"{queue['group']} {queue['name']}").classes("text-lg font-bold")
                    ui.label(f"等候 {queue['waiting']} 人 · 约 {wait:.0f} 分钟 about {wait:.0f} min" if wait is not None
                             else "暂停服务 Closed").classes("text-grey-8")
                    ui.button("取号 Take a ticket", on_click=take).props("unelevated color=primary no-caps") \
                        .classes("t-take-online")
        await refresh()
        ui.timer(10.0, refresh)


TICKET_STATUS = {"waiting": "等候中 Waiting", "called": "请到窗口 Please go to the window", "serving": "办理中 Serving",
                 "done": "已办结 Done", "noshow": "过号 Missed"}


def _my_ticket_card(ticket: dict[str, Any]) -> None:
    with ui.row().classes("gov-card w-full items-center gap-4 p-3 t-my-ticket"):
        ui.label(ticket["number"]).classes("text-4xl font-bold gov-title")
        ui.label(TICKET_STATUS.get(ticket["status"], ticket["status"])).classes("text-lg")
        prediction = ticket.get("prediction")
        if prediction:
            ui.label(f"前面 {prediction.get('ahead', 0)} 人，预计 {prediction.get('waitMinutes')} 分钟 · "
                     f"{prediction.get('ahead', 0)} ahead, about {prediction.get('waitMinutes')} min") \
                .classes("text-lg text-primary t-prediction")
        if ticket["status"] == "called" and ticket.get("window"):
            ui.label(f"{ticket['window']} 号窗口 Window {ticket['window']}").classes("text-xl font-bold text-positive")


register_nav()


# ---------------------------------------------------------------------------------- 阳光政务


def spending_chart(totals: list[dict[str, Any]]) -> dict[str, Any]:
    """ECharts options: budget and spending per department (ten thousand yuan, 万元)."""
    names = [labels_department(t["department"]) for t in totals]
    return {"tooltip": {"trigger": "axis"}, "legend": {"data": ["预算 Budget", "支出 Spent"], "top": 0},
            "grid": {"left": 60, "right": 20, "top": 40, "bottom": 70},
            "xAxis": {"type": "category", "data": names,
                      "axisLabel": {"interval": 0, "rotate": 20 if len(names) > 4 else 0}},
            "yAxis": {"type": "value", "name": "万元"},
            "series": [{"name": "预算 Budget", "type": "bar", "data": [round(t["budget"] / 1e4, 1) for t in totals]},
                       {"name": "支出 Spent", "type": "bar", "data": [round(t["spent"] / 1e4, 1) for t in totals]}]}


def labels_department(code: str) -> str:
    return messages.department(code)


@ui.page("/transparency")
async def transparency_page(year: int | None = None) -> None:
    """Public: each department's budget and spending for a year, as a chart and a table (预算公开)."""
    session = Session.current()
    if session.token:
        await session.me()
    with frame(session if session.user else None, "阳光政务 Spending", active="/transparency", citizen=False):
        ui.label("阳光政务 · 预算执行 Budget and spending").classes("text-2xl gov-title")
        reply = await call("GET", "/api/transparency/totals")
        totals = reply.body if reply.ok and isinstance(reply.body, list) else []
        years = sorted({t["year"] for t in totals}, reverse=True)
        shown_year = year if year in years else (years[0] if years else None)
        if shown_year is None:
            ui.label("尚无公开的预算 No budget published yet").classes("text-grey-8 t-no-budget")
            return
        with ui.row().classes("gap-2"):
            for option in years:
                ui.link(f"{option} 年", f"/transparency?year={option}").classes(
                    "text-lg font-bold" if option == shown_year else "text-lg")
        shown = [t for t in totals if t["year"] == shown_year]
        ui.echart(spending_chart(shown)).classes("w-full h-80 t-spending-chart")
        rows = [{"department": labels_department(t["department"]), "budget": f"{t['budget'] / 1e4:,.1f}",
                 "spent": f"{t['spent'] / 1e4:,.1f}",
                 "rate": f"{t['executionRate']:.1f}%" if t["executionRate"] is not None else "—"} for t in shown]
        ui.table(columns=[{"name": "department", "label": "部门 Department", "field": "department", "align": "left"},
                          {"name": "budget", "label": "预算（万元）Budget", "field": "budget"},
                          {"name": "spent", "label": "支出（万元）Spent", "field": "spent"},
                          {"name": "rate", "label": "执行率 Execution", "field": "rate"}],
                 rows=rows, row_key="department").classes("w-full t-spending-table")
