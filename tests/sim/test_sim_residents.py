"""The demo's simulated residents use the 一网协同 services for real (both backends): after some steps there are
bookings, served tickets, deposits with points, votes and repairs — through the same rules as the API."""

from __future__ import annotations

from typing import Any

import httpx

from cityos.sim import residents


async def test_residents_fill_the_services(client: httpx.AsyncClient, app: Any) -> None:
    await residents.seed(app)
    await residents.seed(app)  # a restarted demo seeds again without duplicating or failing
    activity = residents.ResidentsActivity(app, 7)
    for _ in range(150):
        await activity.step()
    state = app.state
    schedules = await state.appointments.list_schedules(None, "")
    assert len(schedules) == 2
    board = await state.hall.board(None, "", residents.HALL)
    assert board["calls"], "the windows called tickets"
    stats = await state.waste.stats("", residents.COMMUNITY, 1)
    assert stats and stats[0]["deposits"] > 0 and stats[0]["participation"] > 0
    proposals = await state.council.proposals(None, "", residents.COMMUNITY)
    assert len(proposals) == 1
    booked = sum([len(await state.appointments.for_schedule(residents.HEALTH, "", s["id"])) for s in schedules])
    assert booked > 0
    repairs = await state.community.list_repairs(residents.OFFICE, "", residents.COMMUNITY, False)
    assert repairs and any(r["status"] != "reported" for r in repairs), "the office works the repair orders"
    (notice,) = await state.community.list_notices(residents.OFFICE, "", residents.COMMUNITY)
    assert notice["readCount"] > 0, "residents read the notice"
    assert await state.council.comments_of(None, "", proposals[0]["id"])
    public = await client.get(f"/api/hall/{residents.HALL}/board")
    assert public.status_code == 200 and "sim-resident" not in public.text
