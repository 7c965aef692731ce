"""一网协同 II pages in headless Chromium against a real server (SQLite): a resident reports a repair with a photo on a
phone-sized screen, the community office works it and publishes an emergency notice, the resident confirms and
rates the fix and reads the notice (a read receipt); the 15-minute living circle on the city map; waste points,
deposits and redemption, trends and the collection tasks of full bins; council proposals, votes changed until the
close, results after it and a moderation reason; an appointment site's day and a hall window's desk."""

from __future__ import annotations

import datetime as dt
import sqlite3
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from PIL import Image
from portal_harness import Browser, Portal

COMMUNITY = "tianlin"
HALL = "east-hall"
PHONE = (412, 915)   # a phone's viewport: residents' pages are mobile first
DESK = (1600, 1000)
LON0, LAT0, STEP = 110.30, 20.00, 0.005
JSON = {"Content-Type": "application/json"}


def user_id(portal: Portal, username: str) -> str:
    with portal.http(portal.token(username)) as http:
        return str(http.get("/auth/me").json()["id"])


def entity(kind: str, ident: str, name: str, geometry: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"id": f"urn:ngsi-ld:{kind}:{ident}", "type": kind, "name": {"type": "Property", "value": name},
            "location": {"type": "GeoProperty", "value": geometry}, **extra}


def city_entities() -> list[dict[str, Any]]:
    """A 3 × 3 street grid, two communities of one district (the first under the code repairs and notices use),
    a school and a market near the first, nothing near the second."""
    lines = [[(LON0 + i * STEP, LAT0), (LON0 + i * STEP, LAT0 + 2 * STEP)] for i in range(3)] + \
            [[(LON0, LAT0 + j * STEP), (LON0 + 2 * STEP, LAT0 + j * STEP)] for j in range(3)]
    out = [entity("Road", f"r{n}", f"路{n}", {"type": "LineString", "coordinates": line})
           for n, line in enumerate(lines)]
    for key, name, lon, lat in ((COMMUNITY, "天林社区", LON0, LAT0),
                                ("jiangbin", "江滨社区", LON0 + 2 * STEP, LAT0 + 2 * STEP)):
        out.append(entity("Community", key, name, {"type": "Polygon", "coordinates": [[
            [lon - 0.001, lat - 0.001], [lon + 0.001, lat - 0.001], [lon + 0.001, lat + 0.001],
            [lon - 0.001, lat + 0.001], [lon - 0.001, lat - 0.001]]]},
            district={"type": "Property", "value": "xuhui"}))
    out.append(entity("PointOfInterest", "p1", "实验小学", {"type": "Point", "coordinates": [LON0 + STEP, LAT0]},
                      category={"type": "Property", "value": ["school"]}))
    out.append(entity("PointOfInterest", "p2", "天林菜场", {"type": "Point", "coordinates": [LON0, LAT0 + STEP]},
                      category={"type": "Property", "value": ["market"]}))
    return out


