"""`/supervision`: overdue work by department and the good/bad rating dashboards (好差评)."""

from __future__ import annotations

from collections import Counter
from typing import Any

from nicegui import ui

from cityos.web.auth import Session
from cityos.web.portal import common, labels
from cityos.web.portal.common import SUPERVISION_ROLES, call, first, frame, items_of, when
from cityos.web.portal.portal import service_names


def bar_chart(title: str, names: list[str], values: list[float], *, colour: str, unit: str = "",
              max_value: float | None = None) -> dict[str, Any]:
    """An ECharts horizontal bar chart option."""
    axis: dict[str, Any] = {"type": "value", "name": unit}
    if max_value is not None:
        axis["max"] = max_value
    return {
        "title": {"text": title, "left": "center", "textStyle": {"fontSize": 14, "color": "#0d3b66"},
                  "subtext": "" if names else "暂无数据 No data yet", "subtextStyle": {"fontSize": 13}},
        "tooltip": {"trigger": "axis"},
        "grid": {"left": 8, "right": 40, "top": 40, "bottom": 8, "containLabel": True},
        "xAxis": axis,
        "yAxis": {"type": "category", "data": names, "inverse": True},
        "series": [{"type": "bar", "data": values, "itemStyle": {"color": colour},
                    "label": {"show": True, "position": "right"}}],
    }


def satisfaction_rows(body: Any) -> list[tuple[str, float, float, int]]:
    """(name, satisfaction %, average score, count) from a ratings summary answer."""
    rows: list[tuple[str, float, float, int]] = []
    entries = items_of(body, "groups", "summary")
    if not entries and isinstance(body, dict) and "items" not in body:
        entries = [dict(v, key=k) for k, v in body.items() if isinstance(v, dict)]
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        name = str(first(entry, "name", "department", "serviceCode", "service", "key", default="?"))
        count = int(first(entry, "count", "ratings", "total", default=0) or 0)
        average = float(first(entry, "meanScore", "average", "mean", default=0) or 0)
        satisfaction = first(entry, "satisfaction", "satisfactionRate", "satisfied")
        if satisfaction is None:
            satisfaction = average / 5 * 100
        elif float(satisfaction) <= 1:
            satisfaction = float(satisfaction) * 100
        rows.append((name, round(float(satisfaction), 1), round(average, 2), count))
    return rows


def overdue_by_department(body: Any, items: list[dict[str, Any]]) -> list[tuple[str, int]]:
    counts: Counter[str] = Counter()
    given = body.get("byDepartment") if isinstance(body, dict) else None
    if isinstance(given, dict):
        counts.update({str(k): int(v) for k, v in given.items()})
        return counts.most_common()
    for item in items:
        counts[str(first(item, "department", "departmentName", default="—"))] += int(first(item, "count", default=1))
    return counts.most_common()


