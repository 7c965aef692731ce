"""智慧停车 in headless Chromium against a real server: a citizen finds car parks near a destination (free
spaces predicted at arrival, distance, price, EV chargers), reserves one, is told plainly when a car park
is full, then reads their sessions and bills (fee, payment) and requests a refund; another citizen's
bill never shows on their page nor opens through the API (SQLite only: the browser tests' own server)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from portal_harness import Browser, Portal
from test_web_portal_citizen import PHONE_WIDTH, WIDE, overflow, phone_screen

API = "/api/parking"
PLACE = (20.021, 110.331)


def make_carpark(http: Any, name: str, total: int, lat: float, lon: float, ev: int) -> str:
    made = http.post(f"{API}/carparks", json={
        "name": name, "department": "transport", "lat": lat, "lon": lon, "totalSpotNumber": total,
        "evChargers": ev, "tariff": {"freeMinutes": 15, "hourRate": 800, "nightRate": 200, "nightStart": 22,
                                     "nightEnd": 7, "dailyCap": 5000}})
    assert made.status_code == 201, made.text
    return str(made.json()["id"])


def gate(http: Any, carpark: str, plate: str, direction: str, at: dt.datetime, event: str) -> dict[str, Any]:
    reply = http.post(f"{API}/events", json={"eventId": event, "carparkId": carpark, "plate": plate,
                                             "direction": direction, "at": at.isoformat()})
    assert reply.status_code == 200, reply.text
    body: dict[str, Any] = reply.json()
    return body


def test_find_reserve_and_my_bills(portal_server: Portal, chromium: Any) -> None:
    portal = portal_server
    portal.add_user("parking-office", "official", "transport")
    portal.add_user("driver-chen", "citizen")
    portal.add_user("driver-lin", "citizen")
    office = portal.token("parking-office")
    now = dt.datetime.now(dt.UTC)
    with portal.http(office) as http:
        plaza = make_carpark(http, "海口人民广场停车场", 60, PLACE[0] + 0.002, PLACE[1], 4)
        tiny = make_carpark(http, "骑楼老街小停车场", 1, PLACE[0], PLACE[1] + 0.004, 0)
        gate(http, tiny, "琼A·99999", "entry", now - dt.timedelta(minutes=5), "tiny-in")  # now it is full
    # Chen's earlier visit: in 3 h before now, out now (a paid bill); Lin's visit on another plate.
    with portal.http(portal.token("driver-chen")) as http:
        assert http.post(f"{API}/vehicles", json={"plate": "琼A·12345"}).status_code == 201
    with portal.http(portal.token("driver-lin")) as http:
        assert http.post(f"{API}/vehicles", json={"plate": "琼B·54321"}).status_code == 201
    with portal.http(office) as http:
        gate(http, plaza, "琼A12345", "entry", now - dt.timedelta(hours=3), "chen-in")
        bill = gate(http, plaza, "琼A12345", "exit", now - dt.timedelta(minutes=1), "chen-out")
        lin_in = gate(http, plaza, "琼B54321", "entry", now - dt.timedelta(hours=1), "lin-in")
    assert bill["fee"] and bill["fee"] > 0

    b = Browser(chromium, portal)
    b.login("driver-chen", f"/portal/parking?near={PLACE[0]},{PLACE[1]}")
    b.wait_text("查找车位 Find car parks")
    b.click(".t-find")
    b.wait_text("海口人民广场停车场")
    text = b.text()
    assert "骑楼老街小停车场" not in text  # full: no space predicted at arrival
    assert "充电桩 EV chargers: 4" in text and "首小时 First hour: ¥" in text
    assert "米 m" in text and "到达时空位 Free at arrival: 59" in text  # 60 − Lin's car parked
    b.shot("parking-find", keep=True, at=".t-where")

    # Reserve at the plaza: the window is in city time, the confirmation in city time too.
    b.click(".carpark-" + plaza + " .t-reserve-open")
    b.wait_text("确认预约 Reserve")
    assert b.find(".t-plate input").get_attribute("value") == ""  # no reservation yet: nothing to prefill
    b.type(".t-plate input", "琼A·12345")
    b.click(".t-reserve")
    b.wait_text("预约成功 Reserved: 琼A·12345")
    assert "CST" in b.find(".t-reserved").text
    b.shot("parking-reserve", keep=True)

    # The full car park: a clear refusal, Chinese first.
    b.go(f"/portal/parking/reserve?carpark={tiny}")
    b.wait_text("确认预约 Reserve")
    assert b.find(".t-plate input").get_attribute("value") == "琼A·12345"  # from my reservation
    b.click(".t-reserve")
    b.wait_text("车位已满 The car park is full")
    b.go("/portal/parking/reserve?carpark=no-such-carpark")
    b.wait_text("找不到该停车场 Unknown car park")

    # My parking: the reservation, the bill with its charge; a refund request.
    b.go("/portal/parking/mine")
    b.wait_text("停车记录与账单 Parking sessions and bills")
    b.wait_text("已支付 Paid")
    text = b.text()
    assert "已预约 Reserved" in text and f"¥{bill['fee'] / 100:.2f}" in text and "扣费 Charge" in text
    assert "琼B·54321" not in text  # Lin's car is not Chen's business
    b.type(".session-" + bill["id"] + " .t-dispute-reason input", "出场时道闸故障，多停了一小时")
    b.click(".session-" + bill["id"] + " .t-dispute")
    b.wait_text("退款申请中 Refund requested")
    b.shot("parking-mine", keep=True)

    # Lin cannot open Chen's bill through the API, and Chen cannot open Lin's.
    with portal.http(portal.token("driver-lin")) as http:
        assert http.get(f"{API}/sessions/{bill['id']}").status_code == 403
        assert [s["id"] for s in http.get(f"{API}/sessions/mine").json()] == [lin_in["id"]]
    with portal.http(portal.token("driver-chen")) as http:
        assert http.get(f"{API}/sessions/{lin_in['id']}").status_code == 403

    # On a 390 px phone the three pages fit the screen (nothing wider than it).
    b.login("driver-chen", "/portal/parking/mine")
    phone_screen(b.driver, True)
    try:
        widths: dict[str, int] = {}
        wide: dict[str, str] = {}
        for path, shown in (("/portal/parking", "预约车位 Reserve"), (f"/portal/parking/reserve?carpark={plaza}",
                                                                     "确认预约 Reserve"),
                            ("/portal/parking/mine", "退款申请中 Refund requested")):
            b.go(path)
            b.wait_text(shown)
            widths[path] = overflow(b)
            if widths[path] > PHONE_WIDTH:
                wide[path] = str(b.driver.execute_script(WIDE))
        b.shot("parking-mine-phone", keep=True)
    finally:
        phone_screen(b.driver, False)
    assert all(w <= PHONE_WIDTH for w in widths.values()), f"{widths} {wide}"