def bin_reading(name: str, fill: float) -> dict[str, Any]:
    return {"id": f"urn:ngsi-ld:WasteContainer:{name}", "type": "WasteContainer",
            "fillingLevel": {"type": "Property", "value": fill, "unitCode": "C62",
                             "observedAt": dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z")},
            "district": {"type": "Property", "value": "xuhui"},
            "location": {"type": "GeoProperty", "value": {"type": "Point", "coordinates": [LON0, LAT0]}}}


def photo(path: Path) -> Path:
    Image.new("RGB", (320, 240), (120, 130, 140)).save(path, "JPEG")
    return path


def test_community_repairs_notices_and_living_circle(portal_server: Portal, chromium: Any, tmp_path: Path) -> None:
    portal = portal_server
    portal.add_user("office-wang", "official", "civil-affairs")
    portal.add_user("resident-li", "citizen")
    li = user_id(portal, "resident-li")
    with portal.http(portal.token("office-wang")) as http:
        made = http.post("/api/community/residents", json={"community": COMMUNITY, "building": "3", "person": li,
                                                           "phone": "13800138000"})
        assert made.status_code == 201, made.text
    b = Browser(chromium, portal)

    # A resident on a phone: one-click repair with a photo.
    b.driver.set_window_size(*PHONE)
    b.login("resident-li", "/portal/repairs")
    b.wait_text("我的社区 My community: tianlin · 3 栋 building")
    b.choose(".t-place", "电梯 Lift")
    b.type(".t-description textarea", "3号楼电梯停在5层不动，按钮无反应")
    from selenium.webdriver.common.by import By

    b.find(".t-photo").find_element(By.CSS_SELECTOR, "input[type=file]").send_keys(str(photo(tmp_path / "lift.jpg")))
    b.wait_text("照片已选好 Photo attached")
    b.click(".t-send-repair")
    b.wait_text("已报修 Reported")
    assert "已附照片 Photo attached" in b.text() and "承诺" in b.text()
    b.shot("commons-repair-reported", keep=True, at=".t-home")
    # The shared header stays one short line on a phone; its navigation folds into the menu button.
    header = b.find(".cityos-header")
    assert header.size["height"] <= 64, header.size
    assert not b.driver.find_element(By.CSS_SELECTOR, ".cityos-nav").is_displayed()
    b.click(".cityos-menu")
    b.wait(lambda d: any(e.is_displayed() and "随手拍" in e.text
                         for e in d.find_elements(By.CSS_SELECTOR, ".cityos-menu-item")), 30, "the nav menu")
    b.shot("commons-phone-menu", keep=True)
    b.driver.find_element(By.TAG_NAME, "body").send_keys("\ue00c")  # Escape closes the menu

    # The community office: the work order with its SLA, accepted and done; an emergency notice by SMS.
    b.driver.set_window_size(*DESK)
    b.login("office-wang", f"/community/office?community={COMMUNITY}")
    b.wait_text("报修工单 Repair work orders")
    assert b.find(".cityos-nav").is_displayed() and not b.driver.find_element(By.CSS_SELECTOR, ".cityos-menu") \
        .is_displayed()
    order = b.find(".t-work-order")
    assert "电梯 Lift" in order.text and "SLA 4 h" in order.text
    b.click(".t-advance-accepted")
    b.wait_text("已受理 Accepted")
    b.click(".t-advance-done")
    b.wait_text("待确认 Done, please confirm")
    b.type(".t-n-title input", "明日停水通知")
    b.type(".t-n-body textarea", "因管道抢修，明日 9:00–13:00 3 号楼停水，请提前储水。")
    b.type(".t-n-buildings input", "3")
    b.click(".t-n-urgent")
    b.click(".t-publish")
    b.wait_text("已读 0/1 read")
    b.shot("commons-community-office", keep=True)
    b.shot("commons-community-notices", keep=True, at=".t-sent-notice")

    # The resident confirms the fix with a rating and reads the notice: the office sees the receipt.
    b.driver.set_window_size(*PHONE)
    b.login("resident-li", "/portal/repairs")
    b.click(".t-confirm")
    b.wait_text("我的评价 My rating: ★★★★★")
    assert "已确认 Confirmed" in b.text()
    b.shot("commons-repair-confirmed", keep=True, at=".t-repair")
    b.go("/portal/notices")
    b.wait_text("未读 1 条 · 1 unread")
    assert "紧急 Urgent" in b.text()
    b.click(".t-notice")
    b.find(".t-notice-body")
    b.wait_text("未读 0 条 · 0 unread")
    b.shot("commons-notice-read", keep=True, at=".t-notice-open")
    with portal.http(portal.token("office-wang")) as http:
        (notice,) = http.get("/api/community/notices", params={"community": COMMUNITY}).json()
        assert (notice["readCount"], notice["recipients"], notice["urgent"]) == (1, 1, True)

    # The 15-minute living circle, public: reach and gaps per community, on the city's base map.
    with portal.http(portal.admin) as http:
        created = http.post("/ngsi-ld/v1/entityOperations/upsert", json=city_entities(), headers=JSON)
        assert created.status_code in (201, 204), created.text
    b.driver.set_window_size(*DESK)
    b.go("/logout")
    b.driver.delete_all_cookies()
    b.go("/portal/living-circle")
    b.wait_text("15 分钟生活圈 What is within a 15-minute walk")
    # the title is sent first; the cards follow once the walk network is computed, which takes seconds under load
    b.wait(lambda d: len(b.all(".t-circle")) == 2, 90, "the two communities' cards")
    cards = b.all(".t-circle")
    tianlin = next(c for c in cards if "天林社区" in c.text)
    assert "实验小学" in tianlin.text and "天林菜场" in tianlin.text and "15 分钟内没有" in tianlin.text
    assert f"{COMMUNITY} · xuhui" in tianlin.text  # the same code as the repairs and notices above
    b.wait(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".cityos-map-note")) == 2, 60, "gap notes on the map")
    notes = " ".join(n.text for n in b.all(".cityos-map-note"))
    assert "天林社区 · 缺" in notes and "江滨社区 · 缺" in notes
    b.wait(lambda d: d.execute_script(
        "const m = window.cityosMap; const ids = m ? Object.keys(m.maps) : [];"
        "return ids.length ? m.stats(ids[ids.length - 1]).counts.places : 0;") == 2, 60, "reached places")
    b.shot("commons-living-circle", keep=True)
    b.click(".t-community-link")
    b.wait(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".t-circle")) == 1, 30, "one community")

    # Staff pick the community from a list (the hub's communities and the codes in use) rather than type it.
    b.login("office-wang", "/community/office")
    b.choose(".t-office-community", "江滨社区 jiangbin · xuhui")
    b.wait(lambda d: "community=jiangbin" in d.current_url, 30, "the office of the chosen community")
    b.wait_text("未完成 0 单 open")
    b.choose(".t-office-community", f"天林社区 {COMMUNITY} · xuhui")
    b.wait(lambda d: f"community={COMMUNITY}" in d.current_url, 30, "back to the first community")
    b.find(".t-sent-notice")
    b.shot("commons-office-picker", at=".t-office-community")


