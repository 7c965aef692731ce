"""The KPI engine over real platform data: incidents handled through the incident API on a moved clock,
devices provisioned through the IoT API, a mystery-shopper visit; then the indicators, the radar, the
maturity score, the published KPI entities and the kpi-red alarm, the reports, and every bad input."""

from __future__ import annotations

import asyncio
import io
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from openpyxl import load_workbook

from cityos.core import clock
from cityos.evaluation.models import band_of
from cityos.evaluation.service import catalogue, mystery_items

BASE = "/api/evaluation"
MARCH = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
AT = {"type": "Point", "coordinates": [110.31, 20.01]}


@dataclass
class Moving:
    at: datetime

    def advance(self, **delta: float) -> None:
        self.at += timedelta(**delta)


@pytest.fixture
def moving_clock() -> Iterator[Moving]:
    moving = Moving(MARCH)
    clock.set_clock(lambda: moving.at)
    try:
        yield moving
    finally:
        clock.reset_clock()


@pytest.fixture(autouse=True)
def _fresh_caches(app: Any) -> None:
    app.state.ops_incidents.forget_districts()
    app.state.ops_incidents.forget_departments()


async def _incident(client: httpx.AsyncClient, operator: dict[str, str], category: str) -> int:
    made = await client.post("/api/ops/incidents", headers=operator,
                             json={"category": category, "title": category, "location": AT})
    assert made.status_code == 201, made.text
    return int(made.json()["incident"]["id"])


async def _dispatch(client: httpx.AsyncClient, operator: dict[str, str], ident: int) -> None:
    answer = await client.post(f"/api/ops/incidents/{ident}/dispatch", headers=operator, json={"note": "crew"})
    assert answer.status_code == 200, answer.text


async def _responses(client: httpx.AsyncClient, operator: dict[str, str], moving: Moving, minutes: list[int]) -> None:
    """One pollution incident per entry, each dispatched that many minutes after it was reported."""
    categories = ["environment.air", "environment.noise", "environment.water"]
    for category, wait in zip(categories, minutes, strict=False):
        ident = await _incident(client, operator, category)
        moving.advance(minutes=wait)
        await _dispatch(client, operator, ident)


