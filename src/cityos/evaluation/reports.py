"""Weekly, monthly and quarterly evaluation reports (周调度、月通报、季评估) as PDF and XLSX.

PDF with ReportLab and a CJK TrueType font from Debian (fonts-wqy-microhei or fonts-noto-cjk, installed
by `./run`); XLSX with openpyxl, with a chart. Both are built from the engine's answers (maturity, radar,
indicators, breakdowns), never from other domains' tables.
"""

from __future__ import annotations

import asyncio
import io
import re
from datetime import datetime, timedelta
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from openpyxl import Workbook
from openpyxl.chart import BarChart, Reference
from openpyxl.styles import Font, PatternFill
from reportlab.graphics.charts.barcharts import HorizontalBarChart
from reportlab.graphics.shapes import Drawing
from reportlab.lib import colors
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import ParagraphStyle
from reportlab.lib.units import mm
from reportlab.pdfbase import pdfmetrics
from reportlab.pdfbase.ttfonts import TTFont
from reportlab.platypus import Paragraph, SimpleDocTemplate, Spacer, Table, TableStyle

from cityos.core import clock
from cityos.evaluation.service import period_bounds

if TYPE_CHECKING:
    from cityos.evaluation.service import EvaluationService
from cityos.core.messages import city_zone

FONT_CANDIDATES = (
    ("/usr/share/fonts/truetype/wqy/wqy-microhei.ttc", 0),
    ("/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc", 2),
    ("/usr/share/fonts/truetype/noto/NotoSansCJK-Regular.ttc", 2),
)
STATUS_COLOURS = {"green": colors.HexColor("#2e7d32"), "yellow": colors.HexColor("#f9a825"),
                  "red": colors.HexColor("#c62828"), "no_data": colors.grey, "no_source": colors.lightgrey,
                  "info": colors.HexColor("#1565c0")}
STATUS_TEXT = {"green": "达标 met", "yellow": "预警 warning", "red": "未达标 missed", "no_data": "无数据 no data",
               "no_source": "暂无数据源 no source", "info": "监测 tracked"}
PERIOD_TEXT = {"week": "周调度 Weekly", "month": "月通报 Monthly", "quarter": "季评估 Quarterly",
               "day": "日报 Daily"}


class ReportError(RuntimeError):
    pass


@cache
def cjk_font() -> str:
    for path, index in FONT_CANDIDATES:
        if Path(path).exists():
            pdfmetrics.registerFont(TTFont("CityCJK", path, subfontIndex=index))
            return "CityCJK"
    raise ReportError("no CJK font installed (Debian: fonts-wqy-microhei or fonts-noto-cjk)")


def _value(item: dict[str, Any]) -> str:
    if item.get("value") is None:
        return "—"
    return f"{item['value']:g} {item['unit']}"


def _target(item: dict[str, Any]) -> str:
    if item.get("target") is None:
        return "—"
    return f"{'≥' if item['direction'] == 'higher' else '≤'} {item['target']:g} {item['unit']}"


