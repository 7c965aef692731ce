"""智慧停车 Citizens' parking pages in the portal.

- `/portal/parking`: find: a destination (tap the map, or `?near=lat,lon`) and an arrival time → the
  nearest car parks with spaces predicted free at arrival, distance, first-hour price, EV chargers;
- `/portal/parking/reserve?carpark=…`: hold a space for a time window (city time, Asia/Shanghai);
- `/portal/parking/mine`: my plates, my reservations (cancel), my sessions and bills with their payments,
  and a refund request (a dispute of the bill).

Every figure and every rule comes from the parking API (`/api/parking`, called in-process as the
signed-in citizen): the pages compute nothing the service decides, and a citizen sees only what the
API answers for them (their own plates, reservations and sessions).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any
from urllib.parse import quote

from nicegui import ui

from cityos.core import clock
from cityos.core.messages import city_zone
from cityos.web.auth import Session
from cityos.web.portal import common
from cityos.web.portal.citizen import district_map
from cityos.web.portal.common import Reply, call, frame, items_of, problem_text, when

API = "/api/parking"
CITY_CENTRE = (20.02, 110.33)
ARRIVALS = {0: "现在 Now", 30: "30 分钟后 In 30 min", 60: "1 小时后 In 1 hour", 120: "2 小时后 In 2 hours",
            240: "4 小时后 In 4 hours"}
DURATIONS = {1: "1 小时 1 hour", 2: "2 小时 2 hours", 3: "3 小时 3 hours", 4: "4 小时 4 hours",
             8: "8 小时 8 hours"}
RESERVATION_STATES = {"held": ("已预约 Reserved", "blue"), "used": ("已入场 Used", "green"),
                      "cancelled": ("已取消 Cancelled", "grey"), "released": ("未到场已释放 Released (no-show)",
                                                                            "orange")}
SESSION_STATES = {"open": ("在场 Parked", "indigo"), "paid": ("已支付 Paid", "green"),
                  "unpaid": ("待支付 Unpaid", "red"), "disputed": ("退款申请中 Refund requested", "orange"),
                  "refunded": ("已退款 Refunded", "teal")}
PAYMENT_KINDS = {"charge": "扣费 Charge", "refund": "退款 Refund"}


def yuan(fen: Any) -> str:
    """Fen (分) as ¥ with two decimals; '—' when unknown."""
    if isinstance(fen, bool) or not isinstance(fen, int | float):
        return "—"
    return f"¥{fen / 100:.2f}"


def distance_text(metres: Any) -> str:
    if not isinstance(metres, int | float):
        return "—"
    return f"{metres:.0f} 米 m" if metres < 1000 else f"{metres / 1000:.1f} 公里 km"


def chip(states: dict[str, tuple[str, str]], status: str) -> None:
    label, colour = states.get(status, (status, "grey"))
    ui.chip(label, color=colour, text_color="white").props("dense square").classes(f"t-state-{status}")


def failure(reply: Reply, action: str) -> str:
    """A refusal in plain words, Chinese first; the API's own detail after it."""
    detail = problem_text(reply.body, reply.status)
    title = str(reply.body.get("title", "")) if isinstance(reply.body, dict) else ""
    low = f"{title} {detail}".lower()
    if reply.status == 404:
        head = "找不到该停车场或记录 Not found"
    elif reply.status == 403:
        head = "无权查看或操作 Not yours"
    elif "full" in low or "no space" in low:
        head = "车位已满 The car park is full"
    elif "past" in low:
        head = "所选时段已过去，请选择以后的时间 The time has passed; choose a later time"
    elif "closed then" in low:
        head = "该时段停车场不营业 The car park is closed then"
    elif "plate" in low or "licence" in low:
        head = "车牌号格式不正确 Check the plate, e.g. 琼A·12345"
    elif "already holds" in low:
        head = "该车辆已在此预约 This vehicle already has a reservation here"
    elif "another account" in low:
        head = "该车牌已绑定其他账号 The plate belongs to another account"
    else:
        head = f"{action}未成功 Not done"
    return f"{head}（{detail}）"


async def carpark_names() -> dict[str, str]:
    reply = await call("GET", f"{API}/carparks", params={"limit": 1000})
    return {str(c["id"]): str(c.get("name", c["id"])) for c in items_of(reply.body)
            if isinstance(c, dict)} if reply.ok else {}


