"""`/cockpit`: the operations centre's main screen (城市运行一张图).

KPI tiles over a map of the city with the live alarm and incident lists beside it. A one-second
timer refreshes at once when an ops event arrived on the bus (alarm raised, incident changed) and
otherwise every few seconds; only what changed goes to the browser.
"""

from __future__ import annotations

import time
from typing import Any

from fastapi.responses import RedirectResponse
from nicegui import ui
from shapely.geometry import Point, shape

from cityos.core import messages
from cityos.web.auth import ApiError, Session, fastapi_app, require_login
from cityos.web.cockpit import actions, data, traffic, trends
from cityos.web.cockpit.citymap import GROUPS, CityMap, district_feature
from cityos.web.cockpit.common import (
    COCKPIT_ROLES,
    fmt_minutes,
    fmt_time,
    incident_location,
    incident_sla,
    incident_time,
    incident_title,
)
from cityos.web.shell import frame, panel
from cityos.web.tiles import city_frame

REFRESH_SECONDS = 5.0
DISTRICT_SECONDS = 60.0


class TrafficTile:
    """The city's traffic performance index now, its 15-minute forecast with an arrow, the last hour's line."""

    def __init__(self) -> None:
        self.card = panel(classes="flex-1 min-w-[260px] cityos-kpi cityos-kpi-traffic")
        self.card.tooltip("城市交通运行指数 (GB/T 33171) 及15分钟预测 · City TPI and its 15-minute forecast")
        with self.card, ui.row().classes("items-center no-wrap gap-3"):
            self.icon = ui.icon("traffic", size="2.4rem")
            with ui.column().classes("gap-0"):
                with ui.row().classes("items-center no-wrap gap-2"):
                    self.value = ui.label("—").classes("cityos-kpi-value cityos-tpi-value")
                    self.level = ui.label("").classes("text-xs font-semibold px-1 rounded whitespace-nowrap "
                                                      "cityos-tpi-level")
                with ui.row().classes("items-center no-wrap gap-2"):
                    ui.label("交通指数 City TPI").classes("cityos-kpi-label")
                    self.spark = ui.html("").classes("cityos-tpi-trend").tooltip("近1小时 last hour")
                self.note = ui.label("").classes("text-xs text-slate-400 cityos-tpi-forecast")

    def set(self, value: str, level: str, note: str, spark: str, colour: str) -> None:
        if self.value.text != value:
            self.value.text = value
        if self.level.text != level:
            self.level.text = level
        self.value.style(f"color:{colour}")
        self.level.style(f"background:{colour};color:#0b1424")
        self.level.set_visibility(bool(level))
        self.icon.style(f"color:{colour}")
        if self.note.text != note:
            self.note.text = note
        if self.spark.content != spark:
            self.spark.content = spark


class Tile:
    def __init__(self, key: str, label: str, icon: str, colour: str) -> None:
        self.card = panel(classes=f"flex-1 min-w-[200px] cityos-kpi cityos-kpi-{key} cursor-pointer "
                                  "hover:brightness-125")
        self.card.tooltip("点击查看趋势与明细 Click for the trend and the list behind it")
        with self.card, ui.row().classes("items-center no-wrap gap-3"):
            ui.icon(icon, size="2.4rem").style(f"color:{colour}")
            with ui.column().classes("gap-0"):
                self.value = ui.label("—").classes("cityos-kpi-value").style(f"color:{colour}")
                ui.label(label).classes("cityos-kpi-label")
                self.note = ui.label("").classes("text-xs text-slate-500")

    def set(self, value: str, note: str = "") -> None:
        if self.value.text != value:
            self.value.text = value
        if self.note.text != note:
            self.note.text = note


