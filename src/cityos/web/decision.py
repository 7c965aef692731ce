"""`/decision`: the decision cockpit (决策驾驶舱) for city leaders, separate from the operator's cockpit.

The maturity score and band with what it rests on, the risk radar of the six categories, each
category's indicators against their targets, a click on an indicator for its 12-period trend and its
values per district and department, and the latest reports. Everything comes from the evaluation API
with the signed-in user's token; indicators without data say so.
"""

from __future__ import annotations

from typing import Any

from fastapi.responses import RedirectResponse
from nicegui import ui

from cityos.security.policy import roles_allowed
from cityos.web.auth import ApiError, Session, require_login
from cityos.web.shell import add_nav, frame, panel

DECISION_ROLES = roles_allowed("evaluation.read")
PERIODS = {"week": "周 Week", "month": "月 Month", "quarter": "季 Quarter"}
STATUS = {"green": ("达标 Met", "positive"), "yellow": ("预警 Warning", "warning"),
          "red": ("未达标 Missed", "negative"), "no_data": ("无数据 No data", "grey-7"),
          "no_source": ("暂无数据源 No source yet", "grey-8"),
          "info": ("监测 Tracked", "info")}
BAND_COLOURS = {"mature": "#4ade80", "growth": "#22d3ee", "start-up": "#facc15", "preparation": "#f87171"}

add_nav("决策驾驶舱 Decision", "/decision", DECISION_ROLES, icon="insights")


def _value(item: dict[str, Any]) -> str:
    return "—" if item.get("value") is None else f"{item['value']:g} {item['unit']}"


def _target(item: dict[str, Any]) -> str:
    if item.get("target") is None:
        return "—"
    return f"{'≥' if item['direction'] == 'higher' else '≤'} {item['target']:g} {item['unit']}"


def radar_options(radar: dict[str, Any]) -> dict[str, Any]:
    """ECharts radar of the category scores (a category without data is drawn at 0 and named so)."""
    categories = radar["categories"]
    return {
        "backgroundColor": "transparent",
        "radar": {"indicator": [{"name": c["name"]["zh"] + ("" if c["score"] is not None else "\n(无数据)"),
                                 "max": 100} for c in categories],
                  "axisName": {"color": "#cbd5e1"}, "splitLine": {"lineStyle": {"color": "#1d3557"}},
                  "splitArea": {"areaStyle": {"color": ["rgba(13,26,48,.6)", "rgba(8,20,38,.6)"]}}},
        "series": [{"type": "radar", "areaStyle": {"opacity": 0.25}, "lineStyle": {"color": "#22d3ee"},
                    "itemStyle": {"color": "#22d3ee"},
                    "data": [{"value": [c["score"] or 0 for c in categories], "name": "得分 Score"}]}],
        "tooltip": {}}


def trend_options(indicator: dict[str, Any], points: list[dict[str, Any]]) -> dict[str, Any]:
    series: list[dict[str, Any]] = [{"type": "line", "name": indicator["name"]["zh"], "smooth": True,
                                     "data": [p["value"] for p in points], "itemStyle": {"color": "#22d3ee"}}]
    if indicator.get("target") is not None:
        series.append({"type": "line", "name": "目标 Target", "data": [indicator["target"]] * len(points),
                       "lineStyle": {"type": "dashed", "color": "#f59e0b"}, "symbol": "none"})
    return {"backgroundColor": "transparent", "tooltip": {"trigger": "axis"},
            "legend": {"textStyle": {"color": "#cbd5e1"}},
            "xAxis": {"type": "category", "data": [p["label"] for p in points],
                      "axisLabel": {"color": "#94a3b8"}},
            "yAxis": {"type": "value", "name": indicator["unit"], "axisLabel": {"color": "#94a3b8"},
                      "splitLine": {"lineStyle": {"color": "#1d3557"}}},
            "series": series}