def parking_nav(active: str) -> None:
    with ui.row().classes("gap-2"):
        for path, text, icon in (("/portal/parking", "找车位 Find", "search"),
                                 ("/portal/parking/mine", "我的停车与账单 My parking and bills", "receipt_long")):
            ui.button(text, icon=icon, on_click=lambda p=path: ui.navigate.to(p)) \
                .props(f"{'unelevated' if path == active else 'outline'} no-caps color=primary")


# ---------------------------------------------------------------------------------- find


class Finder:
    """The find page's state: the destination pin and its marker."""

    def __init__(self, lat: float, lon: float) -> None:
        self.pin = (lat, lon)
        self.map: Any = None
        self.marker: Any = None
        self.where: Any = None

    def place(self, lat: float, lon: float) -> None:
        self.pin = (round(lat, 6), round(lon, 6))
        if self.marker is None:
            self.marker = self.map.marker(latlng=self.pin)
        else:
            self.marker.move(*self.pin)
        self.where.text = f"目的地 Destination: {self.pin[0]:.5f}, {self.pin[1]:.5f}"


def parse_near(near: str) -> tuple[float, float]:
    try:
        lat, lon = (float(part) for part in near.split(","))
    except ValueError:
        return CITY_CENTRE
    return (lat, lon) if -90 <= lat <= 90 and -180 <= lon <= 180 else CITY_CENTRE


@ui.page("/portal/parking", title="智慧停车 Parking · CityOS")
async def portal_parking(near: str = "") -> Any:
    session = await common.login(common.CITIZEN_ROLES)
    if not isinstance(session, Session):
        return session
    finder = Finder(*parse_near(near))
    with frame(session, "智慧停车 Parking", active="/portal/parking"):
        ui.label("智慧停车 Find a parking space").classes("text-2xl gov-title")
        parking_nav("/portal/parking")
        with ui.card().classes("gov-card w-full p-4 gap-3"):
            ui.label("1 目的地 Where are you going? 点击地图选择 Tap the map").classes("section-title")
            finder.map = await district_map(finder.pin, 15, "16rem")
            finder.where = ui.label("").classes("t-where")
            finder.place(*finder.pin)
            finder.map.on("map-click", lambda e: finder.place(e.args["latlng"]["lat"], e.args["latlng"]["lng"]))
            ui.label("地图上红点为停车场 Red dots are car parks").classes("text-grey-8 text-sm")
            ui.label("2 到达时间 When do you arrive?").classes("section-title")
            arrival = ui.select(ARRIVALS, value=30, label="到达 Arrival").props("outlined") \
                .classes("w-64 t-arrival")
            ui.button("查找车位 Find car parks", icon="search", on_click=lambda: results.refresh()) \
                .props("unelevated no-caps color=primary size=lg").classes("t-find")

        @ui.refreshable
        async def results() -> None:
            minutes = int(arrival.value or 0)
            at = clock.now() + timedelta(minutes=minutes)
            reply = await call("GET", f"{API}/guidance", params={
                "near": f"{finder.pin[0]},{finder.pin[1]}", "arrival": clock.iso(at), "radius": 5000, "limit": 8})
            if not reply.ok:
                ui.label(failure(reply, "查询")).classes("text-negative t-find-error")
                return
            found = [c for c in items_of(reply.body) if isinstance(c, dict)]
            ui.label(f"预计 {when(clock.iso(at))} 到达时有空位的停车场 Car parks with free spaces "
                     f"predicted at your arrival").classes("section-title")
            if not found:
                ui.label("附近 5 公里内暂无空位 No free spaces predicted within 5 km").classes("text-grey-8 t-none")
            for carpark in found:
                carpark_card(carpark, minutes)
                # Car parks as red dots, the destination as the pin: told apart at a glance.
                finder.map.generic_layer(name="circleMarker", args=[
                    [carpark["location"]["lat"], carpark["location"]["lon"]],
                    {"radius": 9, "color": "#b71c1c", "fillColor": "#e53935", "fillOpacity": 0.9}])

        await results()


