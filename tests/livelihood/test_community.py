"""Community services (社区) on both backends: one-click repair with photo and SLA, the resident's confirmation and
rating, notices targeted by building with read receipts and SMS when urgent, and every refusal."""

from __future__ import annotations

import datetime as dt
import io
import os
from typing import Any

import httpx
from PIL import Image

from auth_tokens import Auth
from cityos.core import clock
from problem_details import problem

API = "/api/community"


def png(size: tuple[int, int] = (40, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 40, 40)).save(buffer, "PNG")
    return buffer.getvalue()


class Community:
    def __init__(self, app: Any, client: httpx.AsyncClient) -> None:
        self.auth = Auth(app)
        self.client = client
        self.office = self.auth.headers("official", department="community-office", username="office")

    def resident(self, user_id: str) -> dict[str, str]:
        return self.auth.headers("citizen", user_id=user_id, username=user_id)

    async def register(self, person: str, building: str, phone: str | None = None) -> None:
        body = {"community": "tianlin", "building": building, "person": person, **({"phone": phone} if phone else {})}
        made = await self.client.post(f"{API}/residents", headers=self.office, json=body)
        assert made.status_code == 201, made.text


async def test_repair_with_photo_goes_through_its_sla_and_is_rated(client: httpx.AsyncClient, app: Any) -> None:
    community = Community(app, client)
    await community.register("chen", "B3")
    me = community.resident("chen")
    reported = await client.post(f"{API}/repairs", headers=me,
                                 data={"place": "lift", "description": "3号楼电梯停在5楼不动"},
                                 files={"photo": ("lift.png", png(), "image/png")})
    assert reported.status_code == 201, reported.text
    repair = reported.json()
    assert repair["building"] == "B3" and repair["slaHours"] == 4 and repair["hasPhoto"] and not repair["overdue"]
    photo = await client.get(f"{API}/repairs/{repair['id']}/photo", headers=community.office)
    assert photo.status_code == 200 and photo.headers["content-type"] == "image/png"
    later = clock.now() + dt.timedelta(hours=5)
    clock.set_clock(lambda: later)
    try:
        orders = (await client.get(f"{API}/repairs", params={"community": "tianlin"}, headers=community.office)).json()
        assert orders[0]["id"] == repair["id"] and orders[0]["overdue"] is True and orders[0]["reporter"] == "chen"
    finally:
        clock.reset_clock()
    for step in ("accepted", "in_progress", "done"):
        moved = await client.post(f"{API}/repairs/{repair['id']}/advance", headers=community.office,
                                  json={"to": step, "note": "物业已派人"})
        assert moved.status_code == 200, moved.text
    inbox = (await client.get("/api/services/notifications", headers=me)).json()
    assert any(m["subject"].startswith("报修已处理") for m in inbox["items"])
    problem(await client.post(f"{API}/repairs/{repair['id']}/advance", headers=me, json={"to": "confirmed"}), 400)
    confirmed = await client.post(f"{API}/repairs/{repair['id']}/advance", headers=me,
                                  json={"to": "confirmed", "rating": 5})
    assert confirmed.status_code == 200 and confirmed.json()["rating"] == 5
    mine = (await client.get(f"{API}/repairs/{repair['id']}", headers=me)).json()
    assert [h["status"] for h in mine["history"]] == ["reported", "accepted", "in_progress", "done", "confirmed"]
    assert "reporter" not in mine and all("by" not in h for h in mine["history"])


async def test_repair_refusals(client: httpx.AsyncClient, anon_client: httpx.AsyncClient, app: Any) -> None:
    community = Community(app, client)
    await community.register("chen", "B3")
    me = community.resident("chen")
    problem(await client.post(f"{API}/repairs", headers=community.resident("nobody"),
                              json={"place": "lift", "description": "x"}), 403)  # not a registered resident
    problem(await anon_client.post(f"{API}/repairs", json={"place": "lift", "description": "x"}), 401)
    problem(await client.post(f"{API}/repairs", headers=me, json={"place": "moon", "description": "x"}), 400)
    problem(await client.post(f"{API}/repairs", headers=me, json={"place": "lift", "description": ""}), 400)
    problem(await client.post(f"{API}/repairs", headers=me, data={"place": "lift", "description": "x"},
                              files={"photo": ("a.png", b"not an image at all", "image/png")}), 400)
    problem(await client.post(f"{API}/repairs", headers=me, data={"place": "lift", "description": "x"},
                              files={"photo": ("gif.gif", b"GIF89a" + b"\x00" * 20, "image/gif")}), 400)
    big = io.BytesIO()
    Image.frombytes("RGB", (1100, 1000), os.urandom(1100 * 1000 * 3)).save(big, "PNG")  # noise: incompressible
    assert len(big.getvalue()) > 2 * 1024 * 1024
    oversize = await client.post(f"{API}/repairs", headers=me, data={"place": "lift", "description": "x"},
                                 files={"photo": ("big.png", big.getvalue(), "image/png")})
    assert oversize.status_code in (400, 413), oversize.text
    made = (await client.post(f"{API}/repairs", headers=me,
                              json={"place": "light", "description": "楼道灯不亮"})).json()
    problem(await client.post(f"{API}/repairs/{made['id']}/advance", headers=me, json={"to": "done"}), 403)
    # Only the reporter confirms: to anyone else the resident's step does not exist.
    problem(await client.post(f"{API}/repairs/{made['id']}/advance", headers=community.office,
                              json={"to": "confirmed", "rating": 5}), 404)
    problem(await client.post(f"{API}/repairs/{made['id']}/advance", headers=community.office, json={"to": "done"}),
            409)  # must be accepted first
    problem(await client.get(f"{API}/repairs/{made['id']}", headers=community.resident("other")), 404)
    problem(await client.get(f"{API}/repairs/{made['id']}/photo", headers=me), 404)  # it has none
    problem(await client.post(f"{API}/residents", headers=community.office,
                              json={"community": "tianlin", "building": "B1", "person": "x", "phone": "12345"}), 400)


