"""`/cockpit/incidents` (list with filters) and `/cockpit/incidents/{id}` (detail, timeline, actions)."""

from __future__ import annotations

from typing import Any

from fastapi.responses import RedirectResponse
from nicegui import ui

from cityos.core import messages
from cityos.web.auth import ApiError, Session, fastapi_app, require_login
from cityos.web.cockpit import actions, data
from cityos.web.cockpit.citymap import CityMap, district_feature
from cityos.web.cockpit.common import (
    COCKPIT_ROLES,
    fmt_time,
    incident_location,
    incident_sla,
    incident_time,
    incident_title,
)
from cityos.web.shell import frame, panel
from cityos.web.tiles import city_frame

STATUS_OPTIONS = {"": "全部 All", "open": "在办 Open", **data.INCIDENT_STATUS_LABELS}
SLA_OPTIONS = {"": "全部 All", **{k: messages.SLA[k] for k in ("ok", "yellow", "breached", "met")}}
KIND_OPTIONS = {"incident": "城市事件 City incidents", "maintenance": "设备维护工单 Device work orders",
                "": "全部 All"}


def step_text(step: dict[str, Any]) -> tuple[str, str]:
    """(title, text) of a timeline entry: its action from the catalogue; a merge lists what merged, once."""
    action = str(step.get("action") or step.get("to") or "")
    found = step.get("detail")
    detail: dict[str, Any] = found if isinstance(found, dict) else {}
    children = detail.get("children") if isinstance(detail.get("children"), list) else None
    if action == "merge" and children:
        titles = "; ".join(f"#{c.get('id')} {c.get('title') or ''}".strip() for c in children[:8]
                           if isinstance(c, dict))
        more = f" … (+{len(children) - 8})" if len(children) > 8 else ""
        plural = "" if len(children) == 1 else "s"
        return f"合并 {len(children)} 条告警 Merged {len(children)} alarm{plural}", f"{titles}{more}"
    if action == "merge" and detail.get("into"):
        return messages.label("action", action), f"并入 merged into #{detail['into']}"
    return messages.label("action", action), str(step.get("note") or "")


def _rows(items: list[dict[str, Any]], names: dict[str, str]) -> list[dict[str, Any]]:
    return [{"id": i.get("id"), "title": incident_title(i), "category": messages.category(i.get("category")),
             "status": data.INCIDENT_STATUS_LABELS.get(str(i.get("status")), i.get("status")),
             "level": messages.label("level", i.get("level")),
             "department": messages.department(i.get("department")),
             "district": names.get(data.district_key(i.get("district")), i.get("district") or ""),
             "sla": data.SLA_LABELS.get(incident_sla(i), incident_sla(i)),
             "reported": fmt_time(incident_time(i))} for i in items]


