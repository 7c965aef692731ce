"""The cockpit's traffic layer (路况图层): road segments by congestion level, signal states, traffic
incidents, emergency runs in progress and car-park availability; the city TPI tile; diversion advice.

Everything is read through the platform's APIs with the operator's token: road segments and car parks
as hub entities (`RoadSegment` with its LineString, `OffStreetParking`), signals and emergency runs from
the traffic API, the index history and the 15-minute forecast from the congestion API.
"""

from __future__ import annotations

import math
from typing import Any

from nicegui import ui

from cityos.web.auth import Session
from cityos.web.cockpit import data
from cityos.web.cockpit.common import fmt_time, incident_location, incident_title

# GB/T 33171-2016 levels, index 0–10 in steps of two: name, English, colour (green → dark red, as
# Chinese traffic maps show them; each readable on the dark base map).
LEVELS: tuple[tuple[str, str, str], ...] = (
    ("畅通", "Free flow", "#22c55e"),
    ("基本畅通", "Basically free", "#a3e635"),
    ("轻度拥堵", "Light", "#facc15"),
    ("中度拥堵", "Moderate", "#f97316"),
    ("严重拥堵", "Severe", "#dc2626"),
)
NO_DATA_COLOUR = "#64748b"
STAGE_COLOURS = {"green": "#22c55e", "yellow": "#facc15", "all_red": "#ef4444"}
STAGE_LABELS = {"green": "绿灯 green", "yellow": "黄灯 yellow", "all_red": "全红 all red"}
EMERGENCY_COLOUR = "#e879f9"
DIVERSION_COLOUR = "#22d3ee"
PARKING_COLOURS = (("#22c55e", "空位充足 ≥30% free"), ("#facc15", "紧张 10–30% free"), ("#ef4444", "将满/已满 <10%"))