def sla_figures(report: dict[str, Any]) -> tuple[float | None, float | None, str]:
    """(compliance %, mean response minutes, note) from the SLA report's totals (last 30 days).

    Compliance counts both clocks of each incident (response and resolution): met over decided.
    """
    total: dict[str, Any] = report.get("total") or {}
    met = decided = 0
    parts = []
    for name, label in (("response", "响应 response"), ("resolution", "处置 resolution")):
        clock: dict[str, Any] = total.get(name) or {}
        met += int(clock.get("met") or 0)
        decided += int(clock.get("met") or 0) + int(clock.get("breached") or 0)
        if isinstance(clock.get("compliance"), int | float):
            parts.append(f"{label} {clock['compliance']:.0f}%")
    compliance = 100.0 * met / decided if decided else None
    response = total.get("meanResponseMinutes")
    return compliance, float(response) if isinstance(response, int | float) else None, " · ".join(parts)


def device_states(devices: list[dict[str, Any]], alarms: list[dict[str, Any]]) -> dict[str, str]:
    """Device name → normal | alarm | offline | inactive."""
    alarmed = set()
    for alarm in alarms:
        for key in ("device", "deviceId", "source", "entityId", "entity_id", "entity"):
            value = alarm.get(key)
            if value:
                alarmed.add(str(value).rsplit(":", 1)[-1])
    states = {}
    for device in devices:
        name = str(device.get("name"))
        status = str(device.get("status"))
        if name in alarmed:
            states[name] = "alarm"
        elif status == "offline":
            states[name] = "offline"
        elif status == "inactive":
            states[name] = "inactive"
        else:
            states[name] = "normal"
    return states


def alarm_location(alarm: dict[str, Any], devices_by_name: dict[str, dict[str, Any]]) -> tuple[float, float] | None:
    loc = incident_location(alarm)
    if loc:
        return loc
    for key in ("device", "deviceId", "source", "entityId", "entity_id", "entity"):
        value = alarm.get(key)
        device = devices_by_name.get(str(value).rsplit(":", 1)[-1]) if value else None
        if device and device.get("location"):
            return float(device["location"]["lat"]), float(device["location"]["lon"])
    return None


