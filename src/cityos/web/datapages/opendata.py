"""The open-data portal (数据开放门户), public: no sign-in.

- `/opendata`: search the open catalogue by keyword, department, theme, tag, open type and district,
  with facet counts (the CKAN `package_search` of the platform, as any CKAN client calls it);
- `/opendata/dataset/{code}`: the GB/T 21063 metadata, the field list with each field's class, a
  preview table, a chart, a map where the rows have locations, downloads (CSV, JSON, GeoJSON,
  Parquet), usage figures and the snapshots of the last 30 days ("as of" a day). A conditionally open
  dataset says how to apply for an API key instead of showing rows.

Rows come from `datastore_search` without credentials, so the page shows exactly what an anonymous
client gets: sensitive fields masked, internal and confidential ones absent.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any
from urllib.parse import urlencode

import orjson
from nicegui import ui

from cityos.core import clock, messages
from cityos.web.auth import ApiError, Session
from cityos.web.cockpit.citymap import CityMap, district_feature
from cityos.web.datapages.common import (
    CYCLES,
    OPEN_TYPES,
    SHARE_TYPES,
    category,
    class_badge,
    department,
    table,
    when,
)
from cityos.web.shell import add_nav, frame, panel
from cityos.web.tiles import city_frame

add_nav("数据开放 Open data", "/opendata", None, icon="dataset")

PAGE_ROWS = 20
PREVIEW_ROWS = 20
SAMPLE_ROWS = 500  # rows behind the chart and the map
FACETS = (("organization", "提供部门 Department", "org"), ("groups", "资源分类 Theme", "group"),
          ("tags", "标签 Tags", "tag"), ("open_type", "开放类型 Open type", "open_type"),
          ("district", "区域 District", "district"))
SNAPSHOT_DAYS = 30


async def ckan(session: Session, action: str, **params: Any) -> Any:
    """A CKAN Action API call as an anonymous client would make it; `ApiError` when it fails."""
    answer = await session.raw("GET", f"/api/3/action/{action}", params=params)
    body = answer.json() if answer.content else {}
    if answer.status_code != 200 or not body.get("success"):
        raise ApiError(answer)
    return body["result"]


def facet_label(facet: str, value: str) -> str:
    if facet == "organization":
        return department(value)
    if facet == "groups":
        return category(value)
    if facet == "open_type":
        return OPEN_TYPES.get(value, value)
    if facet == "district":
        return messages.place(value)
    return value


def filter_query(filters: dict[str, str]) -> str:
    """The Solr `fq` of the chosen facet values (quotes inside a value cannot be expressed: dropped)."""
    names = {param: facet for facet, _label, param in FACETS}
    return " ".join(f'{names[p]}:"{v.replace(chr(34), "")}"' for p, v in filters.items() if v)


def search_url(filters: dict[str, str], **change: str) -> str:
    merged = {k: v for k, v in {**filters, **change}.items() if v}
    return "/opendata" + (f"?{urlencode(merged)}" if merged else "")


def extra(package: dict[str, Any], key: str) -> str:
    return next((str(e["value"]) for e in package.get("extras", []) if e["key"] == key), "")


@ui.page("/opendata", title="数据开放 Open data · CityOS")
async def opendata_page(q: str = "", org: str = "", group: str = "", tag: str = "", open_type: str = "",
                        district: str = "", page: str = "1") -> None:
    session = Session.current()
    await session.me()
    filters = {"q": q[:200], "org": org[:128], "group": group[:128], "tag": tag[:64], "open_type": open_type[:16],
               "district": district[:128]}
    number = max(1, min(int(page), 500)) if page.isdecimal() and len(page) < 6 else 1  # a bad page: the first
    with frame(session, "数据开放 Open data", active="/opendata"):
        try:
            found = await ckan(session, "package_search", q=filters["q"],
                               fq=filter_query({k: v for k, v in filters.items() if k != "q"}),
                               rows=PAGE_ROWS, start=(number - 1) * PAGE_ROWS, sort="name asc",
                               **{"facet.field": orjson.dumps([f for f, _l, _p in FACETS]).decode()})
        except ApiError as exc:
            ui.label(f"检索失败 Search failed: {exc.detail}").classes("text-amber-300 cityos-search-error")
            return
        _search_bar(filters)
        with ui.row().classes("w-full gap-3 no-wrap items-start"):
            _facets(filters, found["facets"])
            _results(filters, found, number)


def _search_bar(filters: dict[str, str]) -> None:
    with panel(classes="w-full"), ui.row().classes("w-full items-center gap-3 no-wrap"):
        box = ui.input("关键词 Keyword", value=filters["q"]).props("dark outlined dense clearable") \
            .classes("flex-1 cityos-search-input")

        def go() -> None:
            ui.navigate.to(search_url({**filters, "q": ""}, q=(box.value or "").strip()))

        box.on("keydown.enter", go)
        ui.button("检索 Search", icon="search", on_click=go).props("unelevated no-caps").classes("cityos-search")
        ui.label("开发者 Developers: CKAN API /api/3/action/ · DCAT-AP /catalog").classes("text-xs text-slate-400")


def _facets(filters: dict[str, str], facets: dict[str, dict[str, int]]) -> None:
    with panel("筛选 Filters", classes="w-[300px] shrink-0 cityos-facets"):
        chosen = [(p, v) for p, v in filters.items() if v and p != "q"]
        if chosen:
            with ui.row().classes("gap-1"):
                for param, value in chosen:
                    facet = next(f for f, _l, p in FACETS if p == param)
                    ui.chip(facet_label(facet, value), icon="close", removable=False,
                            on_click=lambda p=param: ui.navigate.to(search_url(filters, **{p: ""}))) \
                        .props("dense color=cyan-9").classes("cityos-active-filter")
        for facet, label, param in FACETS:
            counts = facets.get(facet) or {}
            if not counts:
                continue
            ui.label(label).classes("text-sm text-slate-300 mt-2")
            for value, count in list(counts.items())[:12]:
                with ui.row().classes("w-full items-center no-wrap gap-1"):
                    ui.link(facet_label(facet, value), search_url(filters, **{param: value, "page": ""})) \
                        .classes(f"text-cyan-300 text-sm flex-1 cityos-facet cityos-facet-{facet}")
                    ui.label(str(count)).classes("text-xs text-slate-400 font-mono")


def _results(filters: dict[str, str], found: dict[str, Any], page: int) -> None:
    with ui.column().classes("flex-1 gap-2"):
        ui.label(f"共 {found['count']} 个数据集 {found['count']} datasets").classes("text-slate-300 cityos-count")
        for package in found["results"]:
            _result(package)
        pages = max(1, -(-found["count"] // PAGE_ROWS))
        if pages > 1:
            ui.pagination(1, pages, direction_links=True, value=page,
                          on_change=lambda e: ui.navigate.to(search_url(filters, page=str(e.value)))) \
                .props("max-pages=9 color=cyan").classes("cityos-pages")


def _result(package: dict[str, Any]) -> None:
    code = package["name"]
    conditional = extra(package, "open_type") == "conditional"
    with panel(classes="w-full cursor-pointer hover:border-cyan-400 cityos-result") \
            .on("click", lambda c=code: ui.navigate.to(f"/opendata/dataset/{c}")):
        with ui.row().classes("w-full items-center gap-2 no-wrap"):
            ui.label(package["title"]).classes("text-lg text-slate-100 cityos-result-title")
            ui.label(extra(package, "title_en")).classes("text-sm text-slate-400")
            ui.space()
            ui.badge(OPEN_TYPES.get(extra(package, "open_type"), ""), color="warning" if conditional else "positive")
        with ui.row().classes("gap-4 text-xs text-slate-400"):
            ui.label(f"提供方 Provider: {department(package['organization']['name'])}")
            ui.label(f"分类 Theme: {category(extra(package, 'category'))}")
            ui.label(f"行数 Rows: {extra(package, 'row_count')}")
            ui.label(f"代码 Code: {code}").classes("font-mono")
        if package.get("tags"):
            with ui.row().classes("gap-1"):
                for tag in package["tags"][:8]:
                    ui.badge(tag["name"], color="secondary").props("outline")


# ---------------------------------------------------------------------- one dataset


def snapshot_days() -> list[str]:
    """The days a dataset can be read as of: today and the 29 before it, in the city's zone."""
    today = clock.now().astimezone(messages.city_zone()).date()
    return [(today - timedelta(days=n)).isoformat() for n in range(SNAPSHOT_DAYS)]