def build_pdf(title: str, kind: str, maturity: dict[str, Any], radar: dict[str, Any],
              worst: list[dict[str, Any]]) -> bytes:
    font = cjk_font()
    base = ParagraphStyle("base", fontName=font, fontSize=9, leading=12)
    head = ParagraphStyle("head", parent=base, fontSize=16, leading=20, spaceAfter=6)
    sub = ParagraphStyle("sub", parent=base, fontSize=11, leading=15, spaceBefore=8, spaceAfter=4)
    out = io.BytesIO()
    doc = SimpleDocTemplate(out, pagesize=A4, leftMargin=15 * mm, rightMargin=15 * mm, topMargin=15 * mm,
                            bottomMargin=15 * mm, title=title)
    story: list[Any] = [Paragraph(title, head),
                        Paragraph(f"{PERIOD_TEXT.get(kind, kind)} · 生成时间 Generated "
                                  f"{clock.now().astimezone(city_zone()):%Y-%m-%d %H:%M %Z}", base)]
    score, band, cov = maturity["score"], maturity["band"], maturity["coverage"]
    story.append(Paragraph(
        f"成熟度 Maturity: <b>{'—' if score is None else score}</b> "
        f"{'' if band is None else band['zh'] + ' ' + band['en']} · "
        f"依据 {cov['measured']}/{cov['radarIndicators']} 项有数据的雷达指标 "
        f"(based on {cov['measured']} of {cov['radarIndicators']} radar indicators with data)"
        + ("。暂定：数据不足 Provisional: too few indicators measured" if maturity.get("provisional") else ""), sub))
    story.append(_category_chart(radar, font))
    story.append(Paragraph("风险雷达 Risk radar", sub))
    rows: list[list[Any]] = [["类别 Category", "指标 Indicator", "数值 Value", "目标 Target", "状态 Status"]]
    styles: list[Any] = [("FONTNAME", (0, 0), (-1, -1), font), ("FONTSIZE", (0, 0), (-1, -1), 7.5),
                         ("GRID", (0, 0), (-1, -1), 0.3, colors.grey),
                         ("BACKGROUND", (0, 0), (-1, 0), colors.HexColor("#eceff1"))]
    for category in radar["categories"]:
        for item in category["indicators"]:
            rows.append([category["name"]["zh"], Paragraph(f"{item['name']['zh']} {item['name']['en']}", base),
                         _value(item), _target(item), STATUS_TEXT.get(item["status"], item["status"])])
            styles.append(("TEXTCOLOR", (4, len(rows) - 1), (4, len(rows) - 1),
                           STATUS_COLOURS.get(item["status"], colors.black)))
    table = Table(rows, colWidths=[20 * mm, 76 * mm, 24 * mm, 24 * mm, 36 * mm], repeatRows=1)
    table.setStyle(TableStyle(styles))
    story.append(table)
    story.append(Spacer(1, 6))
    story.append(Paragraph("需关注的区和部门 Districts and departments to watch", sub))
    if worst:
        worst_rows = [["指标 Indicator", "范围 Scope", "数值 Value", "状态 Status"]]
        worst_rows += [[w["indicator"], w["scope"], f"{w['value']:g}", STATUS_TEXT.get(w["status"], w["status"])]
                       for w in worst]
        worst_table = Table(worst_rows, colWidths=[70 * mm, 50 * mm, 25 * mm, 35 * mm])
        worst_table.setStyle(TableStyle([("FONTNAME", (0, 0), (-1, -1), font), ("FONTSIZE", (0, 0), (-1, -1), 8),
                                         ("GRID", (0, 0), (-1, -1), 0.3, colors.grey)]))
        story.append(worst_table)
    else:
        story.append(Paragraph("本期无未达标的区或部门 No district or department missed a target this period.", base))
    if maturity["moved"]:
        story.append(Paragraph("较上期变化 Changes since the last period", sub))
        for move in maturity["moved"][:10]:
            story.append(Paragraph(f"{move['indicator']}: {move['before']:g} → {move['now']:g} "
                                   f"({move['change']:+g})", base))
    doc.build(story)
    return out.getvalue()


def _category_chart(radar: dict[str, Any], font: str) -> Drawing:
    categories = list(radar["categories"])
    drawing = Drawing(170 * mm, 60 * mm)
    chart = HorizontalBarChart()
    chart.x, chart.y, chart.width, chart.height = 62 * mm, 5 * mm, 105 * mm, 50 * mm
    chart.data = [[c["score"] if c["score"] is not None else 0 for c in categories]]
    # a category without data is labelled so, not drawn as a score of zero
    chart.categoryAxis.categoryNames = [f"{c['name']['zh']} {c['name']['en']}"
                                        + ("" if c["score"] is not None else " · 无数据 no data") for c in categories]
    chart.categoryAxis.labels.fontName = font
    chart.categoryAxis.labels.fontSize = 7
    chart.valueAxis.valueMin, chart.valueAxis.valueMax, chart.valueAxis.valueStep = 0, 100, 20
    chart.valueAxis.labels.fontName = font
    chart.bars[0].fillColor = colors.HexColor("#1565c0")
    drawing.add(chart)
    return drawing


def build_xlsx(kind: str, radar: dict[str, Any], history: dict[str, list[dict[str, Any]]]) -> bytes:
    book = Workbook()
    sheet = book.active
    assert sheet is not None
    sheet.title = "指标 Indicators"
    sheet.append(["类别 Category", "指标 Indicator", "ID", "数值 Value", "单位 Unit", "目标 Target", "状态 Status",
                  "得分 Score", "依据 Plan"])
    for cell in sheet[1]:
        cell.font = Font(bold=True)
    fills = {"green": "C8E6C9", "yellow": "FFF59D", "red": "FFCDD2"}
    for category in radar["categories"]:
        for item in category["indicators"]:
            sheet.append([category["name"]["zh"], f"{item['name']['zh']} {item['name']['en']}", item["id"],
                          item.get("value"), item["unit"], item.get("target"),
                          STATUS_TEXT.get(item["status"], item["status"]), item.get("score"), item["plan"]])
            if item["status"] in fills:
                sheet.cell(sheet.max_row, 7).fill = PatternFill("solid", fgColor=fills[item["status"]])
    for column, width in zip("ABCDEFGHI", (12, 40, 34, 10, 8, 10, 16, 8, 40), strict=True):
        sheet.column_dimensions[column].width = width
    scores = book.create_sheet("雷达 Radar")
    scores.append(["类别 Category", "得分 Score"])
    for category in radar["categories"]:
        scores.append([f"{category['name']['zh']} {category['name']['en']}", category["score"]])
    chart = BarChart()
    chart.title = "类别得分 Category scores"
    chart.add_data(Reference(scores, min_col=2, min_row=1, max_row=scores.max_row), titles_from_data=True)
    chart.set_categories(Reference(scores, min_col=1, min_row=2, max_row=scores.max_row))
    scores.add_chart(chart, "D2")
    trend = book.create_sheet("趋势 Trends")
    trend.append(["指标 Indicator", "期 Period start", "数值 Value", "状态 Status"])
    for indicator, points in history.items():
        for point in points:
            trend.append([indicator, point["start"], point["value"], point["status"]])
    out = io.BytesIO()
    book.save(out)
    return out.getvalue()


