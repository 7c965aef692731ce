"""The data office's pages (数据治理): quality and lineage.

- `/data/quality`: the quality score of each checked dataset and of each source department (mean of its
  datasets) against the 99.5% accuracy target, the datasets below it first, and the fields claimed by
  more than one source (一数一源 conflicts);
- `/data/quality/{code}`: one dataset's score history (trend), the failures per rule, a new check, and
  the quarantined records with their reasons, each releasable after review (masked per data class by
  the API);
- `/data/lineage/{code}`: the dataset's upstream and downstream as a graph (OpenLineage runs), the runs,
  the versions with the run that produced each, and each field's authoritative source.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from fastapi.responses import RedirectResponse
from nicegui import ui

from cityos.security.policy import roles_allowed
from cityos.web.auth import ApiError, Session, require_login
from cityos.web.datapages.common import category, class_badge, department, table, when
from cityos.web.shell import add_nav, frame, panel

OFFICE_ROLES = roles_allowed("data.quality.manage")
LINEAGE_ROLES = roles_allowed("data.catalogue.read")
add_nav("数据治理 Data office", "/data/quality", OFFICE_ROLES, icon="fact_check")
AXIS = {"axisLabel": {"color": "#94a3b8"}, "splitLine": {"lineStyle": {"color": "#1d3557"}}}


def source_scores(datasets: list[dict[str, Any]]) -> dict[str, float]:
    """Mean quality score of each provider's checked datasets."""
    scores: dict[str, list[float]] = defaultdict(list)
    for d in datasets:
        if d.get("qualityScore") is not None:
            scores[d["provider"]].append(float(d["qualityScore"]))
    return {p: round(sum(v) / len(v), 3) for p, v in sorted(scores.items())}


def sources_options(scores: dict[str, float], target: float) -> dict[str, Any]:
    return {"backgroundColor": "transparent", "tooltip": {"trigger": "axis"},
            "grid": {"left": 60, "right": 80, "top": 30, "bottom": 70},
            "xAxis": {"type": "category", "data": [department(p) for p in scores],
                      "axisLabel": {"color": "#94a3b8", "rotate": 30}},
            "yAxis": {"type": "value", "min": axis_floor(scores), "max": 100, **AXIS},
            "series": [{"type": "bar", "name": "质量评分 Score", "data": [
                {"value": v, "itemStyle": {"color": "#22d3ee" if v >= target else "#f87171"}} for v in scores.values()],
                "markLine": {"symbol": "none", "data": [{"yAxis": target, "name": "目标 Target"}],
                             "lineStyle": {"color": "#f59e0b", "type": "dashed"},
                             "label": {"color": "#f59e0b", "formatter": f"目标 {target}%"}}}]}


def axis_floor(scores: dict[str, float]) -> float:
    """The score axis starts a little below the lowest score (differences near 100% stay visible)."""
    low = min(scores.values(), default=90.0)
    return float(max(0, int(min(low, 99.0)) - 5))


