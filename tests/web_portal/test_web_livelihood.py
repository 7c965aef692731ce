"""一网协同 pages in headless Chromium against a real server: a citizen books an appointment and cancels it, the
kiosk gives a ticket with its predicted wait, and the public call screen shows the call (SQLite only)."""

from __future__ import annotations

import datetime as dt
from typing import Any
from zoneinfo import ZoneInfo

from portal_harness import Browser, Portal

HALL = "civic-centre"


def set_up_site(portal: Portal, staff_token: str) -> str:
    with portal.http(staff_token) as http:
        made = http.post("/api/appointments/schedules", json={"kind": "hospital", "site": "市第一人民医院",
                                                               "service": "心内科", "actor": "王医生"})
        assert made.status_code == 201, made.text
        schedule_id = str(made.json()["id"])
        tomorrow = (dt.datetime.now(ZoneInfo("Asia/Shanghai")).date() + dt.timedelta(days=1)).isoformat()
        added = http.post(f"/api/appointments/schedules/{schedule_id}/slots", json={
            "from": tomorrow, "to": tomorrow, "firstStart": "08:00", "lastStart": "09:30", "minutes": 30,
            "capacity": 2, "weekdaysOnly": False})
        assert added.status_code == 201, added.text
        for code, name in (("A", "户籍业务"), ("B", "社保医保")):
            assert http.post(f"/api/hall/{HALL}/groups", json={"code": code, "name": name}).status_code == 201
        assert http.put(f"/api/hall/{HALL}/windows/1", json={"skills": ["A", "B"]}).status_code == 200
    return schedule_id


def test_booking_kiosk_and_call_screen(portal_server: Portal, chromium: Any) -> None:
    portal = portal_server
    portal.add_user("nurse-li", "official", "health")
    portal.add_user("resident-zhou", "citizen")
    schedule_id = set_up_site(portal, portal.token("nurse-li"))
    b = Browser(chromium, portal)

    # A citizen books the first free time, sees it under "my appointments", then cancels it.
    b.login("resident-zhou", f"/portal/appointments?schedule={schedule_id}")
    b.wait_text("可预约时段 Free times")
    # the heading is drawn before the slots are fetched; under load the slots arrive a moment later
    b.wait(lambda d: len(b.all(".t-slot")) == 4, 60, "four free times")
    assert "08:00 · 余 2" in b.text()
    b.click(".t-slot")
    b.wait_text("已预约 Booked")
    b.shot("appointments", keep=True)
    assert "08:00 · 余 1" in b.text()
    # 改约: moved to another time, the first place is free again.
    b.click(".t-reschedule")
    b.wait_text("改约：请选择新的时间 Rescheduling")
    b.click(".t-slot:nth-of-type(2)")
    b.wait(lambda _d: "08:30 · 余 1" in b.text() and "08:00 · 余 2" in b.text(), 30, "moved to 08:30")
    b.click(".t-cancel")
    b.wait_text("已取消 Cancelled")

    # The kiosk (signed in as hall staff) gives a ticket with its expected wait.
    b.login("nurse-li", f"/hall/{HALL}/kiosk")
    b.wait_text("请选择办理的业务 Choose your service")
    b.click(".t-kiosk-group")
    b.wait_text("您的号码 Your number: A001")
    assert "前面还有 0 人" in b.text()
    b.shot("hall-kiosk", keep=True)

    # Window 1 calls it; the public call screen (no sign-in) shows it within its refresh.
    with portal.http(portal.token("nurse-li")) as http:
        called = http.post(f"/api/hall/{HALL}/windows/1/call-next")
        assert called.status_code == 200 and called.json()["number"] == "A001"
    b.go("/logout")
    b.driver.delete_all_cookies()
    b.go(f"/hall/{HALL}/screen")
    b.wait_text("请到 1 号窗口 → Window 1", timeout=30)
    # The screen re-renders on its refresh: read the number inside a wait (a stale element is retried).
    b.wait(lambda _d: b.find(".t-call-number").text == "A001", 30, "the called number A001")
    assert "resident-zhou" not in b.text() and "nurse-li" not in b.text()
    b.shot("hall-screen", keep=True)

    # 阳光政务: a department publishes its budget; anyone sees the chart and the table without signing in.
    with portal.http(portal.token("nurse-li")) as http:
        published = http.put("/api/transparency/departments/health/lines", json=[
            {"year": 2026, "category": "基本支出", "budget": 12_000_000, "spent": 9_000_000},
            {"year": 2026, "category": "项目支出", "budget": 8_000_000, "spent": 2_000_000}])
        assert published.status_code == 200, published.text
    b.go("/transparency")
    b.wait_text("阳光政务 · 预算执行 Budget and spending")
    b.find(".t-spending-chart canvas")
    assert "2,000.0" in b.text() and "1,100.0" in b.text() and "55.0%" in b.text()
    b.shot("transparency", keep=True)
