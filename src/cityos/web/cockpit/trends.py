"""Trend charts behind the cockpit's KPI tiles (ECharts, shipped inside NiceGUI) and the list each tile sums up.

A click on a tile opens a dialog: the KPI over the last 24 hours (hourly) or 7 days (6-hourly), then the
items behind the figure (open incidents, or devices by state) with a link to the full list.

Incident KPIs are recomputed from the incidents themselves (their report, accept and close times and
SLA states; the newest 500 the user may see). The devices-online share and the readings rate have no
history in the platform's APIs, so the cockpit samples them as it refreshes (`HISTORY`): those two
curves start when this server process started, and each chart says so.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from nicegui import ui

from cityos.core import messages
from cityos.web.auth import Session
from cityos.web.cockpit import data
from cityos.web.cockpit.common import fmt_minutes, incident_sla, incident_time, incident_title

SPANS: dict[str, tuple[timedelta, timedelta]] = {
    "24h": (timedelta(hours=24), timedelta(hours=1)),
    "7d": (timedelta(days=7), timedelta(hours=6)),
}
SAMPLE_SECONDS = 60.0
DECIDED_SLA = {"met", "ok", "on_time", "breached"}


@dataclass
class SampledHistory:
    """KPIs the APIs keep no history of, sampled by this process at most once a minute, kept 7 days."""

    samples: dict[str, deque[tuple[datetime, float]]] = field(default_factory=dict)
    _last: dict[str, float] = field(default_factory=dict)

    def record(self, key: str, value: float | None, now: datetime | None = None) -> None:
        if value is None:
            return
        clock = time.monotonic()
        if clock - self._last.get(key, -SAMPLE_SECONDS) < SAMPLE_SECONDS:
            return
        self._last[key] = clock
        moment = now or datetime.now(UTC)
        series = self.samples.setdefault(key, deque())
        series.append((moment, value))
        while series and series[0][0] < moment - timedelta(days=7):
            series.popleft()


HISTORY = SampledHistory()


def _parse(value: Any) -> datetime | None:
    if not value:
        return None
    try:
        moment = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def buckets(now: datetime, span: str) -> list[datetime]:
    """Bucket starts, oldest first; the last bucket holds `now`."""
    length, step = SPANS[span]
    end = now.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    count = int(length / step)
    return [end - step * (count - i) for i in range(count)]


def incident_series(items: list[dict[str, Any]], key: str, span: str,
                    now: datetime | None = None) -> list[tuple[datetime, float | None]]:
    """One incident KPI per bucket: open (count at the bucket's end), sla (% met of decided, by report
    time), response (mean minutes report → accept, by report time)."""
    moment = now or datetime.now(UTC)
    starts = buckets(moment, span)
    step = SPANS[span][1]
    out: list[tuple[datetime, float | None]] = []
    for start in starts:
        end = start + step
        if key == "open":
            count = 0
            for item in items:
                reported = _parse(incident_time(item))
                ended = _parse(item.get("closedAt")) or _parse(item.get("resolvedAt"))
                if reported and reported < end and (ended is None or ended >= end):
                    count += 1
            out.append((start, float(count)))
            continue
        inside = [i for i in items if (t := _parse(incident_time(i))) and start <= t < end]
        if key == "sla":
            decided = [incident_sla(i) for i in inside if incident_sla(i) in DECIDED_SLA]
            met = sum(1 for s in decided if s != "breached")
            out.append((start, round(100.0 * met / len(decided), 1) if decided else None))
        else:
            waits = [(a - r).total_seconds() / 60 for i in inside
                     if (r := _parse(incident_time(i))) and (a := _parse(i.get("acceptedAt")))]
            out.append((start, round(sum(waits) / len(waits), 1) if waits else None))
    return out


def sampled_series(key: str, span: str, now: datetime | None = None) -> list[tuple[datetime, float | None]]:
    """A sampled KPI per bucket: the mean of the samples that fell in it."""
    moment = now or datetime.now(UTC)
    step = SPANS[span][1]
    samples = HISTORY.samples.get(key, deque())
    out: list[tuple[datetime, float | None]] = []
    for start in buckets(moment, span):
        inside = [v for t, v in samples if start <= t < start + step]
        out.append((start, round(sum(inside) / len(inside), 1) if inside else None))
    return out


def chart_options(title: str, unit: str, series: list[tuple[datetime, float | None]], colour: str,
                  note: str) -> dict[str, Any]:
    fmt = "%H:%M" if len(series) <= 24 else "%m-%d %H:%M"
    return {
        "backgroundColor": "transparent",
        "title": {"text": title, "subtext": note, "left": 8, "textStyle": {"color": "#e2e8f0", "fontSize": 14},
                  "subtextStyle": {"color": "#94a3b8"}},
        "grid": {"left": 56, "right": 24, "top": 64, "bottom": 40},
        "tooltip": {"trigger": "axis"},
        "xAxis": {"type": "category", "data": [messages.local_time(t, fmt, zone=False) for t, _ in series],
                  "axisLabel": {"color": "#94a3b8"}, "name": messages.zone_name(datetime.now(messages.city_zone())),
                  "nameTextStyle": {"color": "#94a3b8"}},
        "yAxis": {"type": "value", "name": unit, "axisLabel": {"color": "#94a3b8"},
                  "nameTextStyle": {"color": "#94a3b8"}, "splitLine": {"lineStyle": {"color": "#1e293b"}}},
        "series": [{"type": "line", "smooth": True, "connectNulls": False, "showSymbol": len(series) <= 28,
                    "data": [v for _, v in series], "lineStyle": {"color": colour, "width": 2},
                    "itemStyle": {"color": colour}, "areaStyle": {"color": colour, "opacity": 0.15}}],
    }


# key: (title, unit, colour, sampled)
KPIS: dict[str, tuple[str, str, str, bool]] = {
    "open": ("在办事件 Open incidents", "件 count", "#f87171", False),
    "sla": ("SLA 达标率 SLA compliance", "%", "#4ade80", False),
    "response": ("平均响应 Mean response", "分钟 min", "#facc15", False),
    "online": ("设备在线率 Devices online", "%", "#22d3ee", True),
    "rate": ("数据接入 Readings / s", "条/秒 per s", "#a78bfa", True),
}


async def open_trend(session: Session, key: str) -> None:
    """The dialog behind tile `key`: its trend (24 h / 7 d) and the list behind the figure."""
    title, unit, colour, sampled = KPIS[key]
    items: list[dict[str, Any]] = []
    if not sampled:
        items = await data.incidents(session, kind="incident", limit=500)
    with ui.dialog() as dialog, ui.card().classes(f"cityos-panel w-[960px] max-w-[95vw] cityos-trend "
                                                  f"cityos-trend-{key}").style("background:#0b1424 !important"):
        with ui.row().classes("w-full items-center"):
            ui.label(f"{title} · 趋势 Trend").classes("cityos-panel-title text-base")
            ui.space()
            span = ui.toggle({"24h": "近24小时 24 h", "7d": "近7天 7 d"}, value="24h").props("dense") \
                .classes("cityos-trend-span")
            ui.button(icon="close", on_click=dialog.close).props("flat dense round")
        chart = ui.echart({}).classes("w-full h-[300px] cityos-trend-chart")

        def draw() -> None:
            series = sampled_series(key, span.value) if sampled else incident_series(items, key, span.value)
            note = ("本服务进程启动以来的采样 sampled since this server started" if sampled
                    else f"按 {len(items)} 件事件计算 from {len(items)} incidents")
            chart.options.clear()
            chart.options.update(chart_options(title, unit, series, colour, note))
            chart.update()

        span.on_value_change(lambda: draw())
        draw()
        ui.separator()
        with ui.column().classes("w-full max-h-[320px] overflow-auto gap-1 cityos-drill"):
            if sampled:
                await _device_list(session)
            else:
                _incident_list(items, key)
    dialog.open()


def _incident_list(items: list[dict[str, Any]], key: str) -> None:
    rows = [i for i in items if str(i.get("status")) in data.OPEN_STATUSES] if key == "open" else items
    if key == "sla":
        rows = sorted(rows, key=lambda i: incident_sla(i) != "breached")
    ui.label(f"{'在办事件 Open incidents' if key == 'open' else '近期事件 Recent incidents'}: {len(rows)}") \
        .classes("text-sm text-slate-300")
    for item in rows[:100]:
        accepted, reported = _parse(item.get("acceptedAt")), _parse(incident_time(item))
        wait = fmt_minutes((accepted - reported).total_seconds() / 60) if accepted and reported else "—"
        sla = incident_sla(item)
        with ui.row().classes("w-full items-center gap-2 no-wrap cursor-pointer hover:bg-slate-800 rounded px-1 "
                              "cityos-drill-row") \
                .on("click", lambda i=str(item.get("id")): ui.navigate.to(f"/cockpit/incidents/{i}")):
            ui.label(f"#{item.get('id')}").classes("text-slate-500 w-12")
            ui.label(incident_title(item)).classes("flex-1 text-slate-100 ellipsis")
            ui.label(data.INCIDENT_STATUS_LABELS.get(str(item.get("status")), str(item.get("status")))) \
                .classes("text-xs text-slate-400 w-28")
            ui.label(f"响应 {wait}").classes("text-xs text-slate-400 w-24")
            ui.label(messages.local_time(incident_time(item))).classes("text-xs text-slate-400 w-32")
            if sla:
                ui.badge(data.SLA_LABELS.get(sla, sla), color=data.SLA_COLOURS.get(sla, "grey")).props("outline")
    ui.link("全部事件 All incidents →", "/cockpit/incidents").classes("text-sky-300 text-sm")


async def _device_list(session: Session) -> None:
    devices = await data.devices(session)
    order = {"offline": 0, "inactive": 1, "active": 2}
    devices.sort(key=lambda d: (order.get(str(d.get("status")), 3), str(d.get("name"))))
    counts: dict[str, int] = {}
    for device in devices:
        counts[str(device.get("status"))] = counts.get(str(device.get("status")), 0) + 1
    ui.label(" · ".join(f"{messages.label('status', k)} {v:,}" for k, v in sorted(counts.items()))) \
        .classes("text-sm text-slate-300")
    for device in devices[:200]:
        with ui.row().classes("w-full items-center gap-2 no-wrap px-1 cityos-drill-row"):
            ui.label(str(device.get("name"))).classes("flex-1 text-slate-100 ellipsis")
            ui.label(messages.label("profile", device.get("profile"))).classes("text-xs text-slate-400 w-40")
            ui.label(messages.label("status", device.get("status"))).classes("text-xs text-slate-300 w-28")
            ui.label(messages.local_time(device.get("lastSeen") or device.get("last_seen"))) \
                .classes("text-xs text-slate-400 w-32")