@ui.page("/opendata/dataset/{code}", title="数据集 Dataset · CityOS")
async def dataset_page(code: str, as_of: str = "") -> None:
    session = Session.current()
    await session.me()
    days = snapshot_days()
    as_of = as_of if as_of in days else ""
    with frame(session, "数据集 Dataset", active="/opendata"):
        try:
            package = await ckan(session, "package_show", id=code[:128])
            stats = await session.api("GET", f"/api/data/open/{package['name']}/stats")
        except ApiError as exc:
            ui.label(f"未找到数据集 No such open dataset: {code[:128]} ({exc.status})") \
                .classes("text-amber-300 cityos-not-found")
            ui.link("← 返回检索 Back to the search", "/opendata").classes("text-cyan-300")
            return
        conditional = extra(package, "open_type") == "conditional"
        sample: dict[str, Any] | None = None
        refused = ""
        params: dict[str, Any] = {"resource_id": package["name"], "limit": SAMPLE_ROWS}
        if stats["history"]:
            params["sort"] = "observedAt desc"
        if as_of:
            params["as_of"] = as_of
        try:
            sample = await ckan(session, "datastore_search", **params)
        except ApiError as exc:
            refused = exc.detail
        _heading(package, stats, as_of, days)
        with ui.row().classes("gap-4"):
            if session.can("data.share.request"):
                ui.link("申请部门间共享 Request this dataset for your department",
                        f"/data/sharing?dataset={package['name']}").classes("text-cyan-300 text-sm cityos-request-link")
            if session.can("data.catalogue.read"):
                ui.link("数据血缘 Lineage", f"/data/lineage/{package['name']}").classes("text-cyan-300 text-sm")
        with ui.row().classes("w-full gap-3 no-wrap items-start"):
            with ui.column().classes("w-[440px] shrink-0 gap-3"):
                _metadata(package, stats)
                _fields(package)
            with ui.column().classes("flex-1 gap-3 min-w-0"):
                if conditional:
                    _how_to_apply(package)
                _downloads(package, stats, as_of, conditional)
                if sample is not None:
                    _preview(sample, as_of)
                    _chart(sample, stats["history"])
                    if stats["geo"]:
                        _map(sample)
                elif not conditional:
                    ui.label(f"无法读取数据 Cannot read the rows: {refused}").classes("text-amber-300")
                _usage(stats)


