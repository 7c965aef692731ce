"""Waste-sorting pages (垃圾分类): a resident's points, deposits and the exchange catalogue; for staff, each
community's participation and accuracy trends, and the sanitation crews' collection tasks from full bins.
Everything through `/api/waste` as the signed-in user; times in the city's zone."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from nicegui import ui

from cityos.core import messages
from cityos.web.auth import Session
from cityos.web.portal import common
from cityos.web.portal.common import CITIZEN_ROLES, STAFF_ROLES, call, frame, problem_text

CATEGORIES = {"recyclable": "可回收物 Recyclable", "kitchen": "厨余垃圾 Kitchen", "hazardous": "有害垃圾 Hazardous",
              "other": "其他垃圾 Other"}
# The plans' targets: participation 35% → 78%, accuracy 85–95%.
PARTICIPATION_TARGET = 0.78
ACCURACY_TARGET = 0.85


def register_nav() -> None:
    from cityos.web.shell import add_nav

    add_nav("垃圾分类 Waste sorting", "/portal/waste", CITIZEN_ROLES, icon="recycling")
    add_nav("分类成效 Sorting trends", "/waste/trends", STAFF_ROLES, icon="insights")
    add_nav("清运任务 Collections", "/waste/collections", STAFF_ROLES, icon="local_shipping")


def when(value: Any) -> str:
    return messages.local_time(value, "%m-%d %H:%M") if value else "—"


def percent(value: float | None) -> str:
    return f"{value * 100:.0f}%" if value is not None else "—"


# ---------------------------------------------------------------------------------- residents


@ui.page("/portal/waste", title="垃圾分类 Waste sorting · CityOS")
async def portal_waste() -> Any:
    session = await common.login(CITIZEN_ROLES)
    if not isinstance(session, Session):
        return session
    with frame(session, "垃圾分类 Waste sorting", active="/portal/waste"):
        ui.label("垃圾分类积分 My sorting points").classes("text-2xl gov-title")
        points = await call("GET", "/api/waste/points")
        balance = points.body.get("points", 0) if points.ok and isinstance(points.body, dict) else 0
        with ui.row().classes("gov-card w-full items-baseline gap-3 p-4"):
            ui.label("当前积分 Points").classes("text-lg")
            ui.label(str(balance)).classes("text-5xl font-bold text-green-8 t-balance")
        await _catalogue(balance)
        await _deposits()
        history = points.body.get("history", []) if points.ok and isinstance(points.body, dict) else []
        redeemed = [h for h in history if h["reason"] == "redeem"]
        if redeemed:
            ui.label("兑换记录 Redemptions").classes("section-title mt-2")
            for item in redeemed:
                ui.label(f"{when(item['at'])} · {item['delta']} 分 points").classes("text-grey-8 t-redeemed")


async def _catalogue(balance: int) -> None:
    ui.label("积分兑换 Exchange your points").classes("section-title mt-2")
    reply = await call("GET", "/api/waste/rewards")
    rewards = reply.body if reply.ok and isinstance(reply.body, list) else []
    if not rewards:
        ui.label("暂无可兑换物品 Nothing to exchange yet").classes("text-grey-8")
    with ui.row().classes("w-full gap-3 flex-wrap"):
        for item in rewards:
            with ui.card().classes("gov-card p-3 gap-1 t-reward").style("min-width: 12rem"):
                ui.label(item["name"]).classes("font-bold text-lg")
                ui.label(f"{item['cost']} 分 points · 余 {item['stock']} left").classes("text-grey-8")
                affordable = balance >= item["cost"] and item["stock"] > 0
                button = ui.button("兑换 Redeem", on_click=lambda i=item: _redeem(i)) \
                    .props("unelevated color=positive no-caps dense").classes("t-redeem")
                if not affordable:
                    button.props("disable")
                    ui.label("积分不足 Not enough points" if item["stock"] > 0 else "已兑完 Out of stock") \
                        .classes("text-sm text-grey-6")


async def _redeem(item: dict[str, Any]) -> None:
    reply = await call("POST", f"/api/waste/rewards/{quote(item['id'])}/redeem", json={})
    if reply.ok:
        ui.notify(f"已兑换 {item['name']}，剩余 {reply.body['points']} 分 Redeemed; {reply.body['points']} points "
                  "left", type="positive")
        ui.navigate.reload()
    else:
        ui.notify(problem_text(reply.body, reply.status), type="negative")


async def _deposits() -> None:
    ui.label("投放记录 My deposits").classes("section-title mt-2")
    reply = await call("GET", "/api/waste/deposits/mine")
    items = reply.body if reply.ok and isinstance(reply.body, list) else []
    if not items:
        ui.label("暂无投放记录：在智能垃圾桶扫描您的二维码卡 No deposits yet: scan your QR card at a smart bin") \
            .classes("text-grey-8 t-no-deposits")
        return
    rows = [{"at": when(d["at"]), "category": CATEGORIES.get(d["category"], d["category"]),
             "weight": f"{d['weightKg']:.1f}",
             "check": "正确 Correct" if d["correct"] else "待检查 Not checked" if d["correct"] is None
             else "分类错误 Wrong bin", "points": f"+{d['points']}" if d["points"] else "0"} for d in items]
    ui.table(columns=[{"name": "at", "label": "时间 Time", "field": "at", "align": "left"},
                      {"name": "category", "label": "类别 Category", "field": "category", "align": "left"},
                      {"name": "weight", "label": "重量 kg", "field": "weight"},
                      {"name": "check", "label": "检查 Check", "field": "check", "align": "left"},
                      {"name": "points", "label": "积分 Points", "field": "points"}],
             rows=rows, row_key="at").props("dense flat").classes("w-full t-deposits")


# ---------------------------------------------------------------------------------- staff: trends


def trend_chart(community: dict[str, Any]) -> dict[str, Any]:
    weeks = community["weeks"]
    pct = [[None if w[k] is None else round(w[k] * 100, 1) for w in weeks] for k in ("participation", "accuracy")]
    return {"animation": False, "tooltip": {"trigger": "axis"},
            "legend": {"data": ["参与率 Participation", "准确率 Accuracy"], "top": 0},
            "grid": {"left": 45, "right": 40, "top": 35, "bottom": 30},
            "xAxis": {"type": "category", "data": [w["weekStart"][5:] for w in weeks]},
            "yAxis": {"type": "value", "min": 0, "max": 100, "name": "%"},
            "series": [{"name": "参与率 Participation", "type": "line", "data": pct[0], "connectNulls": True,
                        "markLine": {"silent": True, "symbol": "none",
                                     "data": [{"yAxis": PARTICIPATION_TARGET * 100}],
                                     "lineStyle": {"type": "dashed"}}},
                       {"name": "准确率 Accuracy", "type": "line", "data": pct[1], "connectNulls": True}]}


@ui.page("/waste/trends", title="分类成效 Sorting trends · CityOS")
async def waste_trends(weeks: int = 8) -> Any:
    session = await common.login(STAFF_ROLES)
    if not isinstance(session, Session):
        return session
    weeks = min(max(int(weeks), 2), 26)
    with frame(session, "分类成效 Sorting trends", active="/waste/trends", citizen=False):
        ui.label(f"垃圾分类成效（近 {weeks} 周） Sorting by community, last {weeks} weeks") \
            .classes("text-2xl gov-title")
        ui.label(f"目标 Targets: 参与率 participation ≥ {percent(PARTICIPATION_TARGET)}，准确率 accuracy ≥ "
                 f"{percent(ACCURACY_TARGET)}").classes("text-grey-8")
        stats = await call("GET", "/api/waste/stats", params={"days": 30})
        reply = await call("GET", "/api/waste/trends", params={"weeks": weeks})
        communities = reply.body if reply.ok and isinstance(reply.body, list) else []
        if not communities:
            ui.label("暂无投放数据 No deposits yet").classes("text-grey-8 t-no-trends")
            return
        latest = {s["community"]: s for s in (stats.body if stats.ok and isinstance(stats.body, list) else [])}
        rows = []
        for item in communities:
            now = latest.get(item["community"], {})
            rows.append({"community": item["community"], "cards": item["cards"],
                         "participation": percent(now.get("participation")), "accuracy": percent(now.get("accuracy")),
                         "deposits": now.get("deposits", 0), "kg": f"{now.get('kg', 0):.1f}"})
        ui.table(columns=[{"name": "community", "label": "社区 Community", "field": "community", "align": "left"},
                          {"name": "cards", "label": "持卡 Cards", "field": "cards"},
                          {"name": "participation", "label": "30天参与率 Participation", "field": "participation"},
                          {"name": "accuracy", "label": "30天准确率 Accuracy", "field": "accuracy"},
                          {"name": "deposits", "label": "投放 Deposits", "field": "deposits"},
                          {"name": "kg", "label": "重量 kg", "field": "kg"}],
                 rows=rows, row_key="community").props("dense flat").classes("w-full t-trend-table")
        with ui.row().classes("w-full gap-3 flex-wrap"):
            for item in communities:
                with ui.card().classes("gov-card p-2 t-trend").style("min-width: 22rem; flex: 1"):
                    ui.label(item["community"]).classes("font-bold gov-title")
                    ui.echart(trend_chart(item)).classes("w-full h-56 t-trend-chart")


# ---------------------------------------------------------------------------------- staff: collection tasks


@ui.page("/waste/collections", title="清运任务 Collections · CityOS")
async def waste_collections(status: str = "open") -> Any:
    session = await common.login(STAFF_ROLES)
    if not isinstance(session, Session):
        return session
    status = status if status in ("open", "emptied", "all") else "open"
    with frame(session, "清运任务 Collections", active="/waste/collections", citizen=False):
        ui.label("满溢清运任务 Full bins to collect").classes("text-2xl gov-title")
        with ui.row().classes("gap-3"):
            for option, label in (("open", "待清运 To collect"), ("emptied", "已清运 Emptied"), ("all", "全部 All")):
                ui.link(label, f"/waste/collections?status={option}").classes(
                    "text-lg " + ("font-bold" if option == status else ""))
        reply = await call("GET", "/api/waste/collections", params={"status": status})
        if not reply.ok:
            ui.label(problem_text(reply.body, reply.status)).classes("text-negative t-collections-refused")
            return
        tasks = reply.body if isinstance(reply.body, list) else []
        ui.label(f"{len(tasks)} 个任务 tasks").classes("t-task-count")
        if not tasks:
            ui.label("没有满溢的垃圾桶 No full bins").classes("text-grey-8")
        for task in tasks:
            with ui.row().classes("gov-card w-full items-center gap-3 p-2 t-task"):
                ui.icon("delete" if task["status"] == "open" else "check_circle").classes(
                    "text-2xl " + ("text-negative" if task["status"] == "open" else "text-positive"))
                ui.label(task["name"]).classes("font-bold")
                ui.label(task["district"] or "—").classes("text-grey-8")
                ui.label(f"满溢 {percent(task['fill'])} full").classes("t-fill")
                ui.label(f"报满 {when(task['opened'])} · 已等 {task['waitingMinutes']:.0f} 分钟 waited") \
                    .classes("text-sm text-grey-7")
                if task["emptied"]:
                    by = "传感器 sensor" if task["emptiedBy"] == "sensor" else "清运员 crew"
                    ui.label(f"已清运 {when(task['emptied'])}（{by}）").classes("text-sm text-positive")
                ui.space()
                if task["status"] == "open":
                    ui.button("已清运 Emptied", on_click=lambda t=task: _emptied(t)) \
                        .props("unelevated color=positive no-caps dense").classes("t-emptied")


async def _emptied(task: dict[str, Any]) -> None:
    reply = await call("POST", f"/api/waste/collections/{quote(task['id'])}/emptied", json={})
    if reply.ok:
        ui.notify("已记录清运 Collection recorded", type="positive")
        ui.navigate.reload()
    else:
        ui.notify(problem_text(reply.body, reply.status), type="negative")


register_nav()