@ui.page("/cockpit", title="城市运行一张图 · CityOS")
async def cockpit_page() -> RedirectResponse | None:
    session = await require_login(COCKPIT_ROLES)
    if not isinstance(session, Session):
        return session
    data.attach_bus(fastapi_app())
    with frame(session, "城市运行一张图 City operations", active="/cockpit"):
        # Shown while a storm group is open: new incidents of a category are being grouped, none lost.
        storm_banner = ui.label("").classes("w-full px-3 py-2 rounded font-semibold cityos-storm-banner") \
            .style("background:#7f1d1d;color:#fecaca;border:1px solid #ef4444")
        storm_banner.set_visibility(False)
        with ui.row().classes("w-full gap-3 no-wrap"):
            tiles = {
                "open": Tile("open", "在办事件 Open incidents", "report", "#f87171"),
                "sla": Tile("sla", "SLA 达标率 SLA compliance", "verified", "#4ade80"),
                "response": Tile("response", "平均响应 Mean response", "timer", "#facc15"),
                "online": Tile("online", "设备在线率 Devices online", "sensors", "#22d3ee"),
                "rate": Tile("rate", "数据接入 Readings / s", "speed", "#a78bfa"),
            }
            waste_tile = Tile("waste", "垃圾分类参与率 Sorting participation", "recycling", "#86efac")
            traffic_tile = TrafficTile()
        with ui.row().classes("w-full gap-3 no-wrap items-stretch").style("height: calc(100vh - 210px)"):
            with panel(classes="flex-[3] h-full p-1 relative"):
                bounds, labels = city_frame()
                city = CityMap(bounds, labels, "w-full h-full")
                _legend()
                traffic.legend()
                switches = _layer_switches(city)
                advice_box = ui.element("div").classes(
                    "absolute bottom-12 right-3 z-[1000] cityos-panel p-2 text-xs cityos-diversion") \
                    .style("background: rgba(6,13,27,.92) !important; max-width: 360px")
                advice_box.set_visibility(False)
            with ui.column().classes("flex-1 min-w-[380px] max-w-[480px] h-full gap-3 no-wrap"):
                with ui.row().classes("w-full items-center gap-2 cityos-district-filter") as filter_row:
                    filter_label = ui.label("").classes("text-sm text-sky-300")
                    clear_filter = ui.button("清除 Clear", icon="close").props("flat dense size=sm") \
                        .classes("cityos-clear-district")
                filter_row.set_visibility(False)
                with panel("实时告警 Active alarms", classes="w-full flex-1 overflow-auto cityos-alarms"):
                    alarm_box = ui.column().classes("w-full gap-1")
                with panel("在办事件 Open incidents", classes="w-full flex-1 overflow-auto cityos-incidents"):
                    incident_box = ui.column().classes("w-full gap-1")
                with panel("空气质量 AQI by district", classes="w-full overflow-auto cityos-aqi"):
                    aqi_box = ui.row().classes("w-full gap-1")
    for key, tile in tiles.items():
        tile.card.on("click", lambda k=key: trends.open_trend(session, k))
    waste_tile.card.on("click", lambda: ui.navigate.to("/waste/trends"))  # its weekly trends per community
    state: dict[str, Any] = {"busy": False, "last": 0.0, "pulse": -1, "districts_at": 0.0, "districts": [],
                             "lists": "", "district": None, "switches": switches}

    async def choose_district(key: str | None) -> None:
        """A click on a district filters the side panels to it; a second click (or Clear) shows all again."""
        key = None if not key or key == state["district"] else key
        state.update(district=key, lists="", last=0.0)
        names = {d["key"]: d["name"] for d in state["districts"]}
        filter_label.text = f"筛选区域 District: {names.get(key, key)}" if key else ""
        filter_row.set_visibility(bool(key))
        await city.select(key)
        await refresh()

    ui.on("cityos_district", lambda e: choose_district(str((e.args or {}).get("key") or "")))

    async def choose_segment(segment: str) -> None:
        """A click on a road segment: its 15-minute forecast and, when 中度拥堵 or worse, routes round it."""
        advice = await traffic.diversion(session, segment) if segment else None
        routes = (advice or {}).get("routes") or []
        await city.update({"diversion": {"type": "FeatureCollection", "features": [
            {"type": "Feature", "geometry": r["geometry"], "properties": {
                "label": f"绕行 Diversion via {' → '.join(r.get('via') or [])} · {r.get('minutes')} 分钟 min"}}
            for r in routes if r.get("geometry")]}})
        advice_box.clear()
        advice_box.set_visibility(advice is not None)
        if advice is None:
            return
        with advice_box:
            with ui.row().classes("items-center no-wrap w-full"):
                ui.label("路段预测与绕行 Forecast & diversion").classes("cityos-panel-title text-xs flex-1")
                ui.button(icon="close", on_click=lambda: choose_segment("")).props("flat dense size=xs") \
                    .classes("cityos-diversion-close")
            for n, line in enumerate(traffic.diversion_text(advice)):
                ui.label(line).classes("text-slate-100 font-semibold" if n == 0 else
                                       "text-cyan-300 cityos-diversion-route" if line.startswith("绕行")
                                       else "text-slate-300")

    ui.on("cityos_segment", lambda e: choose_segment(str((e.args or {}).get("id") or "")))
    clear_filter.on_click(lambda: choose_district(None))

    async def refresh() -> None:
        if state["busy"]:
            return
        now = time.monotonic()
        if data.Pulse.version == state["pulse"] and now - state["last"] < REFRESH_SECONDS:
            return
        state.update(busy=True, pulse=data.Pulse.version, last=now)
        try:
            await _refresh(session, city, tiles, alarm_box, incident_box, aqi_box, state, storm_banner)
            await _refresh_traffic(session, city, traffic_tile, state)
        except ApiError as exc:
            ui.notify(f"数据刷新失败 Refresh failed: {exc.detail}", type="negative")
        finally:
            state["busy"] = False

    ui.timer(1.0, refresh)
    ui.timer(DISTRICT_SECONDS, lambda: _refresh_waste(session, waste_tile))  # weekly figures: once a minute
    await refresh()
    return None