def report_title(kind: str, moment: datetime) -> str:
    local = moment.astimezone(city_zone())
    return f"城市运营评估报告 City operations evaluation · {local:%Y-%m-%d} · {PERIOD_TEXT.get(kind, kind)}"


# ---------------------------------------------------------------------- assembling and archiving

XLSX_MEDIA = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
ARCHIVE_NAME = re.compile(r"cityos-(week|month|quarter)-\d{8}\.(pdf|xlsx)")


async def assemble(service: EvaluationService, tenant: str, kind: str, extension: str,
                   period_start: datetime | None = None) -> tuple[bytes, str]:
    """The report of the current period of `kind` (or of the period starting at `period_start`)."""
    radar_view = await service.radar(tenant, kind, period_start)
    if extension == "pdf":
        maturity_view = await service.maturity(tenant, kind, period_start)
        worst = await _worst(service, tenant, kind, radar_view)
        title = report_title(kind, period_start or clock.now())
        # ReportLab is CPU-bound: off the event loop
        return await asyncio.to_thread(build_pdf, title, kind, maturity_view, radar_view, worst), "application/pdf"
    series = {i["id"]: (await service.history(tenant, i["id"], kind))["points"]
              for c in radar_view["categories"] for i in c["indicators"] if i.get("value") is not None}
    return await asyncio.to_thread(build_xlsx, kind, radar_view, series), XLSX_MEDIA


async def _worst(service: EvaluationService, tenant: str, kind: str,
                 radar_view: dict[str, Any]) -> list[dict[str, Any]]:
    """The districts and departments that missed a target, for the report's list of whom to watch."""
    worst: list[dict[str, Any]] = []
    for category in radar_view["categories"]:
        for item in category["indicators"]:
            if item.get("value") is None:
                continue
            split = await service.breakdown(tenant, item["id"], kind)
            for scope in ("district", "department"):
                worst += [{"indicator": f"{item['name']['zh']} {item['name']['en']}", "scope": f"{scope}: {s['id']}",
                           "value": s["value"], "status": s["status"]}
                          for s in split[scope] if s["status"] == "red"]
    return worst[:40]


def archive_dir(tenant: str) -> Path:
    """`<data dir>/reports/<tenant>`: the reports written when periods close."""
    from cityos.security.settings import default_data_dir

    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", tenant) or "_default"
    return default_data_dir() / "reports" / safe


def archived(tenant: str) -> list[dict[str, Any]]:
    folder = archive_dir(tenant)
    if not folder.is_dir():
        return []
    return [{"name": p.name, "bytes": p.stat().st_size} for p in sorted(folder.iterdir(), reverse=True)
            if ARCHIVE_NAME.fullmatch(p.name)]


def archived_file(tenant: str, name: str) -> Path | None:
    if not ARCHIVE_NAME.fullmatch(name):  # never a path the caller builds
        return None
    path = archive_dir(tenant) / name
    return path if path.is_file() else None


async def archive_closed_period(service: EvaluationService, tenant: str, kind: str) -> list[Path]:
    """When the previous period of `kind` has closed and has no report yet: recompute it once more and
    write its PDF and XLSX to the archive. Returns the files written."""
    current_start, _ = period_bounds(kind, clock.now())
    previous_start, _ = period_bounds(kind, current_start - timedelta(seconds=1))
    stamp = previous_start.astimezone(city_zone()).strftime("%Y%m%d")
    folder = archive_dir(tenant)
    wanted = [folder / f"cityos-{kind}-{stamp}.{ext}" for ext in ("pdf", "xlsx")]
    if all(p.exists() for p in wanted):
        return []
    await service.compute(tenant, kind, previous_start)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for path in wanted:
        body, _media = await assemble(service, tenant, kind, path.suffix[1:], previous_start)
        partial = path.with_suffix(path.suffix + ".partial")
        partial.write_bytes(body)
        partial.replace(path)
        written.append(path)
    return written