@ui.page("/cockpit/incidents", title="事件处置 Incidents · CityOS")
async def incidents_page() -> RedirectResponse | None:
    session = await require_login(COCKPIT_ROLES)
    if not isinstance(session, Session):
        return session
    data.attach_bus(fastapi_app())
    filters: dict[str, Any] = {"status": "open", "category": "", "department": "", "district": "", "sla": "",
                               "kind": "incident"}
    with frame(session, "事件处置 Incidents", active="/cockpit/incidents"):
        with panel(classes="w-full"), ui.row().classes("w-full items-end gap-3"):
            kind_select = ui.select(KIND_OPTIONS, label="列表 List").bind_value(filters, "kind") \
                    .props("dark outlined dense options-dense").classes("w-48 cityos-f-kind")
            status_select = ui.select(STATUS_OPTIONS, label="状态 Status").bind_value(filters, "status") \
                    .props("dark outlined dense options-dense").classes("w-48 cityos-f-status")
            category = ui.select([], label="类别 Category", with_input=True, clearable=True) \
                    .bind_value(filters, "category").props("dark outlined dense").classes("w-48 cityos-f-category")
            department = ui.select([], label="部门 Department", with_input=True, clearable=True) \
                    .bind_value(filters, "department").props("dark outlined dense").classes("w-48 cityos-f-dept")
            district = ui.select([], label="区域 District", with_input=True, clearable=True) \
                    .bind_value(filters, "district").props("dark outlined dense").classes("w-48 cityos-f-district")
            sla_select = ui.select(SLA_OPTIONS, label="SLA").bind_value(filters, "sla") \
                    .props("dark outlined dense").classes("w-40 cityos-f-sla")
            count = ui.label("").classes("text-slate-400 ml-auto")
        with panel(classes="w-full"):
            columns: list[dict[str, Any]] = [
                {"name": "id", "label": "编号 ID", "field": "id", "sortable": True, "align": "left"},
                {"name": "title", "label": "事件 Title", "field": "title", "align": "left"},
                {"name": "category", "label": "类别 Category", "field": "category", "sortable": True,
                 "align": "left"},
                {"name": "status", "label": "状态 Status", "field": "status", "sortable": True, "align": "left"},
                {"name": "level", "label": "等级 Level", "field": "level", "sortable": True, "align": "left"},
                {"name": "department", "label": "部门 Department", "field": "department", "sortable": True,
                 "align": "left"},
                {"name": "district", "label": "区域 District", "field": "district", "sortable": True,
                 "align": "left"},
                {"name": "sla", "label": "SLA", "field": "sla", "sortable": True, "align": "left"},
                {"name": "reported", "label": "上报时间 Reported", "field": "reported", "sortable": True,
                 "align": "left"},
            ]
            table = ui.table(columns=columns, rows=[], row_key="id", pagination=25) \
                .props("dark flat dense").classes("w-full cityos-incident-table")
            table.on("rowClick", lambda e: ui.navigate.to(f"/cockpit/incidents/{e.args[1]['id']}"))
    filter_selects = (kind_select, status_select, category, department, district, sla_select)
    seen: dict[str, set[str]] = {"category": set(), "department": set(), "district": set()}
    names: dict[str, str] = {}
    last: dict[str, Any] = {"rows": None, "pulse": -1, "filters": None}

    async def load(force: bool = False) -> None:
        key = repr(sorted(filters.items()))
        if not force and last["pulse"] == data.Pulse.version and last["filters"] == key:
            return
        last.update(pulse=data.Pulse.version, filters=key)
        params = {k: v for k, v in filters.items() if v and k not in ("status", "sla")}
        status = filters.get("status")
        if status == "open":
            params["open"] = "true"
        elif status:
            params["status"] = status
        try:
            items = await data.incidents(session, limit=500, **params)
        except ApiError as exc:
            ui.notify(f"查询失败 Query refused: {exc.detail}", type="negative")
            return
        if filters.get("sla"):  # SLA state is not an API filter: filter the page
            items = [i for i in items if incident_sla(i) == filters["sla"]]
        for name, select in (("category", category), ("department", department), ("district", district)):
            values = {str(i.get(name)) for i in items if i.get(name)}
            if not values <= seen[name]:
                seen[name] |= values
                shown = {v: (messages.category(v) if name == "category" else messages.department(v)
                             if name == "department" else names.get(data.district_key(v), v))
                         for v in sorted(seen[name])}
                select.set_options(shown, value=filters.get(name) or None)
        if not names:
            names.update({d["key"]: d["name"] for d in await data.districts(session)})
        rows = _rows(items, names)
        if rows != last["rows"]:
            last["rows"] = rows
            table.rows = rows
            table.update()
        count.text = f"共 {len(rows)} 件 incidents"

    for select in filter_selects:
        select.on_value_change(lambda: load())
    ui.timer(2.0, load)
    await load(force=True)
    return None


@ui.page("/cockpit/incidents/{incident_id}", title="事件详情 Incident · CityOS")
async def incident_page(incident_id: str) -> RedirectResponse | None:
    session = await require_login(COCKPIT_ROLES)
    if not isinstance(session, Session):
        return session
    data.attach_bus(fastapi_app())
    with frame(session, f"事件详情 Incident #{incident_id}", active="/cockpit/incidents"):
        body = ui.row().classes("w-full gap-3 no-wrap items-start")
    state: dict[str, Any] = {"version": None, "pulse": -1, "departments": []}

    async def load(force: bool = False) -> None:
        if not force and state["pulse"] == data.Pulse.version:
            return
        state["pulse"] = data.Pulse.version
        item = await data.incident(session, incident_id)
        signature = repr(item)
        if signature == state["version"] and not force:
            return
        state["version"] = signature
        body.clear()
        with body:
            if item is None:
                with panel(classes="w-full"):
                    ui.label("未找到该事件，或无权查看 Incident not found, or not yours to see") \
                        .classes("text-lg text-slate-300 cityos-not-found")
                return
            await _detail(session, item, lambda: load(force=True))

    ui.timer(2.0, load)
    await load(force=True)
    return None