def _heading(package: dict[str, Any], stats: dict[str, Any], as_of: str, days: list[str]) -> None:
    with panel(classes="w-full"), ui.row().classes("w-full items-center gap-3"):
        ui.link("← 检索 Search", "/opendata").classes("text-cyan-300 text-sm")
        ui.label(package["title"]).classes("text-2xl text-slate-100 cityos-dataset-title")
        ui.label(extra(package, "title_en")).classes("text-slate-400")
        ui.space()
        options = {"": "最新 Latest"} | {d: f"{d} 快照 snapshot" for d in days}
        ui.select(options, value=as_of, label="数据版本 As of",
                  on_change=lambda e: ui.navigate.to(
                      f"/opendata/dataset/{package['name']}" + (f"?as_of={e.value}" if e.value else ""))) \
            .props("dark outlined dense").classes("w-60 cityos-as-of")
    if package.get("notes"):
        ui.label(package["notes"]).classes("text-sm text-slate-300")


def _metadata(package: dict[str, Any], stats: dict[str, Any]) -> None:
    score = stats.get("qualityScore")
    items = (
        ("资源名称 Name", package["title"]), ("资源代码 Code", package["name"]),
        ("提供方 Provider", department(package["organization"]["name"])),
        ("资源分类 Theme", category(extra(package, "category"))),
        ("资源格式 Format", "CSV · JSON · Parquet" + (" · GeoJSON" if stats["geo"] else "")),
        ("更新周期 Update cycle", CYCLES.get(extra(package, "update_cycle"), extra(package, "update_cycle"))),
        ("共享类型 Share type", SHARE_TYPES.get(extra(package, "share_type"), "")),
        ("开放类型 Open type", OPEN_TYPES.get(extra(package, "open_type"), "")),
        ("区域 District", messages.place(extra(package, "district")) or "全市 Whole city"),
        ("数据量 Rows", str(stats["rows"])), ("版本 Version", package["version"]),
        ("更新时间 Modified", when(package["metadata_modified"])),
        ("质量评分 Quality", "未检查 not checked" if score is None else f"{score:g}"),
        ("许可 Licence", package["license_title"]))
    with panel("元数据 Metadata (GB/T 21063)", classes="w-full cityos-metadata"):
        for name, value in items:
            with ui.row().classes("w-full no-wrap gap-2"):
                ui.label(name).classes("w-36 shrink-0 text-slate-400 text-sm")
                ui.label(value).classes("text-slate-100 text-sm break-all")
        if package.get("tags"):
            with ui.row().classes("gap-1 mt-1"):
                for tag in package["tags"]:
                    ui.link(tag["name"], f"/opendata?tag={tag['name']}").classes("text-xs text-cyan-300")