@ui.page("/supervision")
async def supervision() -> Any:
    session = await common.login(SUPERVISION_ROLES)
    if not isinstance(session, Session):
        return session
    with frame(session, "效能监督 Supervision", active="/supervision", citizen=False):
        ui.label("效能监督 Performance supervision").classes("text-2xl gov-title")
        overdue_reply = await call("GET", "/api/services/supervision/overdue")
        overdue = [x for x in items_of(overdue_reply.body, "overdue") if isinstance(x, dict)] \
            if overdue_reply.ok else []
        by_dept = overdue_by_department(overdue_reply.body if overdue_reply.ok else None, overdue)
        names = await service_names()
        rating_dept = await call("GET", "/api/services/ratings/summary", params={"by": "department"})
        rating_service = await call("GET", "/api/services/ratings/summary", params={"by": "service"})
        dept_rows = [(labels.department(n), s, a, c) for n, s, a, c in
                     (satisfaction_rows(rating_dept.body) if rating_dept.ok else [])]
        service_rows = [(names.get(n, n), s, a, c) for n, s, a, c in
                        (satisfaction_rows(rating_service.body) if rating_service.ok else [])]
        overall = first(rating_dept.body, "overall", default={}) if rating_dept.ok else {}

        rated = int(first(overall, "count", default=0) or 0) or sum(r[3] for r in dept_rows)
        satisfied = first(overall, "satisfaction")
        nps = first(overall, "nps")
        with ui.row().classes("w-full gap-4"):
            for label, value, css in (
                ("超期办件 Overdue", str(len(overdue)), "text-negative"),
                ("涉及部门 Departments", str(len(by_dept)), "gov-title"),
                ("评价数 Ratings", str(rated), "gov-title"),
                ("满意度 Satisfaction (目标 target 95%)", f"{satisfied}%" if satisfied is not None else "—",
                 "text-positive" if satisfied is None or float(satisfied) >= 95 else "text-warning"),
                ("净推荐值 NPS", f"{nps}" if nps is not None else "—", "gov-title"),
            ):
                with ui.card().classes("gov-card p-4 min-w-48"):
                    ui.label(label).classes("text-grey-8")
                    ui.label(value).classes(f"text-3xl font-bold {css} kpi")

        with ui.row().classes("w-full gap-4 no-wrap"):
            with ui.card().classes("gov-card p-4 w-1/2"):
                ui.echart(bar_chart("超期办件（按部门）Overdue by department",
                                    [labels.department(d) for d, _ in by_dept], [n for _, n in by_dept],
                                    colour="#c62828", unit="件")) \
                    .classes("w-full h-72 t-chart-overdue")
            with ui.card().classes("gov-card p-4 w-1/2"):
                ui.echart(bar_chart("满意度（按部门）Satisfaction by department", [r[0] for r in dept_rows],
                                    [r[1] for r in dept_rows], colour="#2e7d32", unit="%", max_value=100)) \
                    .classes("w-full h-72 t-chart-dept")
        with ui.card().classes("gov-card p-4 w-full"):
            ui.echart(bar_chart("满意度（按事项）Satisfaction by service", [r[0] for r in service_rows],
                                [r[1] for r in service_rows], colour="#1565c0", unit="%", max_value=100)) \
                .classes("w-full h-72 t-chart-service")

        with ui.card().classes("gov-card p-4 w-full t-overdue"):
            ui.label("超期办件清单 Overdue work").classes("section-title")
            columns = [{"name": k, "label": label, "field": k, "align": "left"} for k, label in (
                ("receipt", "回执 Receipt"), ("service", "事项 Service"), ("step", "待办部门 Waiting on"),
                ("department", "部门 Department"), ("overdueDays", "超期 Overdue (days)"), ("since", "到期 Due"))]
            rows = [{"receipt": first(x, "receipt", default=""),
                     "service": names.get(str(first(x, "serviceCode", default="")), first(x, "serviceCode")),
                     "step": " · ".join(labels.department(d) for d in first(x, "waitingOn", default=[]) or []),
                     "department": labels.department(first(x, "department", default="")),
                     "overdueDays": first(x, "overdueDays", "daysOverdue", default=""),
                     "since": when(first(x, "dueAt", "due", "deadlineAt"))} for x in overdue]
            ui.table(columns=columns, rows=rows).props("flat dense").classes("w-full")
        with ui.card().classes("gov-card p-4 w-full t-ratings"):
            ui.label("好差评（按部门）Ratings by department").classes("section-title")
            columns = [{"name": k, "label": label, "field": k, "align": "left"} for k, label in (
                ("name", "部门 Department"), ("count", "评价数 Ratings"), ("average", "平均分 Average"),
                ("satisfaction", "满意度 Satisfaction %"))]
            ui.table(columns=columns, rows=[{"name": n, "satisfaction": s, "average": a, "count": c}
                                            for n, s, a, c in dept_rows]).props("flat dense").classes("w-full")