class DecisionCockpit:
    def __init__(self, session: Session, period: str) -> None:
        self.session = session
        self.period = period
        self.content = ui.column().classes("w-full gap-3")

    async def show(self) -> None:
        try:
            maturity = await self.session.api("GET", "/api/evaluation/maturity", params={"period": self.period})
            radar = await self.session.api("GET", "/api/evaluation/radar", params={"period": self.period})
        except ApiError as exc:
            self.content.clear()
            with self.content:
                ui.label(f"无法读取评估数据 Cannot read the evaluation: {exc}").classes("text-amber-300")
            return
        self.content.clear()
        with self.content:
            with ui.row().classes("w-full gap-3 no-wrap items-stretch"):
                self._maturity(maturity)
                with panel("风险雷达 Risk radar", classes="flex-1 min-w-[420px] cityos-radar"):
                    ui.echart(radar_options(radar)).classes("w-full h-80")
                self._reports()
            with ui.row().classes("w-full gap-3 items-start"):
                for category in radar["categories"]:
                    self._category(category)

    def _maturity(self, maturity: dict[str, Any]) -> None:
        band = maturity.get("band") or {}
        colour = BAND_COLOURS.get(band.get("en", ""), "#94a3b8")
        coverage = maturity["coverage"]
        with panel("成熟度 Maturity", classes="w-[320px] cityos-maturity"):
            score = maturity.get("score")
            ui.label("—" if score is None else f"{score:g}").classes("cityos-kpi-value cityos-maturity-score") \
                .style(f"color:{colour}; font-size:3.2rem")
            ui.label(f"{band.get('zh', '无数据')} {band.get('en', 'no data')}").classes("text-xl").style(
                f"color:{colour}")
            if maturity.get("provisional"):
                ui.badge("暂定：数据不足 Provisional: too few indicators measured", color="warning") \
                    .classes("cityos-provisional")
            ui.label(f"依据 {coverage['measured']}/{coverage['radarIndicators']} 项有数据的雷达指标 · "
                     f"based on {coverage['measured']} of {coverage['radarIndicators']} radar indicators") \
                .classes("text-xs text-slate-400 cityos-coverage")
            ui.label("准备期 <55 · 起步期 55–70 · 成长期 70–85 · 成熟期 ≥85").classes("text-xs text-slate-500")
            if maturity.get("moved"):
                ui.label("较上期 Since the last period").classes("text-sm text-slate-300 mt-2")
                for move in maturity["moved"][:4]:
                    arrow = "▲" if move["change"] > 0 else "▼"
                    ui.label(f"{arrow} {move['indicator']} {move['change']:+g}").classes(
                        "text-xs " + ("text-green-400" if move["change"] > 0 else "text-red-400"))

    def _reports(self) -> None:
        with panel("评估报告 Reports", classes="w-[260px] cityos-reports"):
            reports = (("week", "周调度 Weekly"), ("month", "月通报 Monthly"), ("quarter", "季评估 Quarterly"))
            for kind, label in reports:
                with ui.row().classes("items-center gap-2"):
                    ui.label(label).classes("text-slate-200 w-28")
                    for extension in ("pdf", "xlsx"):
                        ui.button(extension.upper(), on_click=lambda k=kind, x=extension: self.download(k, x)) \
                            .props("flat dense no-caps").classes(f"text-cyan-300 cityos-report-{kind}-{extension}")
            if self.session.can("evaluation.compute"):
                ui.button("重新计算 Recompute", icon="refresh", on_click=self.recompute) \
                    .props("outline no-caps").classes("mt-2 cityos-recompute")
            if self.session.can("evaluation.assess"):
                ui.button("神秘人暗访 Mystery shopper", icon="fact_check",
                          on_click=lambda: ui.navigate.to("/decision/mystery-shopper")) \
                    .props("outline no-caps").classes("mt-1 cityos-mystery-link")

    def _category(self, category: dict[str, Any]) -> None:
        score = category["score"]
        count = f"{category['measured']}/{len(category['indicators'])}"
        title = f"{category['name']['zh']} {category['name']['en']} · " + (
            "无数据 no data" if score is None else f"{score:g}（{count} 项有数据 measured）")
        with panel(title, classes=f"w-[560px] cityos-category cityos-category-{category['id']}"):
            for item in category["indicators"]:
                label, colour = STATUS.get(item["status"], (item["status"], "grey"))
                with ui.row().classes("w-full items-center no-wrap gap-2 cursor-pointer cityos-indicator") \
                        .on("click", lambda it=item: self.detail(it)):
                    ui.label(f"{item['name']['zh']} {item['name']['en']}").classes("flex-1 text-slate-200 text-sm")
                    ui.label(_value(item)).classes("w-24 text-right font-mono text-slate-100")
                    ui.label(_target(item)).classes("w-24 text-right text-xs text-slate-400")
                    ui.badge(label, color=colour).classes("w-32 justify-center")

    async def detail(self, item: dict[str, Any]) -> None:
        """The indicator's trend and its values per district and department."""
        if item.get("value") is None:
            ui.notify(f"{item['name']['zh']}: {STATUS[item['status']][0]}（{item['plan']}）", type="info")
            return
        history = await self.session.api("GET", f"/api/evaluation/indicators/{item['id']}/history",
                                         params={"period": self.period, "limit": 12})
        split = await self.session.api("GET", f"/api/evaluation/indicators/{item['id']}/breakdown",
                                       params={"period": self.period})
        title = f"{item['name']['zh']} {item['name']['en']}"
        with ui.dialog() as dialog, panel(title, classes="w-[720px] max-w-[95vw] cityos-detail") \
                .style("background:#0d1a30 !important"):  # opaque: the page behind must not show through
            ui.label(f"目标 Target {_target(item)} · 负责 Owner {item['owner']} · 依据 {item['plan']}") \
                .classes("text-xs text-slate-400")
            ui.echart(trend_options(item, history["points"])).classes("w-full h-64")
            for scope, label in (("district", "按区 By district"), ("department", "按部门 By department")):
                if split[scope]:
                    ui.label(label).classes("text-sm text-slate-300")
                    rows = [{"id": s["id"], "value": s["value"], "status": STATUS.get(s["status"], (s["status"],))[0]}
                            for s in split[scope]]
                    ui.table(columns=[{"name": "id", "label": "范围 Scope", "field": "id", "align": "left"},
                                      {"name": "value", "label": "数值 Value", "field": "value"},
                                      {"name": "status", "label": "状态 Status", "field": "status"}],
                             rows=rows).props("dense flat").classes("w-full")
            ui.button("关闭 Close", on_click=dialog.close).props("flat")
        dialog.on("hide", dialog.delete)
        dialog.open()

    async def download(self, kind: str, extension: str) -> None:
        """Fetched with the user's token (a plain link would reach the API without it)."""
        answer = await self.session.raw("GET", f"/api/evaluation/reports/{kind}.{extension}")
        if answer.status_code != 200:
            ui.notify(f"报告生成失败 Report failed: {answer.status_code}", type="negative")
            return
        ui.download(answer.content, f"cityos-{kind}.{extension}")

    async def recompute(self) -> None:
        try:
            await self.session.api("POST", "/api/evaluation/compute", json={"period": self.period})
        except ApiError as exc:
            ui.notify(f"计算失败 Failed: {exc}", type="negative")
            return
        ui.notify("已重新计算 Recomputed", type="positive")
        await self.show()


@ui.page("/decision", title="决策驾驶舱 · CityOS")
async def decision_page(period: str = "month") -> RedirectResponse | None:
    session = await require_login(DECISION_ROLES)
    if not isinstance(session, Session):
        return session
    period = period if period in PERIODS else "month"
    with frame(session, "决策驾驶舱 Decision cockpit", active="/decision"):
        with ui.row().classes("items-center gap-2"):
            ui.label("评估周期 Period").classes("text-slate-300")
            ui.toggle(PERIODS, value=period,
                      on_change=lambda e: ui.navigate.to(f"/decision?period={e.value}")).props("no-caps")
        cockpit = DecisionCockpit(session, period)
        await cockpit.show()
    return None