def carpark_card(carpark: dict[str, Any], minutes: int) -> None:
    ident = str(carpark["id"])
    with ui.card().classes(f"gov-card w-full p-4 gap-1 t-carpark carpark-{ident}"):
        with ui.row().classes("items-center w-full gap-3"):
            ui.label(str(carpark.get("name"))).classes("text-lg font-bold gov-title t-carpark-name")
            ui.space()
            ui.label(distance_text(carpark.get("distanceM"))).classes("text-grey-8 t-distance")
        with ui.row().classes("gap-6 w-full"):
            predicted = carpark.get("predictedFreeAtArrival")
            basis = ("按历史占用预测 predicted from history" if carpark.get("prediction") == "history"
                     else "按当前占用 from current occupancy")
            ui.label(f"到达时空位 Free at arrival: {predicted}（{basis}）").classes("t-predicted")
            ui.label(f"当前空位 Free now: {carpark.get('availableSpotNumber')}")
            ui.label(f"首小时 First hour: {yuan(carpark.get('firstHourPrice'))} · "
                     f"免费 {carpark.get('freeMinutes')} 分钟 free minutes").classes("t-price")
            ev = int(carpark.get("evChargers") or 0)
            ui.label(f"充电桩 EV chargers: {ev}" if ev else "无充电桩 No EV chargers").classes("t-ev")
        ui.button("预约车位 Reserve", icon="event_available",
                  on_click=lambda: ui.navigate.to(f"/portal/parking/reserve?carpark={quote(ident)}"
                                                  f"&arrival={minutes}")) \
            .props("unelevated no-caps color=red-9").classes("t-reserve-open")


# ---------------------------------------------------------------------------------- reserve


def window_start(day: str, hhmm: str) -> datetime | None:
    """A date (YYYY-MM-DD) and a city-time HH:MM as an aware moment (None when malformed)."""
    try:
        local = datetime.strptime(f"{day} {hhmm.strip()}", "%Y-%m-%d %H:%M")
    except ValueError:
        return None
    return local.replace(tzinfo=city_zone())