def test_waste_points_trends_and_collections(portal_server: Portal, chromium: Any) -> None:
    portal = portal_server
    portal.add_user("crew-zhao", "official", "sanitation")
    portal.add_user("resident-qian", "citizen")
    with portal.http(portal.token("resident-qian")) as http:
        assert http.post("/api/waste/cards", json={"card": "QR-0001", "community": COMMUNITY}).status_code == 201
    with portal.http(portal.token("crew-zhao")) as http:
        for scan, category, weight, correct in (("s1", "recyclable", 3.2, True), ("s2", "kitchen", 1.1, True),
                                                ("s3", "other", 0.8, False)):
            done = http.post("/api/waste/deposits", json={"point": "bin-7", "scan": scan, "card": "QR-0001",
                                                          "category": category, "weightKg": weight,
                                                          "correct": correct})
            assert done.status_code == 201, done.text
        for name, cost, stock in (("环保购物袋", 5, 10), ("洗衣液", 40, 5)):
            assert http.post("/api/waste/rewards", json={"name": name, "cost": cost, "stock": stock}) \
                .status_code == 201
    b = Browser(chromium, portal)

    b.driver.set_window_size(*PHONE)
    b.login("resident-qian", "/portal/waste")
    b.wait_text("垃圾分类积分 My sorting points")
    assert b.find(".t-balance").text == "8"   # 6 for 3.2 kg of recyclables, 2 for kitchen waste, 0 when wrong
    assert "分类错误 Wrong bin" in b.text() and "积分不足 Not enough points" in b.text()
    b.shot("commons-waste-points", keep=True, at=".t-balance")
    b.click(".t-redeem")
    b.wait(lambda _d: b.find(".t-balance").text == "3", 30, "points after redeeming")
    assert "兑换记录 Redemptions" in b.text()

    # Staff: trends per community; a full bin (a reading in the hub) is a collection task until emptied.
    with portal.http(portal.admin) as http:
        for fill in (0.91, 0.95):
            written = http.post("/ngsi-ld/v1/entityOperations/upsert", json=[bin_reading("bin-east-03", fill)],
                                headers=JSON)
            assert written.status_code in (201, 204), written.text
    b.driver.set_window_size(*DESK)
    b.login("crew-zhao", "/waste/trends")
    b.wait_text("垃圾分类成效")
    b.find(".t-trend-chart canvas")
    assert "100%" in b.find(".t-trend-table").text   # one card, used: participation 100%; accuracy 2 of 3
    assert "67%" in b.find(".t-trend-table").text
    b.shot("commons-waste-trends", keep=True)
    b.go("/waste/collections")
    b.wait_text("1 个任务 tasks")
    assert "bin-east-03" in b.find(".t-task").text and "满溢 95% full" in b.text()
    b.shot("commons-waste-collections", keep=True)
    b.click(".t-emptied")
    b.wait_text("0 个任务 tasks")


