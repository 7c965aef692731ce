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

from cityos.core import messages
from cityos.web.auth import ApiError, Session, fastapi_app, require_login
from cityos.web.cockpit import actions, data
from cityos.web.cockpit.citymap import CityMap
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

REFRESH_SECONDS = 5.0
DISTRICT_SECONDS = 60.0


class Tile:
    def __init__(self, key: str, label: str, icon: str, colour: str) -> None:
        with panel(classes=f"flex-1 min-w-[200px] cityos-kpi cityos-kpi-{key}"), \
                ui.row().classes("items-center no-wrap gap-3"):
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
        with ui.row().classes("w-full gap-3 no-wrap items-stretch").style("height: calc(100vh - 210px)"):
            with panel(classes="flex-[3] h-full p-1 relative"):
                city = CityMap("w-full h-full")
                _legend()
            with ui.column().classes("flex-1 min-w-[380px] max-w-[480px] h-full gap-3 no-wrap"):
                with panel("实时告警 Active alarms", classes="w-full flex-1 overflow-auto cityos-alarms"):
                    alarm_box = ui.column().classes("w-full gap-1")
                with panel("在办事件 Open incidents", classes="w-full flex-1 overflow-auto cityos-incidents"):
                    incident_box = ui.column().classes("w-full gap-1")
                with panel("空气质量 AQI by district", classes="w-full overflow-auto cityos-aqi"):
                    aqi_box = ui.row().classes("w-full gap-1")
    state: dict[str, Any] = {"busy": False, "last": 0.0, "pulse": -1, "districts_at": 0.0, "districts": [],
                             "lists": ""}

    async def refresh() -> None:
        if state["busy"]:
            return
        now = time.monotonic()
        if data.Pulse.version == state["pulse"] and now - state["last"] < REFRESH_SECONDS:
            return
        state.update(busy=True, pulse=data.Pulse.version, last=now)
        try:
            await _refresh(session, city, tiles, alarm_box, incident_box, aqi_box, state, storm_banner)
        except ApiError as exc:
            ui.notify(f"数据刷新失败 Refresh failed: {exc.detail}", type="negative")
        finally:
            state["busy"] = False

    ui.timer(1.0, refresh)
    await refresh()
    return None


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

    # ---- map
    states = device_states(devices, alarms)
    by_name = {str(d.get("name")): d for d in devices}
    features = []
    for d in districts:
        # The environment domain names districts by their `name`; seeded cities may use the id's key.
        value = (aqi.get(d["key"]) or aqi.get(data.district_key(d["name"])) or {}).get("aqi")
        label, colour = data.aqi_category(value)
        features.append({"type": "Feature", "geometry": d["geometry"],
                         "properties": {"key": d["key"], "fill": colour,
                                        "label": d["name"] if value is None else f"{d['name']} · AQI {value:.0f}",
                                        "popup": f"{d['name']} — AQI "
                                                 f"{'—' if value is None else f'{value:.0f}'} {label}"}})
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
            incident_points.append([where[0], where[1], colour, incident_title(item), str(item.get("id"))])
    await city.update({"deviceColours": data.DEVICE_COLOURS,
                       "districts": {"type": "FeatureCollection", "features": features},
                       "devices": device_points, "alarms": alarm_points, "incidents": incident_points})

    # ---- side lists (rebuilt only when their content changed)
    signature = repr(([(a.get("id"), a.get("status")) for a in alarms],
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