def level_of(tpi: float | None) -> int | None:
    if tpi is None or not isinstance(tpi, int | float) or math.isnan(tpi):
        return None
    return min(4, max(0, int(float(tpi) // 2)))


def level_text(tpi: float | None) -> str:
    level = level_of(tpi)
    return "无数据 No data" if level is None else f"{LEVELS[level][0]} {LEVELS[level][1]}"


def level_colour(tpi: float | None) -> str:
    level = level_of(tpi)
    return NO_DATA_COLOUR if level is None else LEVELS[level][2]


def parking_colour(free: int, total: int) -> str:
    share = free / total if total else 0.0
    return PARKING_COLOURS[0][0] if share >= 0.3 else PARKING_COLOURS[1][0] if share >= 0.1 else PARKING_COLOURS[2][0]


# ------------------------------------------------------------------------------------ readers


async def road_segments(session: Session) -> list[dict[str, Any]]:
    """The hub's `RoadSegment` entities that have a line: {id, name, geometry, tpi, level, speed, at}."""
    body = await data._get(session, "/ngsi-ld/v1/entities", type="RoadSegment", options="keyValues", limit=1000)
    out = []
    for entity in data._items(body):
        geometry = data._value(entity.get("location"))
        if not isinstance(geometry, dict) or geometry.get("type") not in ("LineString", "MultiLineString"):
            continue
        tpi = data._value(entity.get("trafficPerformanceIndex"))
        out.append({"id": str(entity.get("id", "")).rsplit(":", 1)[-1], "name": data._value(entity.get("name")),
                    "geometry": geometry, "tpi": tpi if isinstance(tpi, int | float) else None,
                    "speed": data._value(entity.get("averageVehicleSpeed"))})
    return out


async def car_parks(session: Session) -> list[dict[str, Any]]:
    body = await data._get(session, "/ngsi-ld/v1/entities", type="OffStreetParking", options="keyValues",
                           limit=1000)
    return data._items(body)


async def signals(session: Session) -> list[dict[str, Any]]:
    return data._items(await data._get(session, "/api/traffic/signals", limit=1000))


async def emergency_runs(session: Session) -> list[dict[str, Any]]:
    return data._items(await data._get(session, "/api/traffic/preemptions"))


async def city_index(session: Session) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The city's 15-minute forecast and its index over the last hour (12 readings)."""
    forecast, history = await data.gather(data._get(session, "/api/traffic/congestion/forecast"),
                                          data._get(session, "/api/traffic/congestion/history", scope="city",
                                                    limit=12))
    return (forecast if isinstance(forecast, dict) else {}), data._items(history)


async def diversion(session: Session, segment: str) -> dict[str, Any] | None:
    body = await data._get(session, "/api/traffic/congestion/diversions", segment=segment)
    return body if isinstance(body, dict) else None


# ------------------------------------------------------------------------------------ map layers


def layers(segments: list[dict[str, Any]], signal_rows: list[dict[str, Any]], runs: list[dict[str, Any]],
           parks: list[dict[str, Any]], incidents: list[dict[str, Any]],
           devices_by_name: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The traffic layer's data for `CityMap.update`."""
    features = []
    for s in segments:
        speed = s.get("speed")
        label = f"{s['name']} · {level_text(s['tpi'])}" + (
            f" · TPI {s['tpi']:.1f} · {speed:.0f} km/h" if s["tpi"] is not None and isinstance(speed, int | float)
            else "") + " · 点击查看预测与绕行 click for forecast and diversion"
        features.append({"type": "Feature", "geometry": s["geometry"],
                         "properties": {"id": s["id"], "colour": level_colour(s["tpi"]), "label": label,
                                        "level": -1 if level_of(s["tpi"]) is None else level_of(s["tpi"])}})
    located: dict[str, tuple[float, float]] = {}
    signal_points = []
    for sig in signal_rows:
        device = devices_by_name.get(str(sig.get("device") or ""))
        loc = (device or {}).get("location")
        if not loc:
            continue
        located[str(sig.get("id"))] = (float(loc["lat"]), float(loc["lon"]))
        stage = str(sig.get("stage") or "green")
        label = (f"信号灯 Signal {sig.get('name') or sig.get('id')} · 相位 phase {sig.get('phase')} · "
                 f"{STAGE_LABELS.get(stage, stage)}")
        if sig.get("fallback"):
            label += " · 降级定时 fixed-time fallback"
        signal_points.append([loc["lat"], loc["lon"], STAGE_COLOURS.get(stage, "#94a3b8"), label])
    routes = []
    for run in runs:
        coords = [[located[s["signal"]][1], located[s["signal"]][0]] for s in run.get("signals") or []
                  if s.get("signal") in located]
        if len(coords) < 2:
            continue
        label = (f"紧急车辆 Emergency vehicle {run.get('vehicle')}"
                 + (f" · 事件 incident #{run['incident']}" if run.get("incident") else "")
                 + f" · 前方信号 {len(coords)} signals ahead · 更新 {fmt_time(run.get('updatedAt'))}")
        routes.append({"type": "Feature", "geometry": {"type": "LineString", "coordinates": coords},
                       "properties": {"label": label}})
    park_points = []
    for park in parks:
        geometry = data._value(park.get("location"))
        if not isinstance(geometry, dict) or geometry.get("type") != "Point":
            continue
        free, total = int(data._value(park.get("availableSpotNumber")) or 0), int(
            data._value(park.get("totalSpotNumber")) or 0)
        lon, lat = geometry["coordinates"][:2]
        park_points.append([lat, lon, parking_colour(free, total),
                            f"停车场 Car park {data._value(park.get('name'))} · 空位 free {free}/{total}"])
    incident_points = []
    for item in incidents:
        where = incident_location(item)
        if where and str(item.get("category") or "").startswith("traffic"):
            incident_points.append([where[0], where[1], "#f59e0b",
                                    f"交通事件 Traffic incident · {incident_title(item)}"])
    return {"segments": {"type": "FeatureCollection", "features": features}, "signals": signal_points,
            "emergency": {"type": "FeatureCollection", "features": routes}, "parking": park_points,
            "trafficIncidents": incident_points}


# ------------------------------------------------------------------------------------ tile and legend


def sparkline(values: list[float], colour: str, width: int = 70, height: int = 24) -> str:
    """An inline SVG polyline of the index (0 at the bottom, 10 at the top)."""
    if len(values) < 2:
        return ""
    step = width / (len(values) - 1)
    points = " ".join(f"{i * step:.1f},{height - 2 - (min(10.0, max(0.0, v)) / 10) * (height - 4):.1f}"
                      for i, v in enumerate(values))
    return (f'<svg width="{width}" height="{height}" class="cityos-sparkline" viewBox="0 0 {width} {height}">'
            f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{points}"/></svg>')


def tile_figures(forecast: dict[str, Any], history: list[dict[str, Any]]) -> tuple[str, str, str, str, str]:
    """(value, level, note, sparkline SVG, colour) of the city TPI tile."""
    current = (forecast.get("current") or {}).get("tpi")
    ahead = (forecast.get("forecast") or {}).get("tpi")
    if current is None:
        return "—", "", "暂无路况数据 No traffic readings yet", "", NO_DATA_COLOUR
    note = ""
    if ahead is not None:
        arrow = "↑" if ahead - current >= 0.3 else "↓" if current - ahead >= 0.3 else "→"
        note = f"15分钟后 +15 min {arrow} {ahead:.1f} {LEVELS[level_of(ahead) or 0][0]}"
        if forecast.get("forecastFor"):
            note += f" · {fmt_time(forecast['forecastFor'])[-9:]}"
    values = [float(h["tpi"]) for h in history if isinstance(h.get("tpi"), int | float)]
    colour = level_colour(current)
    return f"{current:.1f}", level_text(current), note, sparkline(values, colour), colour


def legend() -> None:
    """The traffic layer's legend, over the map's top-right corner (left of the zoom buttons), where the
    city's grid leaves sea and open land at the whole-city view."""
    with ui.element("div").classes("absolute top-3 right-12 z-[1000] cityos-panel p-2 text-xs cityos-tpi-legend") \
            .style("background: rgba(6,13,27,.85) !important; display:grid; grid-template-columns:auto auto; "
                   "column-gap:10px; row-gap:1px"):
        ui.label("路况 Traffic · GB/T 33171").classes("cityos-panel-title text-xs").style("grid-column: span 2")
        for zh, en, colour in LEVELS:
            with ui.row().classes("items-center gap-1 no-wrap"):
                ui.element("span").style(f"display:inline-block;width:16px;height:4px;border-radius:2px;"
                                         f"background:{colour}")
                ui.label(f"{zh} {en}").classes("text-slate-300")
        for style, label in ((f"width:9px;height:9px;border-radius:50%;background:{STAGE_COLOURS['green']};"
                              "border:1px solid #fff", "信号灯 Signal"),
                             (f"width:16px;height:0;border-top:3px dashed {EMERGENCY_COLOUR}", "紧急通行 Emergency"),
                             (f"width:16px;height:0;border-top:3px dashed {DIVERSION_COLOUR}", "绕行 Diversion"),
                             (f"width:9px;height:9px;border-radius:2px;background:{PARKING_COLOURS[0][0]};"
                              "border:1px solid #fff", "停车场 Car park 空位 绿/黄/红")):
            with ui.row().classes("items-center gap-1 no-wrap"):
                ui.element("span").style(f"display:inline-block;{style}")
                ui.label(label).classes("text-slate-300")


def diversion_text(advice: dict[str, Any]) -> list[str]:
    """Lines of the advice panel, Chinese first."""
    forecast = advice.get("forecast") or {}
    lines = [f"{advice.get('name')}",
             f"15分钟预测 +15 min: {level_text(forecast.get('tpi'))}"
             + (f" · TPI {forecast['tpi']:.1f}" if isinstance(forecast.get("tpi"), int | float) else "")
             + (f" · {forecast['speedKmh']:.0f} km/h" if isinstance(forecast.get("speedKmh"), int | float) else "")]
    if not advice.get("needed"):
        lines.append("无需绕行 No diversion needed")
    for n, route in enumerate(advice.get("routes") or []):
        lines.append(f"绕行{'一二三'[n] if n < 3 else n + 1} Route {n + 1}: 经 via {' → '.join(route.get('via') or [])}"
                     f" · 约 {route.get('minutes')} 分钟 min")
    if advice.get("needed") and not advice.get("routes"):
        lines.append(str(advice.get("note") or "无可行绕行 No way round"))
    model = advice.get("model") or {}
    version = str(model.get("version") or "—")
    lines.append(f"模型 model {version.split('-')[0]} {version.rsplit('-', 1)[-1]}"
                 + (f" · 训练于 trained {fmt_time(model['trainedAt'])}" if model.get("trainedAt") else ""))
    return lines