async def test_notices_reach_their_buildings_with_receipts_and_sms(client: httpx.AsyncClient, app: Any) -> None:
    community = Community(app, client)
    await community.register("a1", "B1", phone="13800138001")
    await community.register("a2", "B1")
    await community.register("b1", "B2", phone="13800138002")
    published = await client.post(f"{API}/notices", headers=community.office, json={
        "community": "tianlin", "buildings": ["B1"], "title": "明日停水",
        "body": "因管道检修，B1 栋明日 9:00–12:00 停水。", "urgent": True})
    assert published.status_code == 201, published.text
    notice = published.json()
    assert notice["recipients"] == 2 and notice["sms"] == 1
    problem(await client.get(f"{API}/notices/{notice['id']}", headers=community.resident("b1")), 404)  # not B1
    opened = await client.get(f"{API}/notices/{notice['id']}", headers=community.resident("a1"))
    assert opened.status_code == 200 and opened.json()["title"] == "明日停水"
    await client.get(f"{API}/notices/{notice['id']}", headers=community.resident("a1"))  # a second read, one receipt
    receipts = (await client.get(f"{API}/notices/{notice['id']}/receipts", headers=community.office)).json()
    assert receipts == {"id": notice["id"], "recipients": 2, "read": 1, "readShare": 0.5, "byBuilding": {"B1": 1}}
    deliveries = (await client.get("/api/services/notifications", headers=community.resident("a1"))).json()
    assert any(m["subject"] == "社区通知 明日停水" for m in deliveries["items"])
    problem(await client.get(f"{API}/notices/{notice['id']}/receipts", headers=community.resident("a1")), 403)
    problem(await client.post(f"{API}/notices", headers=community.office,
                              json={"community": "tianlin", "title": "t", "body": "b", "buildings": "B1"}), 400)
    problem(await client.post(f"{API}/notices", headers=community.office,
                              json={"community": "tianlin", "title": "t", "body": "b", "urgent": "yes"}), 400)


async def test_residents_list_their_notices_with_read_state_and_staff_see_counts(
        client: httpx.AsyncClient, anon_client: httpx.AsyncClient, app: Any) -> None:
    community = Community(app, client)
    await community.register("c1", "B1")
    await community.register("c2", "B2")
    for title, buildings in (("B1 停电", ["B1"]), ("全体大会", [])):
        made = await client.post(f"{API}/notices", headers=community.office, json={
            "community": "tianlin", "title": title, "body": "详见公告栏", "buildings": buildings})
        assert made.status_code == 201, made.text
    home = await client.get(f"{API}/home", headers=community.resident("c1"))
    assert home.json() == {"community": "tianlin", "building": "B1"}
    mine = (await client.get(f"{API}/notices", headers=community.resident("c1"))).json()
    assert [(n["title"], n["read"]) for n in mine] == [("全体大会", False), ("B1 停电", False)]
    other = (await client.get(f"{API}/notices", headers=community.resident("c2"))).json()
    assert [n["title"] for n in other] == ["全体大会"]           # B1's notice is not meant for B2
    await client.get(f"{API}/notices/{mine[1]['id']}", headers=community.resident("c1"))
    again = (await client.get(f"{API}/notices", headers=community.resident("c1"))).json()
    assert [n["read"] for n in again] == [False, True]
    staff = (await client.get(f"{API}/notices", params={"community": "tianlin"}, headers=community.office)).json()
    assert {n["title"]: (n["readCount"], n["recipients"]) for n in staff} == {"B1 停电": (1, 1), "全体大会": (0, 2)}
    assert "read" not in staff[0]
    problem(await client.get(f"{API}/home", headers=community.resident("stranger")), 403)
    problem(await client.get(f"{API}/notices", headers=community.resident("stranger")), 403)
    problem(await anon_client.get(f"{API}/notices"), 401)
    problem(await client.get(f"{API}/notices", params={"community": "bad code!"}, headers=community.office), 400)