def test_council_appointment_site_and_hall_window(portal_server: Portal, chromium: Any) -> None:
    portal = portal_server
    portal.add_user("council-clerk", "official", "civil-affairs")
    portal.add_user("nurse-sun", "official", "health")
    portal.add_user("resident-zhao", "citizen")
    zhao = user_id(portal, "resident-zhao")
    with portal.http(portal.token("council-clerk")) as http:
        assert http.post("/api/council/members", json={"community": COMMUNITY, "person": zhao}).status_code == 201
    with portal.http(portal.token("resident-zhao")) as http:
        for title in ("小区东门加装充电桩", "关于楼道堆物的倡议", "去年的绿化改造"):
            made = http.post("/api/council/proposals", json={"community": COMMUNITY, "title": title,
                                                              "body": f"{title}：请大家讨论。", "days": 7})
            assert made.status_code == 201, made.text
    with portal.http(portal.token("resident-zhao")) as http:
        proposals = {p["title"]: p["id"] for p in http.get(f"/api/council/communities/{COMMUNITY}/proposals").json()}
        assert http.post(f"/api/council/proposals/{proposals['去年的绿化改造']}/votes",
                         json={"choice": "yes"}).status_code == 200
    # That one's vote has closed (its period set in the past in the database, as time passing would).
    database = portal.env["CITYOS_DATABASE_URL"].removeprefix("sqlite:///")
    with sqlite3.connect(database) as db:
        db.execute("UPDATE council_proposals SET closes_at = '2026-01-01 00:00:00.000000' WHERE id = ?",
                   (proposals["去年的绿化改造"],))
    b = Browser(chromium, portal)

    # The office moderates one proposal with a reason.
    b.login("council-clerk", f"/council/moderation?community={COMMUNITY}")
    b.wait_text("3 个公开议题 public proposals")
    card = next(c for c in b.all(".t-m-proposal") if "关于楼道堆物的倡议" in c.text)
    from selenium.webdriver.common.by import By

    card.find_element(By.CSS_SELECTOR, ".t-m-reason input").send_keys("含有针对具体住户的信息，请修改后重新提交")
    card.find_element(By.CSS_SELECTOR, ".t-m-hide").click()
    b.wait_text("2 个公开议题 public proposals")
    b.shot("commons-council-moderation", keep=True)

    # The resident on a phone: votes, changes the vote, comments; sees results of the closed one and the reason.
    b.driver.set_window_size(*PHONE)
    b.login("resident-zhao", "/portal/council")
    b.wait_text("社区 Community: tianlin")
    assert "审核理由 Reason given: 含有针对具体住户的信息" in b.text()
    assert "赞成 Yes 1（100%）" in b.text()
    b.click(".t-vote-yes")
    b.wait_text("我的投票 My vote: 赞成 Yes")
    b.click(".t-vote-no")
    b.wait_text("我的投票 My vote: 反对 No")
    b.click(".t-comments-open")
    b.type(".t-c-body input", "支持，晚上车棚经常有飞线充电")
    b.click(".t-c-send")
    b.wait_text("支持，晚上车棚经常有飞线充电")
    b.shot("commons-council", keep=True, at=".t-council-community")

    # An appointment site's day: the booking, marked as came.
    b.driver.set_window_size(*DESK)
    tomorrow = (dt.datetime.now(ZoneInfo("Asia/Shanghai")).date() + dt.timedelta(days=1)).isoformat()
    with portal.http(portal.token("nurse-sun")) as http:
        schedule = http.post("/api/appointments/schedules", json={"kind": "vaccination", "site": "天林社区卫生服务中心",
                                                                   "service": "流感疫苗"}).json()["id"]
        assert http.post(f"/api/appointments/schedules/{schedule}/slots", json={
            "from": tomorrow, "to": tomorrow, "firstStart": "09:00", "lastStart": "09:30", "minutes": 30,
            "capacity": 2, "weekdaysOnly": False}).status_code == 201
        slots = http.get("/api/appointments/slots", params={"scheduleId": schedule}).json()
        groups = [("A", "户籍业务"), ("B", "社保医保")]
        for code, name in groups:
            assert http.post(f"/api/hall/{HALL}/groups", json={"code": code, "name": name}).status_code == 201
        assert http.put(f"/api/hall/{HALL}/windows/2", json={"skills": ["A"]}).status_code == 200
        assert http.put(f"/api/hall/{HALL}/windows/3", json={"skills": ["B"]}).status_code == 200
        for _ in range(2):
            assert http.post(f"/api/hall/{HALL}/tickets", json={"group": "A", "channel": "desk"}).status_code == 201
    with portal.http(portal.token("resident-zhao")) as http:
        assert http.post("/api/appointments/appointments", json={"slotId": slots[0]["id"]}).status_code == 201
    b.login("nurse-sun", f"/appointments/site/{schedule}?day={tomorrow}")
    b.wait_text("时段 2 slots · 预约 1 booked")
    assert f"{zhao[:3]}*" in b.find(".t-site-appointment").text and zhao not in b.text()
    b.click(".t-came")
    b.wait_text("已到 1 came")
    b.shot("commons-appointment-site", keep=True)

    # A hall window: call next, no-show, call the next, start, transfer to B.
    b.go(f"/hall/{HALL}/window/2")
    b.wait_text("等候 2 人 waiting")
    b.click(".t-call-next")
    b.wait(lambda _d: b.find(".t-current-number").text == "A001", 30, "A001 called")
    b.click(".t-window-noshow")
    b.wait_text("未到 1 no-shows")
    b.click(".t-call-next")
    b.wait(lambda _d: b.find(".t-current-number").text == "A002", 30, "A002 called")
    b.click(".t-serving")
    b.wait_text("办理中 Serving")
    b.shot("commons-hall-window", keep=True)
    b.choose(".t-transfer-group", "B 社保医保")
    b.click(".t-transfer")
    b.wait_text("当前无号 No ticket at this window")
    with portal.http(portal.token("nurse-sun")) as http:
        window3 = http.get(f"/api/hall/{HALL}/windows/3").json()
        assert window3["waiting"] == 1
    # The desk closes the window and opens it again with its skills.
    b.click(".t-window-close")
    b.wait_text("已关闭 Closed")
    b.click(".t-window-open")
    b.wait_text("开放 Open")
    with portal.http(portal.token("nurse-sun")) as http:
        window2 = http.get(f"/api/hall/{HALL}/windows/2").json()
        assert (window2["open"], window2["skills"]) == (True, ["A"])

    # A citizen takes a ticket online on a phone and sees the people ahead and the wait, then the call.
    b.driver.set_window_size(*PHONE)
    b.login("resident-zhao", f"/portal/hall/{HALL}")
    b.wait_text("网上取号 Take a hall ticket online")
    b.find(".t-take-online")
    buttons = b.all(".t-take-online")
    assert len(buttons) == 2
    b.driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", buttons[1])
    buttons[1].click()                                  # B 社保医保: the transferred A002 is ahead
    b.wait_text("前面 1 人")
    assert b.find(".t-my-ticket").text.startswith("B001")
    b.shot("commons-hall-online", keep=True, at=".t-my-ticket")
    with portal.http(portal.token("nurse-sun")) as http:
        assert http.post(f"/api/hall/{HALL}/windows/3/call-next").json()["number"] == "A002"
    b.wait_text("前面 0 人", timeout=30)                 # the page refreshes itself