def _fields(package: dict[str, Any]) -> None:
    with panel("字段 Fields", classes="w-full cityos-fields"):
        for f in package.get("fields", []):
            with ui.row().classes("w-full items-center no-wrap gap-2 cityos-field"):
                ui.label(f["id"]).classes("flex-1 font-mono text-sm text-slate-200")
                ui.label(f["type"]).classes("w-20 text-xs text-slate-400")
                class_badge(f["dataClass"])
        ui.label("敏感字段开放时脱敏，内部与涉密字段不开放 · Sensitive fields are masked; internal and confidential "
                 "ones are not published").classes("text-xs text-slate-500")


def _how_to_apply(package: dict[str, Any]) -> None:
    with panel("申请 API key How to apply", classes="w-full cityos-apply"):
        ui.label("本数据集为有条件开放：须向数据管理机构申请 API key，说明用途，按速率限制调用。 "
                 "This dataset is conditionally open: apply to the data office for an API key, stating your "
                 "purpose; the key carries a rate limit.").classes("text-slate-200 text-sm")
        ui.label("申请须提供 An application gives: 申请人 holder · 用途 purpose · 数据集代码 dataset codes · "
                 "每分钟调用次数 calls per minute").classes("text-slate-300 text-sm")
        ui.link("在线申请 API key Apply for a key", f"/opendata/apply?dataset={package['name']}") \
            .classes("text-cyan-300 text-sm cityos-apply-link")
        ui.code("curl -H 'Authorization: <API key>' 'https://<host>/api/3/action/datastore_search"
                f"?resource_id={package['name']}&limit=5'", language="bash").classes("w-full text-xs")


def _downloads(package: dict[str, Any], stats: dict[str, Any], as_of: str, conditional: bool) -> None:
    formats = ["csv", "json", "parquet"] + (["geojson"] if stats["geo"] else [])
    with panel("下载 Downloads", classes="w-full cityos-downloads"), ui.row().classes("items-center gap-2"):
        for fmt in formats:
            url = f"/opendata/download/{package['name']}.{fmt}" + (f"?as_of={as_of}" if as_of else "")
            if conditional:
                ui.button(fmt.upper(), icon="lock").props("outline dense no-caps disable") \
                    .classes(f"cityos-download-{fmt}")
            else:
                with ui.link(target=url, new_tab=True).classes(f"no-underline cityos-download-{fmt}"):
                    ui.button(fmt.upper(), icon="download").props("outline dense no-caps")
        ui.label("需 API key Needs an API key" if conditional else
                 ("快照 Snapshot " + as_of if as_of else "最新版本 Latest version")).classes("text-xs text-slate-400")


def _preview(sample: dict[str, Any], as_of: str) -> None:
    columns = [f["id"] for f in sample["fields"] if f["id"] != "_id"]
    total = sample.get("total", len(sample["records"]))
    title = f"数据预览 Preview · {total} 行 rows" + (f" · 截至 as of {as_of}" if as_of else "")
    with panel(title, classes="w-full cityos-preview"):
        if not sample["records"]:
            ui.label("该版本无数据 No rows in this version").classes("text-slate-400 cityos-empty")
            return
        table(columns, sample["records"][:PREVIEW_ROWS], "cityos-preview-table")