async def _refresh_traffic(session: Session, city: CityMap, tile: TrafficTile, state: dict[str, Any]) -> None:
    """The traffic layer and the city TPI tile (after `_refresh`, whose devices and incidents it reuses)."""
    segments, signal_rows, runs, parks, (forecast, history) = await data.gather(
        traffic.road_segments(session), traffic.signals(session), traffic.emergency_runs(session),
        traffic.car_parks(session), traffic.city_index(session))
    tile.set(*traffic.tile_figures(forecast, history))
    await city.update(traffic.layers(segments or [], signal_rows or [], runs or [], parks or [],
                                     state.get("incidents_seen") or [], state.get("devices_by_name") or {}))


async def _refresh_waste(session: Session, tile: Tile) -> None:
    """Waste sorting of the last 30 days, as the evaluation's livelihood.waste_sorting_* indicators count it."""
    sorting = await data.waste_sorting(session)
    participation, accuracy = sorting["participation"], sorting["accuracy"]
    tile.set("—" if participation is None else f"{participation:.1f}%",
             ("准确率 accuracy " + ("—" if accuracy is None else f"{accuracy:.1f}%")
              + f" · {sorting['cards']:,} 户 cards · 近30天 30 d") if sorting["communities"] else "")


def _legend() -> None:
    with ui.element("div").classes("absolute bottom-3 left-3 z-[1000] cityos-panel p-2 text-xs cityos-legend") \
            .style("background: rgba(6,13,27,.85) !important"):
        ui.label("图例 Legend").classes("cityos-panel-title text-xs")
        for state, label in (("normal", "设备正常 Device normal"), ("alarm", "设备告警 Device alarm"),
                             ("offline", "设备离线 Device offline")):
            with ui.row().classes("items-center gap-1 no-wrap"):
                ui.element("span").style(f"display:inline-block;width:10px;height:10px;border-radius:50%;"
                                         f"background:{data.DEVICE_COLOURS[state]}")
                ui.label(label).classes("text-slate-300")
        with ui.row().classes("items-center gap-1 no-wrap"):
            ui.element("span").style("display:inline-block;width:12px;height:12px;border-radius:50% 50% 50% 0;"
                                     "background:#ef4444;border:1px solid #fff")
            ui.label("事件 Incident").classes("text-slate-300")
        ui.label("区域填色 = AQI 等级 District fill = AQI category").classes("text-slate-400 mt-1")
        with ui.row().classes("gap-0 no-wrap"):
            for _upper, label, colour in data.AQI_CATEGORIES:
                ui.element("span").style(f"display:inline-block;width:22px;height:8px;background:{colour}") \
                    .tooltip(label)



