"""Emergency pre-emption runs live in the database: a second app instance on the same database (another API
worker, or the same one after a restart) lists the run the first one took, and finished runs are kept with
their timings for `PREEMPTION_HISTORY`. On both backends."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from auth_tokens import Auth
from cityos.app import create_app
from cityos.config import Settings
from cityos.core import clock
from cityos.traffic.service import PREEMPTION_HISTORY
from problem_details import problem

T0 = dt.datetime(2026, 3, 2, 0, 0, tzinfo=dt.UTC)
PLAN = {"phases": [{"state": "GGrr", "minGreen": 5, "maxGreen": 60, "fixedGreen": 30},
                   {"state": "rrGG", "minGreen": 5, "maxGreen": 60, "fixedGreen": 30}],
        "yellow": 3, "allRed": 2, "conflicts": [[0, 2], [0, 3], [1, 2], [1, 3]]}
RUN = {"vehicle": "120-急救-07", "incident": "7", "speed": 12.0,
       "signals": [{"signal": "tl-a", "phase": 1, "distance": 900}, {"signal": "tl-b", "phase": 1, "distance": 1500}]}


@pytest.fixture
async def other_worker(client: httpx.AsyncClient, settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """A second, fresh app instance on the session app's database: it has seen nothing the first one did."""
    second = create_app(settings)
    async with second.router.lifespan_context(second):
        headers = Auth(second).headers("sys_admin", username="test-admin-2")
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=second), base_url="http://cityos.test",
                                     headers=headers) as http:
            yield http


async def test_a_run_taken_by_one_worker_is_listed_by_another(client: httpx.AsyncClient,
                                                              other_worker: httpx.AsyncClient,
                                                              moving_clock: list[dt.datetime]) -> None:
    for name in ("tl-a", "tl-b"):
        created = await client.post("/api/traffic/signals", json={"id": name, "plan": PLAN})
        assert created.status_code == 201, created.text
    assert (await other_worker.get("/api/traffic/preemptions")).json() == []
    taken = await client.post("/api/traffic/preemptions", json=RUN)
    assert taken.status_code == 200, taken.text

    first = (await client.get("/api/traffic/preemptions")).json()
    second = (await other_worker.get("/api/traffic/preemptions")).json()
    assert first == second  # both workers answer the same, in the shape the cockpit reads
    [run] = second
    assert set(run) == {"vehicle", "incident", "speed", "signals", "updatedAt"}
    assert (run["vehicle"], run["incident"], run["speed"]) == ("120-急救-07", "7", 12.0)
    assert run["signals"] == [{"signal": "tl-a", "outcome": "later", "eta": 75.0},
                              {"signal": "tl-b", "outcome": "later", "eta": 125.0}]
    assert run["updatedAt"] == clock.iso(T0)

    # The vehicle's next report reaches the other worker: the same run goes on (one run, two reports).
    moving_clock[0] = T0 + dt.timedelta(seconds=60)
    closer = {**RUN, "signals": [{"signal": "tl-a", "phase": 1, "distance": 150},
                                 {"signal": "tl-b", "phase": 1, "distance": 750}]}
    answer = (await other_worker.post("/api/traffic/preemptions", json=closer)).json()
    assert [s["outcome"] for s in answer["signals"]] == ["applied", "later"]
    [run] = (await client.get("/api/traffic/preemptions")).json()
    assert run["signals"][0]["outcome"] == "applied" and run["updatedAt"] == clock.iso(moving_clock[0])
    assert (await client.get("/api/traffic/signals/tl-a")).json()["phase"] == 1  # commanded by the other

    # Two minutes without a report: over for both workers, and kept as history with its timings.
    moving_clock[0] = T0 + dt.timedelta(seconds=60 + 121)
    assert (await client.get("/api/traffic/preemptions")).json() == []
    assert (await other_worker.get("/api/traffic/preemptions")).json() == []
    [done] = (await other_worker.get("/api/traffic/preemptions", params={"finished": "true"})).json()
    assert done["startedAt"] == clock.iso(T0) and done["endedAt"] == clock.iso(T0 + dt.timedelta(seconds=60))
    assert done["seconds"] == 60.0 and done["reports"] == 2 and done["vehicle"] == "120-急救-07"

    # A report after the gap starts a new run; the finished one stays listed.
    await client.post("/api/traffic/preemptions", json=RUN)
    assert len((await other_worker.get("/api/traffic/preemptions")).json()) == 1
    assert len((await client.get("/api/traffic/preemptions", params={"finished": "true"})).json()) == 1

    # Finished runs older than the history are pruned when a run starts.
    moving_clock[0] = moving_clock[0] + PREEMPTION_HISTORY + dt.timedelta(hours=1)
    await other_worker.post("/api/traffic/preemptions", json={**RUN, "vehicle": "fire-9"})
    assert [r["vehicle"] for r in (await client.get("/api/traffic/preemptions")).json()] == ["fire-9"]
    assert (await client.get("/api/traffic/preemptions", params={"finished": "true"})).json() == []


async def test_the_run_list_refuses_bad_queries_and_callers(client: httpx.AsyncClient,
                                                          anon_client: httpx.AsyncClient, app: Any) -> None:
    for params in ({"finished": "maybe"}, {"limit": 0}, {"limit": 1001}, {"limit": "x"}):
        response = await client.get("/api/traffic/preemptions", params=params)
        assert response.status_code in (400, 422), response.text
    problem(await anon_client.get("/api/traffic/preemptions", params={"finished": "true"}), 401)
    citizen = Auth(app).headers("citizen", username="c1")
    problem(await client.get("/api/traffic/preemptions", params={"finished": "true"}, headers=citizen), 403)
    auditor = Auth(app).headers("auditor", username="a1")
    assert (await client.get("/api/traffic/preemptions", params={"finished": "true"}, headers=auditor)).json() == []
    # A refused report (unknown signal) records no run.
    problem(await client.post("/api/traffic/preemptions", json=RUN), 404)
    assert (await client.get("/api/traffic/preemptions")).json() == []