@ui.page("/data/quality", title="数据质量 Data quality · CityOS")
async def quality_page() -> RedirectResponse | None:
    session = await require_login(OFFICE_ROLES)
    if not isinstance(session, Session):
        return session
    with frame(session, "数据治理 Data office", active="/data/quality"):
        try:
            found = await session.api("GET", "/api/data/datasets", params={"rows": 500})
            conflicts = (await session.api("GET", "/api/data/sources/conflicts"))["conflicts"]
            sharing = await session.api("GET", "/api/data/share-stats")
        except ApiError as exc:
            ui.label(f"无法读取目录 Cannot read the catalogue: {exc.detail}").classes("text-amber-300")
            return None
        datasets = found["datasets"]
        checked = [d for d in datasets if d.get("qualityScore") is not None]
        target = 99.5
        below = [d for d in checked if d["qualityScore"] < target]
        with ui.row().classes("w-full gap-3"):
            for value, label, key in ((found["count"], "编目数据集 Catalogued", "catalogued"),
                                      (len(checked), "已检查 Checked", "checked"),
                                      (len(below), f"低于 {target}% Below target", "below"),
                                      (len(conflicts), "一数多源 Source conflicts", "conflicts")):
                with panel(classes="w-56 items-center"):
                    ui.label(str(value)).classes(f"cityos-kpi-value cityos-kpi-{key}")
                    ui.label(label).classes("cityos-kpi-label")
        with ui.row().classes("w-full gap-3 no-wrap items-start"):
            with panel("各来源部门质量 Quality per source department", classes="flex-1 cityos-source-scores"):
                scores = source_scores(datasets)
                if scores:
                    ui.echart(sources_options(scores, target)).classes("w-full h-72")
                else:
                    ui.label("尚无质量检查 No quality check yet").classes("text-slate-500")
            with panel("一数一源冲突 Fields with more than one source", classes="w-[520px] cityos-conflicts"):
                if not conflicts:
                    ui.label("无冲突 None").classes("text-slate-500")
                for c in conflicts[:20]:
                    sources = " · ".join(f"{s['source']} ({len(s['datasets'])})" for s in c["sources"])
                    ui.label(f"{c['item']}: {sources}").classes("text-xs text-slate-300 cityos-conflict")
        with panel(f"共享使用 Sharing per requesting department · 已共享数据集 datasets shared "
                   f"{sharing['datasetsShared']}", classes="w-full cityos-sharing-kpis"):
            figures = [{"department": department(name), **counts}
                       for name, counts in sorted(sharing["departments"].items())]
            table(["department", "requests", "granted", "reads"], figures, labels={})
        rows = sorted(datasets, key=lambda d: (d.get("qualityScore") is None, d.get("qualityScore") or 0, d["code"]))
        with panel("数据集质量 Quality per dataset (点击查看 click for details)",
                   classes="w-full cityos-dataset-scores"):
            columns = [{"name": "code", "label": "代码 Code", "field": "code", "align": "left"},
                       {"name": "name", "label": "名称 Name", "field": "name", "align": "left"},
                       {"name": "provider", "label": "来源 Source", "field": "provider", "align": "left"},
                       {"name": "category", "label": "分类 Theme", "field": "category", "align": "left"},
                       {"name": "rows", "label": "行数 Rows", "field": "rows"},
                       {"name": "score", "label": "评分 Score", "field": "score"}]
            items = [{"code": d["code"], "name": d["name"], "provider": department(d["provider"]),
                      "category": category(d["category"]), "rows": d["rows"],
                      "score": "未检查 not checked" if d.get("qualityScore") is None else f"{d['qualityScore']:g}"}
                     for d in rows]
            grid = ui.table(columns=columns, rows=items, row_key="code", pagination=15) \
                .props("dense flat").classes("w-full cursor-pointer cityos-quality-table")
            grid.on("rowClick", lambda e: ui.navigate.to(f"/data/quality/{e.args[1]['code']}"))
    return None


def trend_options(history: list[dict[str, Any]], target: float) -> dict[str, Any]:
    points = list(reversed(history))
    return {"backgroundColor": "transparent", "tooltip": {"trigger": "axis"},
            "legend": {"textStyle": {"color": "#cbd5e1"}, "top": 0},
            "grid": {"left": 60, "right": 30, "top": 40, "bottom": 40},
            "xAxis": {"type": "category", "data": [when(p["at"]) for p in points],
                      "axisLabel": {"color": "#94a3b8"}},
            "yAxis": {"type": "value", "max": 100,
                      "min": axis_floor({str(i): p["score"] for i, p in enumerate(points)}), **AXIS},
            "series": [{"type": "line", "name": "质量评分 Score", "data": [p["score"] for p in points],
                        "itemStyle": {"color": "#22d3ee"}},
                       {"type": "line", "name": "目标 Target", "data": [target] * len(points), "symbol": "none",
                        "lineStyle": {"type": "dashed", "color": "#f59e0b"}}]}


