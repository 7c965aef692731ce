"""Waste sorting (垃圾分类) on both backends: cards, deposits and points, idempotent scans, a ledger that
cannot be double-spent, community figures, and every refusal."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from auth_tokens import Auth
from problem_details import problem

API = "/api/waste"


class Sorting:
    def __init__(self, app: Any, client: httpx.AsyncClient) -> None:
        auth = Auth(app)
        self.client = client
        # The bins' vendor system posts scans as an OAuth client of the sanitation department.
        self.bin = auth.headers("official", department="sanitation", username="bin-gateway")
        self.staff = auth.headers("official", department="sanitation", username="attendant")
        self.auth = auth

    def resident(self, user_id: str) -> dict[str, str]:
        return self.auth.headers("citizen", user_id=user_id, username=user_id)

    async def card(self, user_id: str, card: str, community: str = "xuhui-tianlin") -> None:
        made = await self.client.post(f"{API}/cards", headers=self.resident(user_id),
                                      json={"card": card, "community": community})
        assert made.status_code == 201, made.text

    async def deposit(self, scan: str, card: str, category: str = "recyclable", weight: float = 2.0,
                      correct: bool | None = True) -> httpx.Response:
        body: dict[str, Any] = {"point": "bin-7", "scan": scan, "card": card, "category": category,
                                "weightKg": weight}
        if correct is not None:
            body["correct"] = correct
        return await self.client.post(f"{API}/deposits", headers=self.bin, json=body)

    async def points(self, user_id: str) -> int:
        body = (await self.client.get(f"{API}/points", headers=self.resident(user_id))).json()
        points: int = body["points"]
        return points


async def test_deposits_earn_points_once_per_scan(client: httpx.AsyncClient, app: Any) -> None:
    sorting = Sorting(app, client)
    await sorting.card("li", "QR-0001")
    first = await sorting.deposit("s1", "QR-0001", weight=2.0)
    assert first.status_code == 201 and first.json()["points"] == 4
    again = await sorting.deposit("s1", "QR-0001", weight=2.0)
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
    assert await sorting.points("li") == 4
    wrong = await sorting.deposit("s2", "QR-0001", category="kitchen", correct=False)
    assert wrong.status_code == 201 and wrong.json()["points"] == 0
    unchecked = await sorting.deposit("s3", "QR-0001", category="hazardous", correct=None)
    assert unchecked.json()["points"] == 0 and unchecked.json()["correct"] is None
    checked = await client.post(f"{API}/deposits/{unchecked.json()['id']}/check", headers=sorting.staff,
                                json={"correct": True})
    assert checked.status_code == 200 and checked.json()["points"] == 5
    problem(await client.post(f"{API}/deposits/{unchecked.json()['id']}/check", headers=sorting.staff,
                              json={"correct": True}), 409)
    ledger = (await client.get(f"{API}/points", headers=sorting.resident("li"))).json()
    assert ledger["points"] == 9 and sorted(e["delta"] for e in ledger["history"]) == [4, 5]
    # A scan id reused for a different deposit is refused, not silently merged.
    problem(await sorting.deposit("s1", "QR-0001", category="other"), 409)


async def test_concurrent_redemptions_of_the_same_points_succeed_once(client: httpx.AsyncClient, app: Any) -> None:
    sorting = Sorting(app, client)
    await sorting.card("wang", "QR-0002")
    assert (await sorting.deposit("r1", "QR-0002", weight=5.0)).json()["points"] == 10
    reward = await client.post(f"{API}/rewards", headers=sorting.staff, json={"name": "环保袋", "cost": 10,
                                                                              "stock": 100})
    assert reward.status_code == 201
    reward_id = reward.json()["id"]
    results = await asyncio.gather(*(client.post(f"{API}/rewards/{reward_id}/redeem",
                                                 headers=sorting.resident("wang")) for _ in range(20)))
    codes = sorted(r.status_code for r in results)
    assert codes.count(200) == 1 and codes.count(409) == 19, codes
    assert await sorting.points("wang") == 0
    catalogue = (await client.get(f"{API}/rewards")).json()
    assert catalogue[0]["stock"] == 99


async def test_stock_is_never_oversold(client: httpx.AsyncClient, app: Any) -> None:
    sorting = Sorting(app, client)
    for n in range(6):
        await sorting.card(f"r{n}", f"QR-1{n}")
        await sorting.deposit(f"t{n}", f"QR-1{n}", weight=5.0)
    reward = (await client.post(f"{API}/rewards", headers=sorting.staff,
                                json={"name": "洗衣液", "cost": 5, "stock": 2})).json()
    results = await asyncio.gather(*(client.post(f"{API}/rewards/{reward['id']}/redeem",
                                                 headers=sorting.resident(f"r{n}")) for n in range(6)))
    assert sorted(r.status_code for r in results) == [200, 200, 409, 409, 409, 409]
    # Those refused for stock kept their points (the whole redemption rolled back).
    balances = [await sorting.points(f"r{n}") for n in range(6)]
    assert sorted(balances) == [5, 5, 10, 10, 10, 10]


async def test_participation_and_accuracy_per_community(client: httpx.AsyncClient, anon_client: httpx.AsyncClient,
                                                         app: Any) -> None:
    sorting = Sorting(app, client)
    for n in range(4):
        await sorting.card(f"a{n}", f"QR-A{n}", "community-a")
    await sorting.card("b0", "QR-B0", "community-b")
    await sorting.deposit("x1", "QR-A0", correct=True)
    await sorting.deposit("x2", "QR-A0", correct=False)
    await sorting.deposit("x3", "QR-A1", correct=True)
    await sorting.deposit("x4", "QR-A1", correct=None)
    stats = {row["community"]: row for row in (await anon_client.get(f"{API}/stats")).json()}
    assert stats["community-a"]["participation"] == 0.5 and stats["community-a"]["accuracy"] == round(2 / 3, 4)
    assert stats["community-b"]["participation"] == 0.0 and stats["community-b"]["accuracy"] is None
    # the counts behind accuracy, so the cockpit sums communities without averaging rates
    assert (stats["community-a"]["correct"], stats["community-a"]["checked"]) == (2, 3)
    assert (stats["community-b"]["correct"], stats["community-b"]["checked"]) == (0, 0)
    assert "person" not in str(stats) and "QR-" not in str(stats)


async def test_waste_refusals(client: httpx.AsyncClient, anon_client: httpx.AsyncClient, app: Any) -> None:
    sorting = Sorting(app, client)
    await sorting.card("zhao", "QR-0003")
    problem(await client.post(f"{API}/cards", headers=sorting.resident("qian"),
                              json={"card": "QR-0003", "community": "c"}), 409)
    problem(await client.post(f"{API}/cards", headers=sorting.resident("qian"),
                              json={"card": "x' OR '1'='1", "community": "c"}), 400)
    problem(await anon_client.post(f"{API}/cards", json={"card": "QR-9", "community": "c"}), 401)
    for weight in (-1, 0, 1000, "3", True, None):
        problem(await sorting.deposit(f"w{weight}", "QR-0003", weight=weight), 400)  # type: ignore[arg-type]
    problem(await sorting.deposit("c1", "QR-0003", category="glass"), 400)
    problem(await sorting.deposit("c2", "QR-UNKNOWN"), 404)
    problem(await client.post(f"{API}/deposits", headers=sorting.resident("zhao"),
                              json={"point": "p", "scan": "s", "card": "QR-0003", "category": "other",
                                    "weightKg": 1}), 403)  # a resident cannot credit themself
    problem(await client.post(f"{API}/deposits", headers={**sorting.bin, "Content-Type": "application/json"},
                              content=b"{oops"), 400)
    problem(await client.post(f"{API}/rewards/none/redeem", headers=sorting.resident("zhao")), 404)
    reward = (await client.post(f"{API}/rewards", headers=sorting.staff,
                                json={"name": "纸巾", "cost": 50, "stock": 1})).json()
    problem(await client.post(f"{API}/rewards/{reward['id']}/redeem", headers=sorting.resident("zhao")), 409)
    problem(await client.post(f"{API}/rewards", headers=sorting.resident("zhao"),
                              json={"name": "x", "cost": 1, "stock": 1}), 403)
    problem(await client.post(f"{API}/rewards", headers=sorting.staff, json={"name": "x", "cost": -5, "stock": 1}),
            400)
    problem(await client.post(f"{API}/deposits/unknown/check", headers=sorting.staff, json={"correct": True}), 404)
    problem(await client.post(f"{API}/deposits/unknown/check", headers=sorting.staff, json={"correct": "yes"}), 400)
    problem(await anon_client.get(f"{API}/points"), 401)


async def test_my_deposits_and_weekly_trends(client: httpx.AsyncClient, anon_client: httpx.AsyncClient,
                                            app: Any) -> None:
    sorting = Sorting(app, client)
    await sorting.card("t1", "QR-T1", "community-t")
    await sorting.card("t2", "QR-T2", "community-t")
    await sorting.deposit("y1", "QR-T1", correct=True)
    await sorting.deposit("y2", "QR-T1", category="kitchen", weight=1.0, correct=False)
    mine = (await client.get(f"{API}/deposits/mine", headers=sorting.resident("t1"))).json()
    assert sorted((d["category"], d["correct"], d["points"]) for d in mine) == [("kitchen", False, 0),
                                                                                ("recyclable", True, 4)]
    assert "person" not in str(mine) and "card" not in mine[0]
    assert (await client.get(f"{API}/deposits/mine", headers=sorting.resident("t2"))).json() == []
    problem(await anon_client.get(f"{API}/deposits/mine"), 401)
    trends = (await anon_client.get(f"{API}/trends", params={"weeks": 4})).json()
    (row,) = [t for t in trends if t["community"] == "community-t"]
    assert row["cards"] == 2 and len(row["weeks"]) == 4
    this_week = row["weeks"][-1]
    assert (this_week["deposits"], this_week["participation"], this_week["accuracy"]) == (2, 0.5, 0.5)
    assert row["weeks"][0]["deposits"] == 0 and row["weeks"][0]["accuracy"] is None
    assert "QR-" not in str(trends) and "t1" not in str(trends)
    assert (await anon_client.get(f"{API}/trends", params={"weeks": 0})).status_code in (400, 422)
    assert (await anon_client.get(f"{API}/trends", params={"community": "x" * 65})).status_code in (400, 422)