def chart_options(records: list[dict[str, Any]], fields: list[dict[str, Any]], history: bool) -> dict[str, Any] | None:
    """A line per measured attribute over time (reading history), else a bar per row of the first numeric
    field; None when the rows have nothing to draw."""
    axis = {"axisLabel": {"color": "#94a3b8"}, "splitLine": {"lineStyle": {"color": "#1d3557"}}}
    base: dict[str, Any] = {"backgroundColor": "transparent", "tooltip": {"trigger": "axis"},
                            "legend": {"textStyle": {"color": "#cbd5e1"}, "type": "scroll", "top": 0},
                            "grid": {"left": 60, "right": 20, "top": 40, "bottom": 70}}
    if history:
        series: dict[str, list[list[Any]]] = {}
        for r in records:
            if isinstance(r.get("value"), int | float) and r.get("observedAt"):
                series.setdefault(str(r.get("attribute")), []).append([r["observedAt"], r["value"]])
        if not series:
            return None
        return base | {"xAxis": {"type": "time", **axis}, "yAxis": {"type": "value", **axis},
                       "series": [{"type": "line", "name": name, "showSymbol": False,
                                   "data": sorted(points)} for name, points in list(series.items())[:8]]}
    numeric = [f["id"] for f in fields if f.get("type") in ("numeric", "int", "float") and f["id"] != "_id"]
    if not numeric:
        return None
    name = numeric[0]
    rows = [r for r in records if isinstance(r.get(name), int | float)][:40]
    if not rows:
        return None
    keys = [str(r.get("name") or r.get("id") or r.get("_key") or r["_id"]).rsplit(":", 1)[-1] for r in rows]
    return base | {"xAxis": {"type": "category", "data": keys, "axisLabel": {"color": "#94a3b8", "rotate": 40}},
                   "yAxis": {"type": "value", "name": name, **axis},
                   "series": [{"type": "bar", "name": name, "data": [r[name] for r in rows],
                               "itemStyle": {"color": "#22d3ee"}}]}


def _chart(sample: dict[str, Any], history: bool) -> None:
    options = chart_options(sample["records"], sample["fields"], history)
    if options is None:
        return
    with panel("图表 Chart", classes="w-full cityos-chart"):
        ui.echart(options).classes("w-full h-72")


def map_layers(records: list[dict[str, Any]]) -> dict[str, Any]:
    """The rows' locations as the cockpit map's layers: points as its device layer ([lat, lon, state,
    label]), polygons as its district layer (filled, labelled); {} when no row has a location."""
    points, shapes = [], []
    for r in records:
        loc = r.get("location")
        if not isinstance(loc, dict):
            continue
        label = str(r.get("name") or r.get("id") or r.get("_id")).rsplit(":", 1)[-1]
        coords = loc.get("coordinates") or []
        if loc.get("type") == "Point" and len(coords) == 2 and all(isinstance(c, int | float) for c in coords):
            points.append([coords[1], coords[0], "data", label])
        elif loc.get("type") in ("Polygon", "MultiPolygon"):
            try:
                shapes.append(district_feature({"geometry": loc, "key": str(r.get("_id")), "name": label},
                                               "#0891b2"))
            except (ValueError, TypeError, AttributeError):  # a malformed ring: not drawn
                continue
    layers: dict[str, Any] = {}
    if points:
        layers |= {"devices": points, "deviceColours": {"data": "#22d3ee"}}
    if shapes:
        layers["districts"] = {"type": "FeatureCollection", "features": shapes}
    return layers


def _map(sample: dict[str, Any]) -> None:
    layers = map_layers(sample["records"])
    if not layers:
        return
    count = len(layers.get("devices", [])) + len(layers.get("districts", {}).get("features", []))
    with panel(f"地图 Map · {count} 个位置 locations", classes="w-full h-[420px] cityos-dataset-map"):
        bounds, labels = city_frame()
        city = CityMap(bounds, labels, "w-full h-full")

    async def push() -> None:
        await city.update(layers)
        if set(layers) - {"deviceColours"} <= set(city._sent):  # drawn: stop asking
            timer.deactivate()

    timer = ui.timer(1.0, push)


def _usage(stats: dict[str, Any]) -> None:
    usage = stats["usage"]
    with panel("使用统计 Usage", classes="w-full cityos-usage"):
        with ui.row().classes("gap-8"):
            for kind, label in (("view", "浏览 Views"), ("search", "检索命中 Search hits"),
                                ("api", "接口调用 API reads"), ("download", "下载 Downloads")):
                with ui.column().classes("gap-0 items-center"):
                    ui.label(str(usage.get(kind, 0))).classes(f"cityos-kpi-value cityos-usage-{kind}")
                    ui.label(label).classes("cityos-kpi-label")
        versions = stats.get("versions") or []
        if versions:
            ui.label("近30天版本 Snapshots of the last 30 days").classes("text-sm text-slate-300 mt-2")
            table(["version", "createdAt", "rows"],
                  [{**v, "createdAt": when(v["createdAt"])} for v in versions[-10:][::-1]], "cityos-versions",
                  labels={})