async def _refresh(session: Session, city: CityMap, tiles: dict[str, Tile], alarm_box: ui.column,
                   incident_box: ui.column, aqi_box: ui.row, state: dict[str, Any],
                   storm_banner: ui.label | None = None) -> None:
    now = time.monotonic()
    want_districts = not state["districts"] or now - state["districts_at"] > DISTRICT_SECONDS
    (districts, devices, health, alarms, incidents, report, aqi) = await data.gather(
        data.districts(session) if want_districts else _const(state["districts"]),
        data.devices(session), data.device_health(session), data.alarms(session),
        data.incidents(session, open="true", kind="incident"), data.sla_report(session), data.aqi(session))
    if want_districts and districts is not None:
        state.update(districts=districts, districts_at=now)
    districts = state["districts"]
    devices, alarms, incidents = devices or [], alarms or [], incidents or []
    health, report, aqi = health or {}, report or {}, aqi or {}
    open_items = [i for i in incidents if str(i.get("status")) in data.OPEN_STATUSES]
    state.update(incidents_seen=open_items, devices_by_name={str(d.get("name")): d for d in devices})

    # ---- tiles
    breached = sum(1 for i in open_items if incident_sla(i) == "breached")
    tiles["open"].set(str(len(open_items)), f"超时 {breached} breached" if breached else "")
    compliance, response, note = sla_figures(report)
    tiles["sla"].set("—" if compliance is None else f"{compliance:.1f}%", note or "近30天 last 30 days")
    tiles["response"].set(fmt_minutes(response), "上报→接单 report → accept")
    online, total, offline = data.devices_online(health)
    tiles["online"].set("—" if not total else f"{100.0 * online / total:.1f}%",
                        f"{online:,}/{total:,} 在线 online · {offline:,} 离线 offline" if total else "")
    storms = [i for i in open_items if i.get("kind") == "storm"]
    if storm_banner is not None:
        text = " ; ".join(f"告警风暴 Alarm storm: {messages.category(i.get('category'))} — "
                          f"{int(i.get('reportCount') or 0)} 起新事件已归组 new incidents grouped (#{i.get('id')})"
                          for i in storms)
        if storm_banner.text != text:
            storm_banner.text = text
        storm_banner.set_visibility(bool(storms))
    tiles["rate"].set(f"{data.RATE.rate():,.1f}", "近10秒 last 10 s")
    trends.HISTORY.record("online", 100.0 * online / total if total else None)
    trends.HISTORY.record("rate", data.RATE.rate())

    # ---- map
    states = device_states(devices, alarms)
    by_name = {str(d.get("name")): d for d in devices}
    features = []
    for d in districts:
        # The environment domain names districts by their `name`; seeded cities may use the id's key.
        value = (aqi.get(d["key"]) or aqi.get(data.district_key(d["name"])) or {}).get("aqi")
        label, colour = data.aqi_category(value)
        features.append(district_feature(d, colour, value, label))
    device_points = [[d["location"]["lat"], d["location"]["lon"], states.get(str(d.get("name")), "normal"),
                      f"{d.get('name')} · {messages.label('profile', d.get('profile'))} · "
                      f"{messages.label('status', states.get(str(d.get('name')), 'normal'))}"]
                     for d in devices if d.get("location")]
    alarm_points = []
    for alarm in alarms:
        where = alarm_location(alarm, by_name)
        if where:
            colour = data.SEVERITY_COLOURS.get(str(alarm.get("severity")), "#ef4444")
            alarm_points.append([where[0], where[1], colour, _alarm_title(alarm)])
    incident_points = []
    for item in open_items:
        where = incident_location(item)
        if where:
            colour = "#dc2626" if incident_sla(item) == "breached" else "#f97316"
            incident_points.append([where[0], where[1], colour, incident_title(item), str(item.get("id")),
                                    incident_sla(item)])
    await city.update({"deviceColours": data.DEVICE_COLOURS,
                       "districts": {"type": "FeatureCollection", "features": features},
                       "devices": device_points, "alarms": alarm_points, "incidents": incident_points})

    # ---- side lists (rebuilt only when their content changed), filtered to the chosen district
    chosen = state.get("district")
    if chosen:
        area = next((shape(d["geometry"]) for d in districts if d["key"] == chosen), None)
        alarms = [a for a in alarms if _in_district(a, alarm_location(a, by_name), chosen, area)]
        open_items = [i for i in open_items if _in_district(i, incident_location(i), chosen, area)]
        aqi = {k: v for k, v in aqi.items() if k == chosen}
    signature = repr((chosen, [(a.get("id"), a.get("status")) for a in alarms],
                      [(i.get("id"), i.get("status"), incident_sla(i)) for i in open_items],
                      sorted((k, (v or {}).get("aqi")) for k, v in aqi.items())))
    if signature == state["lists"]:
        return
    state["lists"] = signature
    alarm_box.clear()
    with alarm_box:
        if not alarms:
            ui.label("暂无告警 No active alarms").classes("text-slate-500")
        for alarm in alarms[:50]:
            actions.alarm_row(session, alarm)
    incident_box.clear()
    with incident_box:
        if not open_items:
            ui.label("暂无在办事件 No open incidents").classes("text-slate-500")
        names = {d["key"]: d["name"] for d in districts}
        for item in open_items[:50]:
            _incident_row(item, names)
    aqi_box.clear()
    with aqi_box:
        names = {d["key"]: d["name"] for d in districts}
        if not aqi:
            ui.label("暂无数据 No AQI yet").classes("text-slate-500")
        for key, row in sorted(aqi.items(), key=lambda kv: -((kv[1] or {}).get("aqi") or 0)):
            value = (row or {}).get("aqi")
            label, colour = data.aqi_category(value)
            name = names.get(key) or (row or {}).get("name") or key
            ui.label(f"{name} {'—' if value is None else f'{value:.0f}'}") \
                .classes("px-2 py-0.5 rounded text-xs font-semibold cityos-aqi-chip") \
                .style(f"background:{colour};color:{'#111' if colour in ('#ffff00', '#00e400') else '#fff'}") \
                .tooltip(label)