@ui.page("/data/quality/{code}", title="数据质量 Data quality · CityOS")
async def dataset_quality_page(code: str) -> RedirectResponse | None:
    session = await require_login(OFFICE_ROLES)
    if not isinstance(session, Session):
        return session
    code = code[:128]
    with frame(session, "数据质量 Data quality", active="/data/quality"):
        body = ui.column().classes("w-full gap-3")

        async def show() -> None:
            try:
                ds = await session.api("GET", f"/api/data/datasets/{code}")
                report = await session.api("GET", f"/api/data/quality/{code}")
            except ApiError as exc:
                body.clear()
                with body:
                    ui.label(f"未找到数据集 No such dataset: {code} ({exc.detail})").classes("text-amber-300")
                return
            body.clear()
            with body:
                render(ds, report)

        async def check() -> None:
            try:
                result = await session.api("POST", f"/api/data/quality/{code}/check")
            except ApiError as exc:
                ui.notify(f"检查失败 Check failed: {exc.detail}", type="negative")
                return
            ui.notify(f"评分 Score {result['score']:g} · 隔离 quarantined {result['failed']}", type="positive")
            await show()

        async def release(item_id: int) -> None:
            try:
                await session.api("POST", f"/api/data/quarantine/{item_id}/release")
            except ApiError as exc:
                ui.notify(f"未放行 Not released: {exc.detail}", type="negative")
                return
            ui.notify("已复核放行 Reviewed and released", type="positive")
            await show()

        def render(ds: dict[str, Any], report: dict[str, Any]) -> None:
            latest = report.get("latest")
            target = report["accuracyTarget"]
            with ui.row().classes("w-full items-center gap-3"):
                ui.link("← 数据治理 Data office", "/data/quality").classes("text-cyan-300 text-sm")
                ui.label(f"{ds['name']} · {ds['code']}").classes("text-xl text-slate-100 cityos-quality-title")
                ui.space()
                ui.button("运行检查 Run check", icon="rule", on_click=check).props("unelevated no-caps") \
                    .classes("cityos-run-check")
                ui.button("血缘 Lineage", icon="account_tree",
                          on_click=lambda: ui.navigate.to(f"/data/lineage/{code}")).props("outline no-caps")
            with ui.row().classes("w-full gap-3 no-wrap items-start"):
                with panel("最新评分 Latest score", classes="w-[320px] cityos-latest"):
                    if latest is None:
                        ui.label("尚未检查 Not checked yet").classes("text-slate-400 cityos-not-checked")
                    else:
                        met = latest["score"] >= target
                        ui.label(f"{latest['score']:g}").classes("cityos-kpi-value cityos-latest-score") \
                            .style(f"color:{'#4ade80' if met else '#f87171'}")
                        ui.label(f"准确率目标 Accuracy target {target}% · {'达标 met' if met else '未达标 missed'}") \
                            .classes("text-xs text-slate-400")
                        trend = report.get("trend")
                        if trend is not None:
                            ui.label(f"较上次 Since the last check {trend:+g}").classes(
                                "text-sm " + ("text-green-400" if trend >= 0 else "text-red-400") + " cityos-trend")
                        ui.label(f"检查 Checked {latest['checked']} · 未通过 Failed {latest['failed']} · "
                                 f"{when(latest['at'])}").classes("text-xs text-slate-300")
                        for rule, count in (latest.get("byRule") or {}).items():
                            ui.label(f"{rule}: {count}").classes("text-xs text-amber-300 cityos-rule-failure")
                with panel("评分趋势 Score trend", classes="flex-1 cityos-quality-trend"):
                    if report["history"]:
                        ui.echart(trend_options(report["history"], target)).classes("w-full h-64")
                    else:
                        ui.label("无历史 No history").classes("text-slate-500")
            held = [q for q in report["quarantine"] if q["status"] == "held"]
            with panel(f"隔离记录 Quarantined records · {len(held)} 待复核 held", classes="w-full cityos-quarantine"):
                if not report["quarantine"]:
                    ui.label("无隔离记录 Nothing quarantined").classes("text-slate-500")
                classes = {f["id"]: f["dataClass"] for f in ds["fields"]}
                for item in report["quarantine"][:100]:
                    with ui.row().classes(f"w-full items-start no-wrap gap-2 cityos-held cityos-held-{item['status']}"):
                        ui.label(item["rowKey"]).classes("w-56 shrink-0 font-mono text-xs text-slate-300 break-all")
                        with ui.column().classes("flex-1 gap-0"):
                            ui.label("原因 Reasons: " + "; ".join(item["reasons"])) \
                                .classes("text-xs text-amber-300 cityos-held-reasons")
                            shown = ", ".join(f"{k}={v}" for k, v in item["record"].items()
                                              if classes.get(k) != "confidential")
                            ui.label(shown[:400]).classes("text-xs text-slate-400 break-all cityos-held-record")
                        if item["status"] == "held":
                            ui.button("复核放行 Release", icon="done",
                                      on_click=lambda i=item["id"]: release(i)) \
                                .props("outline dense no-caps").classes("cityos-release")
                        else:
                            ui.badge(f"已放行 Released · {item.get('reviewedBy') or ''}", color="positive")

        await show()
    return None


# ---------------------------------------------------------------------- lineage


def node_label(node: str) -> str:
    kind, _sep, name = node.partition(":")
    kinds = {"catalogue": "目录 Catalogue", "quality": "质量 Quality", "upload": "上传 Upload", "hub": "中枢 Hub",
             "iot": "物联 IoT"}
    return f"{name}\n({kinds.get(kind, kind)})"


