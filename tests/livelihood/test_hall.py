"""The service hall (智慧大厅) on both backends: tickets, calling, wait predictions, transfers, planning,
and every refusal."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import httpx

from auth_tokens import Auth
from cityos.core import clock
from cityos.livelihood.hall import planning
from problem_details import problem

HALL = "/api/hall/civic-centre"


class Hall:
    def __init__(self, app: Any, client: httpx.AsyncClient) -> None:
        self.auth = Auth(app)
        self.client = client
        self.staff = self.auth.headers("official", department="admin-services", username="clerk")

    def citizen(self, user_id: str) -> dict[str, str]:
        return self.auth.headers("citizen", user_id=user_id, username=user_id)

    async def set_up(self, windows: dict[int, list[str]]) -> None:
        for code, name in (("A", "户籍业务"), ("B", "社保医保")):
            made = await self.client.post(f"{HALL}/groups", headers=self.staff, json={"code": code, "name": name})
            assert made.status_code == 201, made.text
        for number, skills in windows.items():
            opened = await self.client.put(f"{HALL}/windows/{number}", headers=self.staff, json={"skills": skills})
            assert opened.status_code == 200, opened.text

    async def ticket(self, user: str, group: str = "A") -> dict[str, Any]:
        response = await self.client.post(f"{HALL}/tickets", headers=self.citizen(user), json={"group": group})
        assert response.status_code == 201, response.text
        body: dict[str, Any] = response.json()
        return body

    async def call(self, window: int) -> httpx.Response:
        return await self.client.post(f"{HALL}/windows/{window}/call-next", headers=self.staff)

    async def advance(self, ticket_id: str, to: str, group: str | None = None) -> httpx.Response:
        return await self.client.post(f"{HALL}/tickets/{ticket_id}/advance", headers=self.staff,
                                      json={"to": to, **({"group": group} if group else {})})


async def test_tickets_are_numbered_called_in_order_and_served(client: httpx.AsyncClient, app: Any) -> None:
    hall = Hall(app, client)
    await hall.set_up({1: ["A"], 2: ["A", "B"]})
    first, second = await hall.ticket("u1"), await hall.ticket("u2")
    assert (first["number"], second["number"]) == ("A001", "A002")
    assert first["prediction"]["ahead"] == 0 and second["prediction"]["ahead"] == 1
    assert second["prediction"]["windows"] == 2
    called = await hall.call(1)
    assert called.status_code == 200 and called.json()["number"] == "A001" and "person" not in called.json()
    problem(await hall.call(1), 409)  # window 1 still has A001
    assert (await hall.advance(first["id"], "serving")).status_code == 200
    assert (await hall.advance(first["id"], "done")).status_code == 200
    problem(await hall.advance(first["id"], "done"), 409)
    board = (await client.get(f"{HALL}/board")).json()
    assert board["calls"][0]["number"] == "A001" and board["calls"][0]["window"] == 1
    assert {q["group"]: q["waiting"] for q in board["queues"]} == {"A": 1, "B": 0}
    assert "person" not in str(board)


async def test_two_windows_calling_at_once_never_share_a_ticket(client: httpx.AsyncClient, app: Any) -> None:
    hall = Hall(app, client)
    await hall.set_up({n: ["A"] for n in range(1, 9)})
    for n in range(8):
        await hall.ticket(f"p{n}")
    calls = await asyncio.gather(*(hall.call(n) for n in range(1, 9)))
    assert all(c.status_code == 200 for c in calls), [c.text for c in calls]
    assert len({c.json()["number"] for c in calls}) == 8
    problem(await client.post(f"{HALL}/windows/1/call-next", headers=hall.staff), 409)


async def test_prediction_follows_handling_time_and_windows(client: httpx.AsyncClient, app: Any) -> None:
    hall = Hall(app, client)
    await hall.set_up({1: ["A"]})
    start = clock.now()
    now = [start]

    def at(minutes: float) -> None:
        now[0] = start + dt.timedelta(minutes=minutes)

    clock.set_clock(lambda: now[0])
    try:
        served = await hall.ticket("first")
        waiting = []
        for n in range(3):
            at(1 + n / 10)
            waiting.append(await hall.ticket(f"w{n}"))
        at(2)
        await hall.call(1)
        await hall.advance(served["id"], "serving")
        at(11)  # a 9-minute handling time
        await hall.advance(served["id"], "done")
        view = (await client.get(f"{HALL}/tickets/{waiting[2]['id']}", headers=hall.citizen("w2"))).json()
        assert view["prediction"]["ahead"] == 2 and view["prediction"]["handlingMinutes"] == 9.0
        assert view["prediction"]["waitMinutes"] == 27.0
        # A second window halves it.
        await client.put(f"{HALL}/windows/2", headers=hall.staff, json={"skills": ["A"]})
        view = (await client.get(f"{HALL}/tickets/{waiting[2]['id']}", headers=hall.citizen("w2"))).json()
        assert view["prediction"]["waitMinutes"] == 13.5
    finally:
        clock.reset_clock()


async def test_transfer_keeps_the_place_and_no_show(client: httpx.AsyncClient, app: Any) -> None:
    hall = Hall(app, client)
    await hall.set_up({1: ["A"], 2: ["B"]})
    early = await hall.ticket("early", "A")
    later_b = await hall.ticket("later", "B")
    await hall.call(1)
    moved = await hall.advance(early["id"], "transfer", "B")
    assert moved.status_code == 200 and moved.json()["group"] == "B" and moved.json()["transfers"] == 1
    # Taken earlier, the transferred client is called before the B ticket taken after it.
    assert (await hall.call(2)).json()["id"] == early["id"]
    assert (await hall.advance(early["id"], "noshow")).status_code == 200
    assert (await hall.call(2)).json()["id"] == later_b["id"]
    problem(await hall.advance(later_b["id"], "transfer", "Z"), 400)
    problem(await hall.advance(later_b["id"], "teleport"), 400)


async def test_hall_refusals(client: httpx.AsyncClient, anon_client: httpx.AsyncClient, app: Any) -> None:
    hall = Hall(app, client)
    await hall.set_up({1: ["A"]})
    me = hall.citizen("me")
    problem(await client.post(f"{HALL}/tickets", headers=me, json={"group": "B"}), 409)  # no window serves B
    problem(await client.post(f"{HALL}/tickets", headers=me, json={"group": "Q"}), 404)
    problem(await client.post(f"{HALL}/tickets", headers=me, json={"group": 7}), 400)
    problem(await client.post(f"{HALL}/tickets", headers=me, json={"group": "A", "channel": "fax"}), 400)
    problem(await client.post(f"{HALL}/tickets", headers=me, json={"group": "A", "channel": "desk"}), 403)
    problem(await anon_client.post(f"{HALL}/tickets", json={"group": "A"}), 401)
    problem(await client.post(f"{HALL}/tickets", headers={**me, "Content-Type": "application/json"},
                              content=b"[1, 2"), 400)
    mine = await hall.ticket("me")
    problem(await client.post(f"{HALL}/tickets", headers=me, json={"group": "A"}), 409)  # one at a time
    problem(await client.get(f"{HALL}/tickets/{mine['id']}", headers=hall.citizen("nosy")), 404)
    problem(await client.post(f"{HALL}/windows/1/call-next", headers=me), 403)
    problem(await client.put(f"{HALL}/windows/3", headers=hall.staff, json={"skills": ["Z"]}), 400)
    for number in ("0", "-231482687700013425188929536", "99999999999999999999"):  # found by schemathesis
        assert (await client.put(f"{HALL}/windows/{number}", headers=hall.staff,
                                 json={"skills": ["A"]})).status_code in (400, 422)
        assert (await client.post(f"{HALL}/windows/{number}/close", headers=hall.staff)).status_code in (400, 422)
        assert (await client.post(f"{HALL}/windows/{number}/call-next",
                                  headers=hall.staff)).status_code in (400, 422)
    problem(await client.put(f"{HALL}/windows/3", headers=hall.staff, json={"skills": "A"}), 400)
    problem(await client.post(f"{HALL}/groups", headers=hall.staff, json={"code": "A", "name": "again"}), 409)
    problem(await client.post(f"{HALL}/groups", headers=hall.staff, json={"code": "A;--", "name": "x"}), 400)
    assert (await client.post(f"{HALL}/windows/1/close", headers=hall.staff)).status_code == 200
    problem(await hall.call(1), 409)  # closed
    problem(await client.post(f"{HALL}/tickets", headers=hall.citizen("late"), json={"group": "A"}), 409)
    problem(await client.get("/api/hall/no-such-hall/board"), 404)
    assert (await client.get("/api/hall/bad%20name/board")).status_code == 422 or \
        (await client.get("/api/hall/bad%20name/board")).status_code == 400


async def test_plan_endpoint_and_bad_plans(client: httpx.AsyncClient, app: Any) -> None:
    hall = Hall(app, client)
    await hall.set_up({1: ["A"]})
    planned = await client.post(f"{HALL}/plan", headers=hall.staff,
                                json={"arrivalsPerHour": [10, 30, 10], "handlingMinutes": 6})
    assert planned.status_code == 200, planned.text
    body = planned.json()
    assert [h["hour"] for h in body["hours"]] == ["09:00", "10:00", "11:00"]
    assert body["simulated"]["meanWait"] <= 10 and body["simulated"]["p90Wait"] <= 20
    assert body["simulated"]["windowHours"] <= body["static"]["windowHours"]
    for bad in ({"arrivalsPerHour": []}, {"arrivalsPerHour": [-1]}, {"arrivalsPerHour": ["x"]},
                {"arrivalsPerHour": [1] * 25}, {"arrivalsPerHour": [5], "handlingMinutes": 0},
                {"arrivalsPerHour": [0, 0]}):
        problem(await client.post(f"{HALL}/plan", headers=hall.staff, json=bad), 400)
    problem(await client.post(f"{HALL}/plan", headers=hall.citizen("c"), json={"arrivalsPerHour": [5]}), 403)


def test_erlang_c_matches_the_textbook() -> None:
    # M/M/2 with one Erlang: P(wait) = 1/3, mean wait = 1/3 × s / (c − a) = 2 minutes for 6-minute service.
    assert abs(planning.erlang_c(2, 1.0) - 1 / 3) < 1e-12
    assert abs(planning.mean_wait(2, 1 / 6, 6.0) - 2.0) < 1e-12
    assert planning.mean_wait(2, 2 / 6, 6.0) == float("inf")
    # The simulation agrees with Erlang C on a stationary queue (long run, loose bound).
    rate_per_hour, service = 40.0, 6.0
    windows = planning.windows_for(rate_per_hour, service)
    result = planning.simulate_day([rate_per_hour] * 8, service, [windows] * 8, seed=3, days=20)
    expected = planning.mean_wait(windows, rate_per_hour / 60, service)
    assert abs(result.mean_wait - expected) < max(1.0, 0.5 * expected)


async def test_a_window_desk_sees_its_ticket_queue_and_counts(client: httpx.AsyncClient, app: Any) -> None:
    hall = Hall(app, client)
    await hall.set_up({1: ["A"], 2: ["B"]})
    first = await hall.ticket("w1")
    await hall.ticket("w2")
    state = (await client.get(f"{HALL}/windows/1", headers=hall.staff)).json()
    assert (state["open"], state["skills"], state["current"], state["waiting"]) == (True, ["A"], None, 2)
    assert (await hall.call(1)).status_code == 200
    assert (await hall.advance(first["id"], "noshow")).status_code == 200
    await hall.call(1)
    state = (await client.get(f"{HALL}/windows/1", headers=hall.staff)).json()
    assert state["current"]["number"] == "A002" and "person" not in state["current"]
    assert (state["waiting"], state["noShowsToday"], state["doneToday"]) == (0, 1, 0)
    problem(await client.get(f"{HALL}/windows/9", headers=hall.staff), 404)
    problem(await client.get(f"{HALL}/windows/1", headers=hall.citizen("w1")), 403)
    assert (await client.get(f"{HALL}/windows/0", headers=hall.staff)).status_code in (400, 422)


async def test_citizens_see_their_own_tickets_with_the_wait(client: httpx.AsyncClient,
                                                            anon_client: httpx.AsyncClient, app: Any) -> None:
    hall = Hall(app, client)
    await hall.set_up({1: ["A"]})
    await hall.ticket("m0")
    mine = await hall.ticket("m1")
    listed = (await client.get(f"{HALL}/tickets/mine", headers=hall.citizen("m1"))).json()
    assert [t["id"] for t in listed] == [mine["id"]] and listed[0]["prediction"]["ahead"] == 1
    assert "person" not in listed[0]
    assert (await client.get(f"{HALL}/tickets/mine", headers=hall.citizen("m2"))).json() == []
    problem(await anon_client.get(f"{HALL}/tickets/mine"), 401)
    assert (await client.get(f"{HALL}/tickets/mine", headers=hall.staff)).json() == []   # staff hold no online ones