async def _const(value: Any) -> Any:
    return value


def _in_district(item: dict[str, Any], where: tuple[float, float] | None, key: str, area: Any) -> bool:
    """Does an alarm or incident belong to district `key`: its district reference, else its location."""
    named = item.get("district") or item.get("refDistrict")
    if named:
        return data.district_key(named) == key
    return bool(where and area is not None and area.covers(Point(where[1], where[0])))


def _layer_switches(city: CityMap) -> dict[str, Any]:
    """The operator's layer switches, over the map's top-left corner."""
    switches: dict[str, Any] = {}
    with ui.element("div").classes("absolute top-3 left-3 z-[1000] cityos-panel p-2 text-xs cityos-layers") \
            .style("background: rgba(6,13,27,.85) !important"):
        ui.label("图层 Layers").classes("cityos-panel-title text-xs")
        with ui.column().classes("gap-0"):
            for key, label in GROUPS:
                switches[key] = ui.checkbox(label, value=True,
                                            on_change=lambda e, k=key: city.set_group(k, bool(e.value))) \
                    .props("dense size=xs").classes(f"text-slate-300 cityos-layer-{key}")
    return switches


def _alarm_title(alarm: dict[str, Any]) -> str:
    return actions.alarm_title(alarm)


def _incident_row(item: dict[str, Any], names: dict[str, str]) -> None:
    sla = incident_sla(item)
    with ui.row().classes("w-full items-center gap-2 no-wrap cursor-pointer hover:bg-slate-800 rounded px-1 "
                          "cityos-incident-row") \
            .on("click", lambda i=str(item.get("id")): ui.navigate.to(f"/cockpit/incidents/{i}")):
        ui.icon("report", color="red-4")
        with ui.column().classes("gap-0 flex-1 min-w-0"):
            ui.label(incident_title(item)).classes("text-slate-100 ellipsis w-full")
            ui.label(f"{messages.category(item.get('category'))} · "
                     f"{data.INCIDENT_STATUS_LABELS.get(str(item.get('status')), item.get('status'))} · "
                     f"{names.get(data.district_key(item.get('district')), item.get('district') or '')} · "
                     f"{fmt_time(incident_time(item))}") \
                .classes("text-xs text-slate-400")
        if sla:
            ui.badge(data.SLA_LABELS.get(sla, sla), color=data.SLA_COLOURS.get(sla, "grey")).props("outline")