def lineage_options(graph: dict[str, Any]) -> dict[str, Any]:
    """An ECharts graph laid out by depth: upstream to the left, the dataset in the middle, downstream right."""
    node = graph["node"]
    depth: dict[str, int] = {node: 0}
    for edges, step in ((graph["upstream"], -1), (graph["downstream"], 1)):
        frontier = {node}
        for _round in range(3):
            nxt = set()
            for e in edges:
                near, far = (e["to"], e["from"]) if step < 0 else (e["from"], e["to"])
                if near in frontier and far not in depth:
                    depth[far] = depth[near] + step
                    nxt.add(far)
            frontier = nxt
    columns: dict[int, list[str]] = defaultdict(list)
    for name in sorted(depth):
        columns[depth[name]].append(name)
    nodes = []
    for level, names in columns.items():
        for i, name in enumerate(names):
            nodes.append({"name": name, "x": level * 300, "y": (i - (len(names) - 1) / 2) * 110,
                          "category": 0 if name == node else (1 if level < 0 else 2),
                          "symbolSize": 60 if name == node else 44,
                          "label": {"show": True, "position": "bottom", "formatter": node_label(name),
                                    "color": "#e2e8f0"}})
    links = [{"source": e["from"], "target": e["to"], "label": {"show": True, "formatter": e["job"].rsplit(".", 1)[-1],
                                                                 "color": "#94a3b8", "fontSize": 10}}
             for e in graph["upstream"] + graph["downstream"] if e["from"] in depth and e["to"] in depth]
    return {"backgroundColor": "transparent", "tooltip": {},
            "legend": {"data": ["本数据集 This dataset", "上游 Upstream", "下游 Downstream"],
                       "textStyle": {"color": "#cbd5e1"}},
            "series": [{"type": "graph", "layout": "none", "roam": True, "edgeSymbol": ["none", "arrow"],
                        "edgeSymbolSize": 10, "data": nodes, "links": links,
                        "categories": [{"name": "本数据集 This dataset", "itemStyle": {"color": "#22d3ee"}},
                                       {"name": "上游 Upstream", "itemStyle": {"color": "#a78bfa"}},
                                       {"name": "下游 Downstream", "itemStyle": {"color": "#4ade80"}}],
                        "lineStyle": {"color": "#64748b", "width": 2, "curveness": 0.1}}]}


@ui.page("/data/lineage/{code}", title="数据血缘 Lineage · CityOS")
async def lineage_page(code: str) -> RedirectResponse | None:
    session = await require_login(LINEAGE_ROLES)
    if not isinstance(session, Session):
        return session
    code = code[:128]
    with frame(session, "数据血缘 Data lineage", active="/data/quality"):
        try:
            ds = await session.api("GET", f"/api/data/datasets/{code}")
            graph = await session.api("GET", f"/api/data/lineage/{code}")
        except ApiError as exc:
            ui.label(f"未找到数据集 No such dataset: {code} ({exc.detail})").classes("text-amber-300")
            return None
        with ui.row().classes("w-full items-center gap-3"):
            ui.label(f"{ds['name']} · {ds['code']}").classes("text-xl text-slate-100 cityos-lineage-title")
            if session.can("data.quality.manage"):
                ui.link("质量 Quality", f"/data/quality/{code}").classes("text-cyan-300 text-sm")
        with panel("血缘图 Lineage graph (上游 upstream → 下游 downstream)", classes="w-full cityos-lineage-graph"):
            if not graph["upstream"] and not graph["downstream"]:
                ui.label("尚无运行记录 No runs recorded yet").classes("text-slate-500")
            ui.echart(lineage_options(graph)).classes("w-full h-[420px]")
        with ui.row().classes("w-full gap-3 no-wrap items-start"):
            with panel("运行 Runs (OpenLineage)", classes="flex-1 cityos-lineage-runs"):
                runs = [{"job": e["job"], "from": e["from"], "to": e["to"], "run": e["runId"][:8], "at": when(e["at"])}
                        for e in graph["upstream"] + graph["downstream"]]
                table(["job", "from", "to", "run", "at"], runs, labels={})
            with panel("版本 Versions", classes="w-[420px] cityos-lineage-versions"):
                table(["version", "createdAt", "rows", "run"],
                      [{**v, "createdAt": when(v["createdAt"]), "run": (v.get("runId") or "")[:8]}
                       for v in ds["versions"][::-1][:15]], labels={})
        with panel("字段权威来源 Authoritative source of each field (一数一源)",
                   classes="w-full cityos-lineage-fields"):
            for f in graph["fields"]:
                source = f.get("source") or {}
                with ui.row().classes("w-full items-center no-wrap gap-2"):
                    ui.label(f["id"]).classes("w-56 font-mono text-sm text-slate-200")
                    class_badge(f["dataClass"])
                    ui.label(f"{department(source.get('department'))} · {source.get('system') or '—'}") \
                        .classes("text-xs text-slate-300")
    return None