@ui.page("/portal/parking/reserve", title="预约车位 Reserve · CityOS")
async def portal_parking_reserve(carpark: str = "", arrival: int = 30) -> Any:
    session = await common.login(common.CITIZEN_ROLES)
    if not isinstance(session, Session):
        return session
    with frame(session, "预约车位 Reserve", active="/portal/parking"):
        ui.label("预约车位 Reserve a space").classes("text-2xl gov-title")
        parking_nav("")
        reply = await call("GET", f"{API}/carparks/{quote(carpark[:64], safe='')}") if carpark else None
        if reply is None or not reply.ok:
            ui.label("找不到该停车场 Unknown car park" if reply is None or reply.status == 404
                     else failure(reply, "查询")).classes("text-lg text-negative t-unknown")
            ui.link("返回找车位 Back to find", "/portal/parking")
            return
        info = reply.body
        mine = await call("GET", f"{API}/reservations/mine")
        plates = [str(r["plate"]) for r in items_of(mine.body) if isinstance(r, dict)] if mine.ok else []
        local = (clock.now() + timedelta(minutes=max(0, min(arrival, 240)) + 14)).astimezone(city_zone())
        local = local.replace(minute=local.minute // 15 * 15, second=0, microsecond=0)
        today = clock.now().astimezone(city_zone()).date()
        days = {(today + timedelta(days=n)).isoformat(): f"{label} {(today + timedelta(days=n)).isoformat()}"
                for n, label in ((0, "今天 Today"), (1, "明天 Tomorrow"))}
        with ui.card().classes("gov-card w-full max-w-2xl p-5 gap-3"):
            ui.label(str(info.get("name"))).classes("text-xl font-bold gov-title t-reserve-name")
            tariff = info.get("tariff") or {}
            hours = info.get("openingHours") or {}
            open_text = ("24 小时 Open 24 h" if hours.get("opens") == hours.get("closes")
                         else f"{hours.get('opens')}–{hours.get('closes')}")
            ui.label(f"空位 Free now: {info.get('availableSpotNumber')} / {info.get('totalSpotNumber')} · "
                     f"营业 Open: {open_text} · 充电桩 EV chargers: {info.get('evChargers')}").classes("text-grey-8")
            ui.label(f"收费 Tariff: 免费 {tariff.get('freeMinutes')} 分钟 free minutes, 白天 day "
                     f"{yuan(tariff.get('hourRate'))}/小时 h, 夜间 night {yuan(tariff.get('nightRate'))}/小时 h"
                     + (f", 每日封顶 daily cap {yuan(tariff.get('dailyCap'))}" if tariff.get("dailyCap") else "")) \
                .classes("text-grey-8")
            plate = ui.input("车牌号 Plate", value=plates[0] if plates else "", placeholder="例如 e.g. 琼A·12345") \
                .props("outlined maxlength=16").classes("w-64 t-plate")
            with ui.row().classes("gap-3 items-end"):
                day = ui.select(days, value=local.date().isoformat(), label="日期 Date").props("outlined") \
                    .classes("w-56 t-day")
                start = ui.input("开始 Start（北京时间 CST）", value=local.strftime("%H:%M")) \
                    .props("outlined mask=##:## fill-mask").classes("w-56 t-start")
                hours_select = ui.select(DURATIONS, value=2, label="时长 Duration").props("outlined") \
                    .classes("w-40 t-duration")
            ui.label("车位保留至开始后 15 分钟，未到场自动释放。A space is held until 15 minutes after the start; "
                     "then it is released if you have not arrived.").classes("text-grey-8 text-sm")
            result = ui.label("").classes("t-result text-lg")

            async def submit() -> None:
                begin = window_start(str(day.value), start.value or "")
                if begin is None:
                    result.text = "请填写开始时间，如 09:30 Enter a start time such as 09:30"
                    result.classes(replace="t-result text-lg text-negative")
                    return
                end = begin + timedelta(hours=int(hours_select.value or 1))
                bound = await call("POST", f"{API}/vehicles", json={"plate": (plate.value or "").strip()})
                if not bound.ok:
                    result.text = failure(bound, "预约")
                    result.classes(replace="t-result text-lg text-negative")
                    return
                made = await call("POST", f"{API}/reservations", json={
                    "carparkId": info["id"], "plate": bound.body["plate"], "start": begin.isoformat(),
                    "end": end.isoformat()})
                if not made.ok:
                    result.text = failure(made, "预约")
                    result.classes(replace="t-result text-lg text-negative")
                    return
                result.text = (f"预约成功 Reserved: {made.body['plate']}，{when(made.body['start'])} – "
                               f"{when(made.body['end'])}，编号 No. {made.body['id']}")
                result.classes(replace="t-result text-lg text-positive t-reserved")

            ui.button("确认预约 Reserve", icon="check", on_click=submit) \
                .props("unelevated no-caps color=primary size=lg").classes("t-reserve")


# ---------------------------------------------------------------------------------- mine


@ui.page("/portal/parking/mine", title="我的停车与账单 My parking and bills · CityOS")
async def portal_parking_mine() -> Any:
    session = await common.login(common.CITIZEN_ROLES)
    if not isinstance(session, Session):
        return session
    with frame(session, "我的停车 My parking", active="/portal/parking"):
        ui.label("我的停车与账单 My parking and bills").classes("text-2xl gov-title")
        parking_nav("/portal/parking/mine")
        names = await carpark_names()

        with ui.card().classes("gov-card w-full p-4 gap-2"):
            ui.label("绑定车牌（无感支付）Add a plate (pay without stopping)").classes("section-title")
            with ui.row().classes("items-end gap-3"):
                plate = ui.input("车牌号 Plate", placeholder="例如 e.g. 琼A·12345").props("outlined maxlength=16") \
                    .classes("w-64 t-add-plate")

                async def add() -> None:
                    reply = await call("POST", f"{API}/vehicles", json={"plate": (plate.value or "").strip()})
                    if not reply.ok:
                        ui.notify(failure(reply, "绑定"), type="negative", multi_line=True)
                        return
                    ui.notify(f"已绑定 Added {reply.body['plate']}", type="positive")
                    bills.refresh()

                ui.button("绑定 Add", on_click=add).props("outline no-caps").classes("t-add-plate-button")

        @ui.refreshable
        async def reservations() -> None:
            reply = await call("GET", f"{API}/reservations/mine")
            items = [r for r in items_of(reply.body) if isinstance(r, dict)] if reply.ok else []
            ui.label("我的预约 My reservations").classes("section-title")
            if not items:
                ui.label("暂无预约 No reservations").classes("text-grey-8")
            for item in items[:20]:
                with ui.card().classes(f"gov-card w-full p-3 gap-1 t-reservation reservation-{item['id']}"):
                    with ui.row().classes("items-center w-full gap-3"):
                        ui.label(names.get(str(item["carparkId"]), str(item["carparkId"]))) \
                            .classes("font-bold gov-title")
                        chip(RESERVATION_STATES, str(item.get("status")))
                        ui.space()
                        ui.label(str(item.get("plate"))).classes("t-plate-shown")
                    ui.label(f"{when(item['start'])} – {when(item['end'])}").classes("text-grey-8")
                    if item.get("status") == "held":
                        ui.label(f"未到场将于 {when(item.get('releaseAt'))} 释放 Released at that time if you have "
                                 "not arrived").classes("text-grey-8 text-sm")

                        async def cancel(ident: str = str(item["id"])) -> None:
                            done = await call("POST", f"{API}/reservations/{quote(ident)}/cancel")
                            if not done.ok:
                                ui.notify(failure(done, "取消"), type="negative", multi_line=True)
                                return
                            ui.notify("已取消 Cancelled", type="positive")
                            reservations.refresh()

                        ui.button("取消预约 Cancel", icon="close", on_click=cancel) \
                            .props("outline no-caps color=red-9 dense").classes("t-cancel")

        @ui.refreshable
        async def bills() -> None:
            reply = await call("GET", f"{API}/sessions/mine")
            items = [s for s in items_of(reply.body) if isinstance(s, dict)] if reply.ok else []
            ui.label("停车记录与账单 Parking sessions and bills").classes("section-title")
            if not items:
                ui.label("暂无停车记录 No parking sessions yet").classes("text-grey-8 t-no-sessions")
            for item in items[:20]:
                detail = await call("GET", f"{API}/sessions/{quote(str(item['id']))}")
                paid = detail.body.get("payments", []) if detail.ok and isinstance(detail.body, dict) else []
                session_card(item, paid, names, bills.refresh)

        await reservations()
        await bills()


def session_card(item: dict[str, Any], paid: list[dict[str, Any]], names: dict[str, str], refresh: Any) -> None:
    ident = str(item["id"])
    status = str(item.get("status"))
    with ui.card().classes(f"gov-card w-full p-3 gap-1 t-session session-{ident}"):
        with ui.row().classes("items-center w-full gap-3"):
            ui.label(names.get(str(item["carparkId"]), str(item["carparkId"]))).classes("font-bold gov-title")
            chip(SESSION_STATES, status)
            ui.space()
            ui.label(str(item.get("plate"))).classes("t-plate-shown")
        ui.label(f"入场 In {when(item.get('entry'))}" + (f" · 出场 Out {when(item['exit'])}" if item.get("exit")
                                                        else " · 在场 still parked")).classes("text-grey-8")
        ui.label(f"费用 Fee: {yuan(item.get('fee'))}").classes("text-lg t-fee")
        for payment in paid:
            kind = PAYMENT_KINDS.get(str(payment.get("kind")), str(payment.get("kind")))
            outcome = "成功 succeeded" if payment.get("status") == "succeeded" else "失败 failed"
            ui.label(f"{kind} {yuan(payment.get('amount'))} · {outcome} · {when(payment.get('at'))}") \
                .classes("text-sm t-payment")
        if item.get("dispute"):
            ui.label(f"退款理由 Reason: {item['dispute']}").classes("text-sm text-grey-8")
        if status in ("paid", "unpaid"):
            reason = ui.input("退款理由 Why should it be refunded?").props("outlined dense maxlength=1000") \
                .classes("w-full t-dispute-reason")

            async def request_refund() -> None:
                reply = await call("POST", f"{API}/sessions/{quote(ident)}/dispute",
                                   json={"reason": (reason.value or "").strip()})
                if not reply.ok:
                    ui.notify("请填写理由 Give a reason" if reply.status == 400 else failure(reply, "申请"),
                              type="negative", multi_line=True)
                    return
                ui.notify("退款申请已提交 Refund request sent", type="positive")
                refresh()

            ui.button("申请退款 Request a refund", icon="undo", on_click=request_refund) \
                .props("outline no-caps dense").classes("t-dispute")