def _by_id(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {item["id"]: item for item in body["indicators"]}


def test_the_catalogue_is_the_plans_radar() -> None:
    categories, indicators = catalogue()
    radar = [i for i in indicators.values() if i.radar]
    assert len(categories) == 6 and len(radar) == 32
    assert all(any(i.radar for i in c.indicators) for c in categories.values())
    assert len(mystery_items()) == 28
    assert band_of(54.9)[1] == "准备期" and band_of(55)[1] == "起步期" and band_of(70)[1] == "成长期"
    assert band_of(85)[1] == "成熟期" and band_of(100)[1] == "成熟期"


async def test_every_registered_source_is_in_the_catalogue(app: Any) -> None:
    _categories, indicators = catalogue()
    assert set(app.state.evaluation.sources) <= set(indicators)


async def test_indicators_come_from_real_data(client: httpx.AsyncClient, auth: Any, moving_clock: Moving) -> None:
    operator = auth.headers("operator", username="op-eval")
    await _responses(client, operator, moving_clock, [20, 50])
    for n in range(4):
        device = {"name": f"aq-{n}", "profile": "air-quality", "lon": 110.3, "lat": 20.0,
                  "district": "Meilan", "department": "EPB"}
        assert (await client.post("/api/iot/devices", json=device)).status_code == 201
    computed = await client.post(f"{BASE}/compute", json={"period": "month"}, headers=operator)
    assert computed.status_code == 200, computed.text
    assert computed.json()["period"]["start"] == "2026-02-28T16:00:00+00:00"  # 1 March, Beijing time
    assert "traffic.congestion_forecast_accuracy" in computed.json()["noSource"]

    shown = _by_id((await client.get(f"{BASE}/indicators", params={"period": "month"}, headers=operator)).json())
    pollution = shown["ops.pollution_response_minutes"]
    assert pollution["value"] == 35.0 and pollution["samples"] == 2  # median of 20 and 50 minutes
    assert pollution["status"] == "yellow"  # target ≤ 30, red beyond 60
    assert pollution["score"] == round(100 * 30 / 35, 1)
    health = (await client.get("/api/iot/health")).json()
    online = shown["iot.device_online_rate"]
    assert online["samples"] == 4
    assert online["value"] == round(100 * health.get("online", 0) / 4, 2)
    assert shown["services.satisfaction"]["status"] == "no_data"  # no rating yet: never a made-up value
    assert shown["traffic.congestion_forecast_accuracy"]["status"] == "no_source"
    assert shown["security.staff_mfa_coverage"]["status"] in ("no_data", "green", "yellow", "red")

    radar = (await client.get(f"{BASE}/radar", params={"period": "month"}, headers=operator)).json()
    assert radar["radarIndicators"] == 32 and len(radar["categories"]) == 6
    governance = next(c for c in radar["categories"] if c["id"] == "governance")
    assert governance["measured"] >= 1 and governance["score"] is not None
    livelihood = next(c for c in radar["categories"] if c["id"] == "livelihood")
    assert livelihood["score"] is None and livelihood["measured"] == 0

    maturity = (await client.get(f"{BASE}/maturity", params={"period": "month"}, headers=operator)).json()
    scored = [c for c in maturity["categories"] if c["score"] is not None]
    expected = sum(c["score"] * c["weight"] for c in scored) / sum(c["weight"] for c in scored)
    assert maturity["score"] == round(expected, 1)
    assert maturity["band"]["zh"] == band_of(maturity["score"])[1]
    assert maturity["coverage"]["radarIndicators"] == 32
    assert maturity["provisional"] is (maturity["coverage"]["measured"] < 32 * 2 / 3)
    assert maturity["coverage"]["measured"] == sum(c["measured"] for c in maturity["categories"])


async def test_history_drill_down_and_what_moved(client: httpx.AsyncClient, auth: Any, moving_clock: Moving) -> None:
    operator = auth.headers("operator", username="op-eval")
    moving_clock.at = datetime(2026, 2, 10, 8, 0, tzinfo=UTC)
    await _responses(client, operator, moving_clock, [10])
    assert (await client.post(f"{BASE}/compute", json={"period": "month"}, headers=operator)).status_code == 200
    moving_clock.at = MARCH
    await _responses(client, operator, moving_clock, [20, 50])
    assert (await client.post(f"{BASE}/compute", json={"period": "month"}, headers=operator)).status_code == 200
    trend = (await client.get(f"{BASE}/indicators/ops.pollution_response_minutes/history",
                              params={"period": "month"}, headers=operator)).json()
    assert [p["value"] for p in trend["points"]] == [10.0, 35.0]
    assert [p["label"] for p in trend["points"]] == ["2026-02-01", "2026-03-01"]  # the city's months
    maturity = (await client.get(f"{BASE}/maturity", params={"period": "month"}, headers=operator)).json()
    moved = {m["indicator"]: m for m in maturity["moved"]}
    assert moved["ops.pollution_response_minutes"]["before"] == 100.0
    assert moved["ops.pollution_response_minutes"]["now"] == round(100 * 30 / 35, 1)
    split = (await client.get(f"{BASE}/indicators/ops.pollution_response_minutes/breakdown",
                              params={"period": "month"}, headers=operator)).json()
    assert split["district"], split  # the incidents' district, however the router named it
    # recomputing a period replaces its values instead of adding rows
    assert (await client.post(f"{BASE}/compute", json={"period": "month"}, headers=operator)).status_code == 200
    again = (await client.get(f"{BASE}/indicators/ops.pollution_response_minutes/history",
                              params={"period": "month"}, headers=operator)).json()
    assert [p["value"] for p in again["points"]] == [10.0, 35.0]


async def test_kpis_reach_the_hub_and_a_red_one_raises_an_alarm(client: httpx.AsyncClient, auth: Any,
                                                                 moving_clock: Moving, app: Any) -> None:
    operator = auth.headers("operator", username="op-eval")
    installed = await client.post("/api/ops/rules/install-defaults", headers=operator)
    assert installed.status_code == 200, installed.text
    await _responses(client, operator, moving_clock, [90])  # 90 minutes: red
    assert (await client.post(f"{BASE}/compute", json={"period": "week"}, headers=operator)).status_code == 200
    kpi_id = "urn:ngsi-ld:KeyPerformanceIndicator:ops.pollution_response_minutes:week"
    kpi = await client.get(f"/ngsi-ld/v1/entities/{kpi_id}", params={"options": "keyValues"})
    assert kpi.status_code == 200, kpi.text
    assert kpi.json()["kpiValue"] == 90.0 and kpi.json()["kpiStatus"] == "red"
    alarms: list[dict[str, Any]] = []
    for _ in range(50):
        body = (await client.get("/api/ops/alarms", headers=operator, params={"rule": "kpi-red"})).json()
        alarms = [a for a in (body.get("items") or body.get("alarms") or []) if a.get("rule") == "kpi-red"
                  or a.get("ruleId") == "kpi-red"]
        if alarms:
            break
        await asyncio.sleep(0.1)
    assert alarms, "a red KPI raised no alarm"


async def test_the_mystery_shopper_feeds_the_service_indicators(client: httpx.AsyncClient, auth: Any,
                                                               moving_clock: Moving) -> None:
    operator = auth.headers("operator", username="op-eval")
    items = (await client.get(f"{BASE}/mystery-shopper/items", headers=operator)).json()["items"]
    answers = {item["id"]: True for item in items}
    for failed in ("wait_under_10", "window_open", "after_hours"):
        answers[failed] = False
    visit = {"site": "龙华区政务服务中心", "visitedAt": "2026-03-02T09:30:00+08:00", "answers": answers}
    made = await client.post(f"{BASE}/mystery-shopper", json=visit, headers=operator)
    assert made.status_code == 201, made.text
    assert made.json()["score"] == round(100 * 25 / 28, 1)
    assert made.json()["failed"] == ["after_hours", "wait_under_10", "window_open"]
    await client.post(f"{BASE}/compute", json={"period": "month"}, headers=operator)
    shown = _by_id((await client.get(f"{BASE}/indicators", params={"period": "month"}, headers=operator)).json())
    assert shown["evaluation.mystery_shopper_score"]["value"] == round(100 * 25 / 28, 1)
    assert shown["evaluation.mystery_shopper_score"]["status"] == "yellow"


async def test_reports_render_in_chinese(client: httpx.AsyncClient, auth: Any, moving_clock: Moving,
                                         tmp_path: Path) -> None:
    operator = auth.headers("operator", username="op-eval")
    await _responses(client, operator, moving_clock, [20, 90])
    await client.post(f"{BASE}/compute", json={"period": "month"}, headers=operator)
    pdf = await client.get(f"{BASE}/reports/month.pdf", headers=operator)
    assert pdf.status_code == 200 and pdf.content.startswith(b"%PDF")
    assert pdf.headers["content-type"] == "application/pdf"
    if shutil.which("pdftotext"):
        (tmp_path / "r.pdf").write_bytes(pdf.content)
        text = (await asyncio.to_thread(subprocess.run, ["pdftotext", str(tmp_path / "r.pdf"), "-"],
                                        capture_output=True, text=True, check=True)).stdout
        await asyncio.to_thread(subprocess.run, ["pdftoppm", "-png", "-r", "60", "-f", "1", "-l", "1",
                                                 str(tmp_path / "r.pdf"), str(tmp_path / "page")], check=True)
        pages = await asyncio.to_thread(lambda: list(tmp_path.glob("page*.png")))
        assert pages, "the PDF did not render"
        assert "城市运营评估报告" in text and "污染事件响应时长" in text and "暂无数据源" in text
    xlsx = await client.get(f"{BASE}/reports/month.xlsx", headers=operator)
    assert xlsx.status_code == 200
    book = load_workbook(io.BytesIO(xlsx.content))
    assert book.sheetnames == ["指标 Indicators", "雷达 Radar", "趋势 Trends"]
    ids = [row[2].value for row in book["指标 Indicators"].iter_rows(min_row=2)]
    assert len(ids) == 32 and "ops.pollution_response_minutes" in ids


async def test_bad_input_is_refused(client: httpx.AsyncClient, anon_client: httpx.AsyncClient, auth: Any) -> None:
    operator = auth.headers("operator", username="op-eval")
    cases = [
        ("get", f"{BASE}/indicators?period=year", 400), ("get", f"{BASE}/indicators?scope=planet:x", 400),
        ("get", f"{BASE}/indicators?scope=district:", 400),
        ("get", f"{BASE}/indicators/no.such/history", 404), ("get", f"{BASE}/indicators/no.such/breakdown", 404),
        ("get", f"{BASE}/indicators/ops.sla_compliance/history?limit=0", 400),
        ("get", f"{BASE}/indicators/ops.sla_compliance/history?limit=abc", 400),
        ("get", f"{BASE}/reports/year.pdf", 404), ("get", f"{BASE}/reports/month.docx", 404),
    ]
    for method, url, status in cases:
        answer = await client.request(method, url, headers=operator)
        assert answer.status_code == status, (url, answer.text)
        assert "title" in answer.json() and "detail" in answer.json()
    for body in ({"period": "decade"}, {"period": "month", "at": "yesterday"}, {"period": 5}):
        answer = await client.post(f"{BASE}/compute", json=body, headers=operator)
        assert answer.status_code == 400, body
    malformed = await client.post(f"{BASE}/compute", content=b"{not json", headers={
        **operator, "Content-Type": "application/json"})
    assert malformed.status_code == 400
    answers = {item[0]: True for item in mystery_items()}
    visits = [
        {"site": "x", "visitedAt": "2026-03-02T09:30:00+08:00", "answers": {**answers, "bribe": True}},
        {"site": "x", "visitedAt": "2026-03-02T09:30:00+08:00", "answers": {"greeting": True}},
        {"site": "x", "visitedAt": "2099-03-02T09:30:00+08:00", "answers": answers},
        {"site": "x", "visitedAt": "2026-03-02T09:30:00", "answers": answers},
        {"site": "", "visitedAt": "2026-03-02T09:30:00+08:00", "answers": answers},
        {"site": "x", "visitedAt": "2026-03-02T09:30:00+08:00", "answers": {k: "yes" for k in answers}},
        {"site": "x" * 300, "visitedAt": "2026-03-02T09:30:00+08:00", "answers": answers},
    ]
    for visit in visits:
        answer = await client.post(f"{BASE}/mystery-shopper", json=visit, headers=operator)
        assert answer.status_code == 400, (visit, answer.text)
    huge = await client.post(f"{BASE}/mystery-shopper", content=b'{"site": "' + b"x" * 100_000 + b'"}',
                             headers={**operator, "Content-Type": "application/json"})
    assert huge.status_code == 413
    # who may do what
    assert (await anon_client.get(f"{BASE}/radar")).status_code == 401
    citizen = auth.headers("citizen", username="c-eval")
    assert (await anon_client.get(f"{BASE}/radar", headers=citizen)).status_code == 403
    official = auth.headers("official", department="water")
    assert (await anon_client.get(f"{BASE}/radar", headers=official)).status_code == 403
    auditor = auth.headers("auditor", username="aud-eval")
    assert (await anon_client.get(f"{BASE}/radar", headers=auditor)).status_code == 200
    assert (await anon_client.post(f"{BASE}/compute", json={}, headers=auditor)).status_code == 403
    dept_admin = auth.headers("dept_admin", department="water")
    assert (await anon_client.post(f"{BASE}/mystery-shopper", json=visits[0], headers=dept_admin)).status_code == 403


async def test_a_closed_period_is_reported_once_on_schedule(client: httpx.AsyncClient, auth: Any, app: Any,
                                                            moving_clock: Moving, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from cityos.evaluation.reports import archive_closed_period

    monkeypatch.setenv("CITYOS_DATA_DIR", str(tmp_path))
    operator = auth.headers("operator", username="op-eval")
    moving_clock.at = datetime(2026, 2, 10, 8, 0, tzinfo=UTC)
    await _responses(client, operator, moving_clock, [10])  # February's only incident
    moving_clock.at = MARCH  # February has closed (in the city's calendar)
    written = await archive_closed_period(app.state.evaluation, "", "month")
    assert sorted(p.name for p in written) == ["cityos-month-20260201.pdf", "cityos-month-20260201.xlsx"]
    assert await archive_closed_period(app.state.evaluation, "", "month") == []  # once per period
    listed = (await client.get(f"{BASE}/reports", headers=operator)).json()["reports"]
    assert {r["name"] for r in listed} == {"cityos-month-20260201.pdf", "cityos-month-20260201.xlsx"}
    book = await client.get(f"{BASE}/reports/archive/cityos-month-20260201.xlsx", headers=operator)
    assert book.status_code == 200
    rows = {row[2].value: row[3].value for row in load_workbook(io.BytesIO(book.content))["指标 Indicators"]
            .iter_rows(min_row=2)}
    assert rows["ops.pollution_response_minutes"] == 10.0  # February's value, not March's
    for name in ("../../etc/passwd", "cityos-month-20260201.pdf.partial", "cityos-year-20260201.pdf"):
        assert (await client.get(f"{BASE}/reports/archive/{name}", headers=operator)).status_code == 404
