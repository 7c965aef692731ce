"""Spending transparency (阳光政务) on both backends: a department publishes and corrects its budget lines,
anyone reads totals and execution rates, the hub holds `BudgetExecution` entities, and every refusal."""

from __future__ import annotations

from typing import Any

import httpx

from auth_tokens import Auth
from problem_details import problem

API = "/api/transparency"
LINES = [{"year": 2026, "category": "基本支出", "budget": 12_000_000, "spent": 9_600_000},
         {"year": 2026, "category": "项目支出", "budget": 8_000_000, "spent": 2_000_000},
         {"year": 2025, "category": "基本支出", "budget": 11_000_000, "spent": 10_890_000}]


async def test_publish_correct_and_read_totals(client: httpx.AsyncClient, anon_client: httpx.AsyncClient,
                                              app: Any) -> None:
    finance = Auth(app).headers("official", department="civil-affairs", username="budget-officer")
    published = await client.put(f"{API}/departments/civil-affairs/lines", headers=finance, json=LINES)
    assert published.status_code == 200, published.text
    assert published.json() == {"department": "civil-affairs", "lines": 3, "years": [2025, 2026]}
    totals = (await anon_client.get(f"{API}/totals", params={"year": 2026})).json()
    assert totals == [{"department": "civil-affairs", "year": 2026, "budget": 20_000_000.0, "spent": 11_600_000.0,
                       "executionRate": 58.0, "lines": 2}]
    # A correction replaces the line; nothing is counted twice.
    corrected = await client.put(f"{API}/departments/civil-affairs/lines", headers=finance,
                                 json=[{"year": 2026, "category": "项目支出", "budget": 8_000_000, "spent": 6_000_000}])
    assert corrected.status_code == 200
    totals = (await anon_client.get(f"{API}/totals", params={"year": 2026})).json()
    assert totals[0]["spent"] == 15_600_000.0 and totals[0]["executionRate"] == 78.0
    lines = (await anon_client.get(f"{API}/departments/civil-affairs/lines", params={"year": 2026})).json()
    assert [(line["category"], line["spent"]) for line in lines] == [("基本支出", 9_600_000.0),
                                                                     ("项目支出", 6_000_000.0)]
    hub = await anon_client.get("/ngsi-ld/v1/entities/urn:ngsi-ld:BudgetExecution:civil-affairs:2026")
    assert hub.status_code == 200, hub.text
    assert hub.json()["executionRate"]["value"] == 78.0


async def test_transparency_refusals(client: httpx.AsyncClient, anon_client: httpx.AsyncClient, app: Any) -> None:
    auth = Auth(app)
    finance = auth.headers("official", department="civil-affairs", username="budget-officer")
    problem(await client.put(f"{API}/departments/transport/lines", headers=finance, json=LINES), 403)
    problem(await client.put(f"{API}/departments/civil-affairs/lines",
                             headers=auth.headers("citizen", username="c"), json=LINES), 403)
    problem(await anon_client.put(f"{API}/departments/civil-affairs/lines", json=LINES), 401)
    for bad in ([], {"year": 2026}, [{"year": 1999, "category": "x", "budget": 1, "spent": 1}],
                [{"year": 2026, "category": "", "budget": 1, "spent": 1}],
                [{"year": 2026, "category": "x", "budget": -1, "spent": 1}],
                [{"year": 2026, "category": "x", "budget": "1", "spent": 1}],
                [{"year": 2026, "category": "x", "budget": 1e20, "spent": 1}],
                [LINES[0], LINES[0]], [LINES[0]] * 501):
        problem(await client.put(f"{API}/departments/civil-affairs/lines", headers=finance, json=bad), 400)
    problem(await client.put(f"{API}/departments/civil-affairs/lines",
                             headers={**finance, "Content-Type": "application/json"}, content=b"[{"), 400)
    problem(await client.put(f"{API}/departments/x%27%20OR%201%3D1/lines", headers=finance, json=LINES), 400)
    problem(await anon_client.get(f"{API}/departments/nobody/lines"), 404)
    assert (await anon_client.get(f"{API}/totals", params={"year": 1900})).status_code in (400, 422)
    assert (await anon_client.get(f"{API}/totals")).json() == []  # nothing was stored by the refusals