async def _detail(session: Session, item: dict[str, Any], reload: Any) -> None:
    status = str(item.get("status"))
    sla = incident_sla(item)
    sla_info: dict[str, Any] = item.get("sla") or {}
    districts = await data.districts(session)
    departments = await data.departments(session) if session.can("incident.act") else []
    district_name = next((d["name"] for d in districts if d["key"] == data.district_key(item.get("district"))),
                         item.get("district"))
    with ui.column().classes("flex-[2] min-w-0 gap-3"):
        with panel(classes="w-full"):
            with ui.row().classes("w-full items-center gap-3"):
                ui.label(incident_title(item)).classes("text-2xl font-semibold text-slate-100 cityos-title")
                ui.badge(data.INCIDENT_STATUS_LABELS.get(status, status), color="cyan-8") \
                    .classes("text-sm cityos-status").props(f"data-status={status}")
                if sla:
                    ui.badge(f"SLA {data.SLA_LABELS.get(sla, sla)}", color=data.SLA_COLOURS.get(sla, "grey")) \
                        .classes("text-sm cityos-sla")
            if item.get("description"):
                ui.label(str(item["description"])).classes("text-slate-300")
            with ui.grid(columns=4).classes("w-full gap-x-6 gap-y-1 text-sm mt-2"):
                for label, value in (
                        ("类别 Category", messages.category(item.get("category"))),
                        ("等级 Level", messages.label("level", item.get("level"))),
                        ("严重度 Severity", messages.label("severity", item.get("severity"))),
                        ("来源 Source", messages.label("source", item.get("source"))),
                        ("部门 Department", messages.department(item.get("department"))),
                        ("区域 District", messages.place(district_name)),
                        ("上报 Reported", fmt_time(incident_time(item))),
                        ("地址 Address", item.get("address")),
                        ("响应时限 Response due", fmt_time(sla_info.get("responseDue"))),
                        ("处置时限 Resolution due", fmt_time(sla_info.get("resolutionDue"))),
                        ("合并报告 Reports", item.get("reportCount") or item.get("report_count")),
                        ("关联实体 Entity", item.get("entityId") or item.get("entity_id"))):
                    with ui.column().classes("gap-0"):
                        ui.label(label).classes("text-slate-500 text-xs")
                        ui.label("—" if value in (None, "") else str(value)).classes("text-slate-200")
            affected = (item.get("attributes") or {}).get("affectedDevices") \
                if isinstance(item.get("attributes"), dict) else None
            if affected:
                count = int((item.get("attributes") or {}).get("affectedCount") or len(affected))
                ui.label(f"受影响设备 Affected devices ({count}): {', '.join(map(str, affected[:40]))}"
                         f"{' …' if count > 40 else ''}").classes("text-sm text-slate-300 mt-2 cityos-affected")
            with ui.row().classes("w-full gap-2 mt-3 cityos-actions"):
                actions.incident_buttons(session, item, reload, departments)
        where = incident_location(item)
        city = None
        if where:
            with panel("位置 Location", classes="w-full h-[360px]"):
                bounds, labels = city_frame()
                city = CityMap(bounds, labels, "w-full h-full", centre=where)
    with panel("处置时间线 Timeline", classes="w-[440px] shrink-0 cityos-timeline-panel"):
        steps = item.get("timeline") or item.get("steps") or item.get("history") or []
        if not steps:
            ui.label("暂无记录 No steps yet").classes("text-slate-500")
        with ui.timeline(side="right", color="cyan").classes("cityos-timeline"):
            for step in steps:
                title, text = step_text(step)
                who = str(step.get("actor") or step.get("by") or "").split(":", 1)[-1]
                role = str(step.get("role") or "")
                subtitle = " · ".join(x for x in (fmt_time(step.get("at") or step.get("time")),
                                                   messages.label("role", who) if who == role else who,
                                                   "" if role.lower() == who.lower() else messages.label("role", role))
                                      if x)
                ui.timeline_entry(text, title=title, subtitle=subtitle)
    if city is not None and where is not None:
        layers = {"districts": {"type": "FeatureCollection",
                                "features": [district_feature(d, data.NO_AQI_COLOUR) for d in districts]},
                  "incidents": [[where[0], where[1], "#f97316", incident_title(item), str(item.get("id")),
                                 incident_sla(item)]]}
        located = city

        async def draw() -> None:  # MapLibre loads asynchronously: send until the browser's map took it
            await located.update(layers)

        ui.timer(1.0, draw)
