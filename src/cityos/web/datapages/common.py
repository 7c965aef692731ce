"""What the data pages share: labels of the catalogue's codes (Chinese first, English beside) and small
display helpers. The codes themselves come from the data domain (`cityos.data.models`)."""

from __future__ import annotations

from typing import Any

from nicegui import ui

from cityos.core import messages

# The catalogue's themes (资源分类), as `cityos.data.catalogue` assigns them.
CATEGORIES: dict[str, str] = {
    "geography": "地理 Geography", "transport": "交通 Transport", "public-services": "公共服务 Public services",
    "environment": "生态环境 Environment", "water": "水务 Water", "energy": "能源 Energy",
    "urban-management": "城市管理 Urban management", "public-safety": "公共安全 Public safety",
    "iot": "物联感知 IoT", "health": "卫生健康 Health",
    "economy": "经济 Economy", "society": "社会民生 Society", "indices": "指数 Indices", "other": "其他 Other",
}
OPEN_TYPES = {"unconditional": "无条件开放 Open", "conditional": "有条件开放 Conditional", "none": "不予开放 Not open"}
SHARE_TYPES = {"unconditional": "无条件共享 Shared", "conditional": "有条件共享 Conditional",
               "none": "不予共享 Not shared"}
CYCLES = {"realtime": "实时 Real time", "daily": "每日 Daily", "monthly": "每月 Monthly", "yearly": "每年 Yearly",
          "irregular": "不定期 Irregular"}
CLASSES: dict[str, tuple[str, str]] = {
    "public": ("公开 Public", "positive"), "internal": ("内部 Internal", "info"),
    "sensitive": ("敏感 Sensitive", "warning"), "confidential": ("涉密 Confidential", "negative")}
STATUSES: dict[str, tuple[str, str]] = {
    "pending": ("待审批 Pending", "info"), "awaiting_second": ("待第二人审批 Awaiting 2nd approval", "warning"),
    "approved": ("已授权 Granted", "positive"), "rejected": ("已驳回 Rejected", "negative"),
    "revoked": ("已撤销 Revoked", "grey-7")}


def category(code: Any) -> str:
    return CATEGORIES.get(str(code), str(code or ""))


def department(code: Any) -> str:
    return messages.department(code) or "—"


def class_badge(data_class: str) -> None:
    label, colour = CLASSES.get(data_class, (data_class, "grey"))
    ui.badge(label, color=colour).classes(f"cityos-class cityos-class-{data_class}")


def status_badge(status: str) -> None:
    label, colour = STATUSES.get(status, (status, "grey"))
    ui.badge(label, color=colour).classes(f"cityos-status cityos-status-{status}")


def when(value: Any) -> str:
    """A stored UTC time in the city's zone."""
    return messages.local_time(value, "%Y-%m-%d %H:%M") if value else "—"


def cell(value: Any) -> str:
    """A record's value as table text (geometry as its kind, long text cut)."""
    if value is None:
        return ""
    if isinstance(value, dict) and "type" in value and "coordinates" in value:
        coords = value["coordinates"]
        if value["type"] == "Point" and isinstance(coords, list) and len(coords) == 2:
            return f"Point({coords[0]:.4f}, {coords[1]:.4f})" if all(isinstance(c, int | float) for c in coords) \
                else "Point"
        return str(value["type"])
    text = str(value)
    return text if len(text) <= 80 else text[:77] + "…"


COLUMN_LABELS = {"version": "版本 Version", "createdAt": "时间 Time", "rows": "行数 Rows", "run": "运行 Run",
                 "job": "作业 Job", "from": "输入 From", "to": "输出 To", "at": "时间 Time",
                 "department": "部门 Department", "requests": "申请 Requests", "granted": "获授权 Granted",
                 "reads": "读取 Reads"}


def table(columns: list[str], records: list[dict[str, Any]], classes: str = "",
          labels: dict[str, str] | None = None) -> ui.table:
    """A plain table of records; headers from `labels`, else the known column labels, else the field id."""
    names = {**COLUMN_LABELS, **(labels or {})} if labels is not None else {}
    cols = [{"name": c, "label": names.get(c, c), "field": c, "align": "left"} for c in columns]
    rows = [{c: cell(r.get(c)) for c in columns} | {"_row": i} for i, r in enumerate(records)]
    return ui.table(columns=cols, rows=rows, row_key="_row").props("dense flat").classes(f"w-full {classes}")
