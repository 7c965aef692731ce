"""Appointments (预约) on both backends: schedules and slots, exact capacity under concurrency,
waiting lists, rescheduling, the no-show rule, reminders, and every refusal."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import httpx
import pytest

from auth_tokens import Auth
from cityos.core import clock
from cityos.core.messages import city_zone
from problem_details import problem

API = "/api/appointments"


def tomorrow() -> dt.date:
    return clock.now().astimezone(city_zone()).date() + dt.timedelta(days=1)


class People:
    """Signed tokens for the staff of the health department and for citizens."""

    def __init__(self, app: Any) -> None:
        self.auth = Auth(app)
        self.staff = self.auth.headers("official", department="health", username="nurse")
        self.other_staff = self.auth.headers("official", department="transport", username="clerk")

    def citizen(self, user_id: str) -> dict[str, str]:
        return self.auth.headers("citizen", user_id=user_id, username=user_id)


async def make_site(client: httpx.AsyncClient, people: People, capacity: int = 1, slots_per_day: int = 10,
                    day: dt.date | None = None) -> tuple[str, list[dict[str, Any]]]:
    created = await client.post(f"{API}/schedules", headers=people.staff, json={
        "kind": "hospital", "site": "市第一人民医院", "service": "心内科", "actor": "王医生", "department": "health"})
    assert created.status_code == 201, created.text
    schedule_id = created.json()["id"]
    first = day or tomorrow()
    last_start = (dt.datetime(2000, 1, 1, 8, 0) + dt.timedelta(minutes=30 * (slots_per_day - 1))).time()
    added = await client.post(f"{API}/schedules/{schedule_id}/slots", headers=people.staff, json={
        "from": first.isoformat(), "to": first.isoformat(), "firstStart": "08:00",
        "lastStart": last_start.isoformat(timespec="minutes"), "minutes": 30, "capacity": capacity,
        "weekdaysOnly": False})
    assert added.status_code == 201, added.text
    assert added.json() == {"created": slots_per_day, "skipped": 0}
    slots = (await client.get(f"{API}/slots", params={"scheduleId": schedule_id})).json()
    return schedule_id, slots


async def test_slots_are_city_time_and_public(client: httpx.AsyncClient, anon_client: httpx.AsyncClient,
                                              app: Any) -> None:
    people = People(app)
    schedule_id, slots = await make_site(client, people)
    assert len(slots) == 10
    first = clock.parse_iso(slots[0]["start"]).astimezone(city_zone())
    assert (first.hour, first.minute) == (8, 0) and first.date() == tomorrow()
    assert slots[0]["free"] == 1 and slots[0]["status"] == "free"
    public = await anon_client.get(f"{API}/schedules")
    assert public.status_code == 200 and [s["id"] for s in public.json()] == [schedule_id]
    # Adding the same series again creates nothing new.
    again = await client.post(f"{API}/schedules/{schedule_id}/slots", headers=people.staff, json={
        "from": tomorrow().isoformat(), "to": tomorrow().isoformat(), "firstStart": "08:00", "lastStart": "12:30",
        "minutes": 30, "capacity": 1, "weekdaysOnly": False})
    assert again.json() == {"created": 0, "skipped": 10}


async def test_two_hundred_concurrent_bookings_for_ten_slots_give_ten(client: httpx.AsyncClient,
                                                                      app: Any) -> None:
    people = People(app)
    _, slots = await make_site(client, people, capacity=1, slots_per_day=10)

    async def attempt(n: int) -> int:
        slot = slots[n % len(slots)]
        response = await client.post(f"{API}/appointments", headers=people.citizen(f"c{n}"),
                                     json={"slotId": slot["id"]})
        return response.status_code

    codes = await asyncio.gather(*(attempt(n) for n in range(200)))
    assert codes.count(201) == 10 and codes.count(409) == 190, sorted(set(codes))
    after = (await client.get(f"{API}/slots", params={"scheduleId": slots[0]["scheduleId"]})).json()
    assert all(s["booked"] == 1 and s["free"] == 0 and s["status"] == "busy" for s in after)
    listed = (await client.get(f"{API}/schedules/{slots[0]['scheduleId']}/appointments",
                               headers=people.staff)).json()
    assert len(listed) == 10 and len({a["slotId"] for a in listed}) == 10


async def test_booking_refusals(client: httpx.AsyncClient, anon_client: httpx.AsyncClient, app: Any) -> None:
    people = People(app)
    schedule_id, slots = await make_site(client, people, capacity=2, slots_per_day=2)
    me = people.citizen("alice")
    problem(await anon_client.post(f"{API}/appointments", json={"slotId": slots[0]["id"]}), 401)
    problem(await client.post(f"{API}/appointments", headers=me, json={"slotId": "nope"}), 404)
    problem(await client.post(f"{API}/appointments", headers=me, json={"slotId": 42}), 400)
    problem(await client.post(f"{API}/appointments", headers=me, json={}), 400)
    problem(await client.post(f"{API}/appointments", headers={**me, "Content-Type": "application/json"},
                              content=b"{not json"), 400)
    problem(await client.post(f"{API}/appointments", headers=me, json={"slotId": slots[0]["id"],
                                                                       "note": "x" * 1001}), 400)
    problem(await client.post(f"{API}/appointments", headers=me, json={"slotId": "' OR 1=1 --"}), 404)
    booked = await client.post(f"{API}/appointments", headers=me, json={"slotId": slots[0]["id"]})
    assert booked.status_code == 201
    duplicate = problem(await client.post(f"{API}/appointments", headers=me, json={"slotId": slots[0]["id"]}), 409)
    assert "already hold" in duplicate["detail"]
    # The duplicate did not take the second place.
    slot = (await client.get(f"{API}/slots", params={"scheduleId": schedule_id})).json()[0]
    assert slot["booked"] == 1 and slot["free"] == 1
    # Staff of another department cannot manage this site; citizens cannot create schedules.
    problem(await client.get(f"{API}/schedules/{schedule_id}/appointments", headers=people.other_staff), 403)
    problem(await client.post(f"{API}/schedules", headers=me, json={"kind": "hospital", "site": "x",
                                                                     "service": "y"}), 403)
    problem(await client.post(f"{API}/schedules", headers=people.staff, json={"kind": "spa", "site": "x",
                                                                               "service": "y"}), 400)
    problem(await client.post(f"{API}/schedules/{schedule_id}/slots", headers=people.staff, json={
        "from": "2026-13-01", "to": "2026-12-01", "firstStart": "08:00", "lastStart": "09:00"}), 400)
    problem(await client.post(f"{API}/schedules/{schedule_id}/slots", headers=people.staff, json={
        "from": "2026-01-01", "to": "2030-01-01", "firstStart": "00:00", "lastStart": "23:00", "minutes": 5,
        "weekdaysOnly": False}), 400)
    # Someone else's appointment is not readable by another citizen.
    problem(await client.get(f"{API}/appointments/{booked.json()['id']}", headers=people.citizen("bob")), 403)


async def test_past_slot_is_refused(client: httpx.AsyncClient, app: Any) -> None:
    people = People(app)
    _, slots = await make_site(client, people, slots_per_day=1)
    later = clock.parse_iso(slots[0]["start"]) + dt.timedelta(minutes=1)
    clock.set_clock(lambda: later)
    try:
        body = problem(await client.post(f"{API}/appointments", headers=people.citizen("late"),
                                         json={"slotId": slots[0]["id"]}), 400)
        assert "already started" in body["detail"]
    finally:
        clock.reset_clock()


async def test_cancel_gives_the_place_to_the_waiting_list(client: httpx.AsyncClient, app: Any) -> None:
    people = People(app)
    schedule_id, slots = await make_site(client, people, slots_per_day=1)
    first = await client.post(f"{API}/appointments", headers=people.citizen("ann"), json={"slotId": slots[0]["id"]})
    assert first.status_code == 201
    problem(await client.post(f"{API}/appointments", headers=people.citizen("ben"),
                              json={"slotId": slots[0]["id"]}), 409)
    waiting = await client.post(f"{API}/waitlist", headers=people.citizen("ben"),
                                json={"scheduleId": schedule_id, "day": tomorrow().isoformat()})
    assert waiting.status_code == 201 and waiting.json()["position"] == 1
    problem(await client.post(f"{API}/waitlist", headers=people.citizen("ben"),
                              json={"scheduleId": schedule_id, "day": tomorrow().isoformat()}), 409)
    problem(await client.post(f"{API}/waitlist", headers=people.citizen("ben"),
                              json={"scheduleId": schedule_id, "day": "2000-01-01"}), 400)
    # Ben may not cancel Ann's appointment.
    problem(await client.post(f"{API}/appointments/{first.json()['id']}/cancel", headers=people.citizen("ben")), 403)
    cancelled = await client.post(f"{API}/appointments/{first.json()['id']}/cancel", headers=people.citizen("ann"),
                                  json={"reason": "出差"})
    assert cancelled.status_code == 200, cancelled.text
    promoted_id = cancelled.json()["promotedFromWaitlist"]
    assert promoted_id
    bens = (await client.get(f"{API}/appointments/mine", headers=people.citizen("ben"))).json()
    assert [(a["id"], a["status"], a["fromWaitlist"]) for a in bens] == [(promoted_id, "booked", True)]
    inbox = (await client.get("/api/services/notifications", headers=people.citizen("ben"))).json()
    assert any("候补成功" in m["subject"] for m in inbox["items"])
    problem(await client.post(f"{API}/appointments/{first.json()['id']}/cancel", headers=people.citizen("ann")), 409)
    slot = (await client.get(f"{API}/slots", params={"scheduleId": schedule_id})).json()[0]
    assert slot["booked"] == 1


async def test_reschedule_moves_the_place(client: httpx.AsyncClient, app: Any) -> None:
    people = People(app)
    schedule_id, slots = await make_site(client, people, slots_per_day=2)
    me = people.citizen("carl")
    booked = (await client.post(f"{API}/appointments", headers=me, json={"slotId": slots[0]["id"]})).json()
    moved = await client.post(f"{API}/appointments/{booked['id']}/reschedule", headers=me,
                              json={"slotId": slots[1]["id"]})
    assert moved.status_code == 200, moved.text
    assert moved.json()["replaces"] == booked["id"] and moved.json()["slotId"] == slots[1]["id"]
    after = {s["id"]: s["booked"] for s in (await client.get(f"{API}/slots",
                                                             params={"scheduleId": schedule_id})).json()}
    assert after == {slots[0]["id"]: 0, slots[1]["id"]: 1}
    # A full target slot leaves the booking as it was.
    other = await client.post(f"{API}/appointments", headers=people.citizen("dora"), json={"slotId": slots[0]["id"]})
    assert other.status_code == 201
    problem(await client.post(f"{API}/appointments/{moved.json()['id']}/reschedule", headers=me,
                              json={"slotId": slots[0]["id"]}), 409)
    mine = (await client.get(f"{API}/appointments/mine", headers=me)).json()
    assert {(a["slotId"], a["status"]) for a in mine} == {(slots[1]["id"], "booked"), (slots[0]["id"], "cancelled")}


async def test_no_shows_suspend_online_booking(client: httpx.AsyncClient, app: Any) -> None:
    people = People(app)
    _, slots = await make_site(client, people, slots_per_day=4)
    me = people.citizen("eve")
    ids = [(await client.post(f"{API}/appointments", headers=me, json={"slotId": s["id"]})).json()["id"]
           for s in slots[:3]]
    problem(await client.post(f"{API}/appointments/{ids[0]}/outcome", headers=people.staff,
                              json={"status": "noshow"}), 400)  # not started yet
    after_all = clock.parse_iso(slots[2]["start"]) + dt.timedelta(minutes=5)
    clock.set_clock(lambda: after_all)
    try:
        for appointment_id in ids:
            marked = await client.post(f"{API}/appointments/{appointment_id}/outcome", headers=people.staff,
                                       json={"status": "noshow"})
            assert marked.status_code == 200, marked.text
        problem(await client.post(f"{API}/appointments/{ids[0]}/outcome", headers=people.staff,
                                  json={"status": "fulfilled"}), 409)
        problem(await client.post(f"{API}/appointments/{ids[0]}/outcome", headers=people.staff,
                                  json={"status": "lost"}), 400)
        problem(await client.post(f"{API}/appointments/{ids[0]}/outcome", headers=me,
                                  json={"status": "fulfilled"}), 403)
        body = problem(await client.post(f"{API}/appointments", headers=me, json={"slotId": slots[3]["id"]}), 403)
        assert "suspended until" in body["detail"]
    finally:
        clock.reset_clock()


async def test_reminders_go_once_a_day_before(client: httpx.AsyncClient, app: Any) -> None:
    people = People(app)
    _, slots = await make_site(client, people, slots_per_day=1)
    me = people.citizen("fay")
    assert (await client.post(f"{API}/appointments", headers=me, json={"slotId": slots[0]["id"]})).status_code == 201
    service = app.state.appointments
    early = clock.parse_iso(slots[0]["start"]) - dt.timedelta(hours=30)
    clock.set_clock(lambda: early)
    try:
        assert await service.send_reminders() == 0
    finally:
        clock.reset_clock()
    due = clock.parse_iso(slots[0]["start"]) - dt.timedelta(hours=2)
    clock.set_clock(lambda: due)
    try:
        assert await service.send_reminders() == 1
        assert await service.send_reminders() == 0
    finally:
        clock.reset_clock()
    inbox = (await client.get("/api/services/notifications", headers=me)).json()
    reminder = next(m for m in inbox["items"] if m["subject"].startswith("预约提醒"))
    assert "08:00" in reminder["body"] and "心内科" in reminder["body"]


@pytest.mark.parametrize("path", [f"{API}/schedules/nope", f"{API}/slots?from=yesterday",
                                  f"{API}/schedules/nope/appointments"])
async def test_unknown_and_malformed_reads(client: httpx.AsyncClient, path: str) -> None:
    response = await client.get(path)
    assert response.status_code in (400, 404), response.text
    assert {"type", "title", "detail"} <= set(response.json())
