"""SLA clocks on the injectable clock: defaults, yellow at 80 %, breach → escalation, policies, reports."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import httpx
from ops_incidents_helpers import BASE, D1, Clock, act, create

from cityos.core import clock


def _minutes(incident: dict[str, Any], key: str) -> float:
    due = clock.parse_iso(incident["sla"][key])
    return (due - clock.parse_iso(incident["reportedAt"])).total_seconds() / 60


async def test_default_deadlines_follow_the_city_plans(client: httpx.AsyncClient, auth: Any, districts: list[str],
                                                       fixed_clock: Clock) -> None:
    operator = auth.headers("operator")
    expected = [("fire", "general", 3), ("environment.air", "general", 30), ("environment.water", "major", 30),
                ("pothole", "general", 24 * 60), ("pothole", "large", 12 * 60), ("pothole", "major", 6 * 60),
                ("pothole", "especially_major", 3 * 60), ("device.offline", "major", 30)]
    for category, level, response in expected:
        incident = (await create(client, operator, category=category, level=level))["incident"]
        assert _minutes(incident, "responseDue") == response, (category, level)
    fault = (await create(client, operator, category="streetlight"))["incident"]
    assert _minutes(fault, "resolutionDue") == 120  # general faults fixed within 2 h


async def test_yellow_then_breach_escalates(app: Any, client: httpx.AsyncClient, auth: Any, districts: list[str],
                                            fixed_clock: Clock, service: Any) -> None:
    operator = auth.headers("operator")
    events: list[tuple[str, dict[str, Any]]] = []

    async def listen(event: Any) -> None:
        events.append((event.topic, event.payload))

    unsubscribe = [app.state.bus.subscribe(topic, listen) for topic in ("ops.incident.sla", "ops.incident.escalated")]
    try:
        incident = (await create(client, operator, category="environment.air", title="Smoke"))["incident"]
        ident = incident["id"]
        result = await service.tick(fixed_clock.advance(minutes=23))  # < 80 % of 30 min
        assert result.yellow == 0
        result = await service.tick(fixed_clock.advance(minutes=1, seconds=1))  # 24 min 1 s: yellow
        assert result.yellow == 1 and result.breached == 0
        current = (await client.get(f"{BASE}/{ident}", headers=operator)).json()
        assert current["sla"]["responseState"] == "yellow" and current["sla"]["state"] == "yellow"
        assert (await service.tick(fixed_clock.at)).yellow == 0  # idempotent
        result = await service.tick(fixed_clock.advance(minutes=6))  # 30 min 1 s: breached
        assert result.breached == 1 and result.escalated == [ident]
        current = (await client.get(f"{BASE}/{ident}", headers=operator)).json()
        assert current["level"] == "large" and current["escalations"] == 1
        assert current["sla"]["responseState"] == "breached"
        steps = [s for s in current["timeline"] if s["action"] == "escalate"]
        assert steps and steps[0]["detail"]["level"] == {"from": "general", "to": "large"}
        assert [t for t, _ in events] == ["ops.incident.sla", "ops.incident.escalated"]
        assert events[1][1]["incident"]["id"] == ident and events[1][1]["clock"] == "response"
        assert (await service.tick(fixed_clock.advance(hours=1))).breached == 0  # once only
        # a late response stays breached
        await act(client, operator, ident, "dispatch")
        accepted = await act(client, operator, ident, "accept")
        assert accepted["sla"]["responseState"] == "breached"
    finally:
        for off in unsubscribe:
            off()


async def test_response_in_time_is_met(client: httpx.AsyncClient, auth: Any, districts: list[str],
                                       fixed_clock: Clock, service: Any) -> None:
    operator = auth.headers("operator")
    ident = (await create(client, operator, category="fire", title="Smoke"))["incident"]["id"]
    fixed_clock.advance(minutes=1)
    await act(client, operator, ident, "dispatch")
    fixed_clock.advance(minutes=1)
    accepted = await act(client, operator, ident, "accept")
    assert accepted["sla"]["responseState"] == "met"
    result = await service.tick(fixed_clock.advance(minutes=5))
    assert result.breached == 0


async def test_resolved_incident_closes_automatically(client: httpx.AsyncClient, auth: Any, districts: list[str],
                                                      fixed_clock: Clock, service: Any) -> None:
    operator = auth.headers("operator")
    ident = (await create(client, operator))["incident"]["id"]
    for step in ("dispatch", "accept", "arrive", "resolve"):
        await act(client, operator, ident, step)
    assert (await service.tick(fixed_clock.advance(hours=71))).closed == 0
    assert (await service.tick(fixed_clock.advance(hours=2))).closed == 1
    closed = (await client.get(f"{BASE}/{ident}", headers=operator)).json()
    assert closed["status"] == "closed"
    assert closed["timeline"][-1]["actor"] == "system" and closed["timeline"][-1]["detail"]["automatic"] is True


async def test_reporter_confirmation_closes_or_reopens(client: httpx.AsyncClient, auth: Any, service: Any,
                                                       districts: list[str]) -> None:
    from cityos.ops.incidents.core import NewIncident

    citizen_id = "citizen-42"
    citizen = auth.headers("citizen", user_id=citizen_id)
    operator = auth.headers("operator")
    created = await service.create("", NewIncident(category="pothole", title="hole", source="open311",
                                                   reporter_id=citizen_id))
    ident = created.incident["id"]
    assert (await client.get(f"{BASE}/{ident}", headers=citizen)).status_code == 200  # own report
    assert (await client.get(BASE, headers=citizen)).json()["total"] == 1
    assert (await client.get(BASE, headers=auth.headers("citizen"))).json()["total"] == 0
    for step in ("dispatch", "accept", "arrive", "resolve"):
        await act(client, operator, ident, step)
    stranger = auth.headers("citizen")
    response = await client.post(f"{BASE}/{ident}/confirm", headers=stranger, json={"satisfied": True})
    assert response.status_code == 403
    response = await client.post(f"{BASE}/{ident}/confirm", headers=citizen, json={"satisfied": "yes"})
    assert response.status_code == 400
    reopened = (await client.post(f"{BASE}/{ident}/confirm", headers=citizen,
                                  json={"satisfied": False, "note": "still there"})).json()
    assert reopened["status"] == "reopened"
    for step in ("dispatch", "accept", "arrive", "resolve"):
        await act(client, operator, ident, step)
    closed = (await client.post(f"{BASE}/{ident}/confirm", headers=citizen, json={"satisfied": True})).json()
    assert closed["status"] == "closed"
    response = await client.post(f"{BASE}/{ident}/confirm", headers=citizen, json={"satisfied": True})
    assert response.status_code == 409


async def test_policies_api(client: httpx.AsyncClient, auth: Any, districts: list[str], fixed_clock: Clock) -> None:
    operator = auth.headers("operator")
    listed = (await client.get(f"{BASE}/sla/policies", headers=operator)).json()
    assert {"category": "fire*", "level": "*", "responseMinutes": 3.0, "resolutionMinutes": 240.0,
            "source": "default", "id": None} in listed
    body = {"category": "pothole", "level": "*", "responseMinutes": 45, "resolutionMinutes": 600}
    policy = (await client.put(f"{BASE}/sla/policies", headers=operator, json=body)).json()
    assert policy["source"] == "custom" and policy["responseMinutes"] == 45
    incident = (await create(client, operator))["incident"]
    assert _minutes(incident, "responseDue") == 45 and _minutes(incident, "resolutionDue") == 600
    updated = (await client.put(f"{BASE}/sla/policies", headers=operator, json={**body, "responseMinutes": 50})).json()
    assert updated["id"] == policy["id"]
    official = auth.headers("official", department="transport")
    assert (await client.put(f"{BASE}/sla/policies", headers=official, json=body)).status_code == 403
    for bad in ({**body, "responseMinutes": -1}, {**body, "responseMinutes": "soon"}, {**body, "level": "x"},
                {**body, "category": "Robert'); DROP TABLE--"}, {"category": "pothole"}):
        assert (await client.put(f"{BASE}/sla/policies", headers=operator, json=bad)).status_code == 400, bad
    assert (await client.delete(f"{BASE}/sla/policies/{policy['id']}", headers=operator)).status_code == 204
    assert (await client.delete(f"{BASE}/sla/policies/{policy['id']}", headers=operator)).status_code == 404
    assert (await client.delete(f"{BASE}/sla/policies/nope", headers=operator)).status_code == 404
    again = (await create(client, operator))["incident"]
    assert _minutes(again, "responseDue") == 24 * 60


async def test_sla_report(client: httpx.AsyncClient, auth: Any, districts: list[str], fixed_clock: Clock,
                          service: Any) -> None:
    operator = auth.headers("operator")
    start = fixed_clock.at
    in_time = (await create(client, operator, category="fire", title="a"))["incident"]["id"]
    late = (await create(client, operator, category="fire", title="b", location={
        "type": "Point", "coordinates": [110.35, 20.05]}))["incident"]["id"]
    pending = (await create(client, operator, category="pothole", title="c"))["incident"]["id"]
    fixed_clock.advance(minutes=2)
    for ident in (in_time,):
        await act(client, operator, ident, "dispatch")
        await act(client, operator, ident, "accept")
    await service.tick(fixed_clock.advance(minutes=5))
    await act(client, operator, late, "dispatch")
    await act(client, operator, late, "accept")
    params = {"from": clock.iso(start - timedelta(minutes=1)), "to": clock.iso(fixed_clock.at + timedelta(minutes=1))}
    report = (await client.get(f"{BASE}/reports/sla", headers=operator, params=params)).json()
    assert report["total"]["incidents"] == 3
    assert report["total"]["response"] == {"met": 1, "breached": 1, "pending": 1, "compliance": 50.0}
    groups = {g["key"]: g for g in report["groups"]}
    assert groups["fire-rescue"]["response"]["compliance"] == 50.0
    assert groups["fire-rescue"]["meanResponseMinutes"] == (2 + 7) / 2
    assert groups["transport"]["response"]["compliance"] is None
    report_url = f"{BASE}/reports/sla"
    by_district = (await client.get(report_url, headers=operator, params={**params, "by": "district"})).json()
    assert {g["key"] for g in by_district["groups"]} == {D1, "(none)"}
    by_category = (await client.get(report_url, headers=operator, params={**params, "by": "category"})).json()
    assert {g["key"] for g in by_category["groups"]} == {"fire", "pothole"}
    fire = auth.headers("official", department="fire-rescue")
    scoped = (await client.get(f"{BASE}/reports/sla", headers=fire, params=params)).json()
    assert [g["key"] for g in scoped["groups"]] == ["fire-rescue"]
    assert pending
    for bad in ({"by": "weather"}, {"from": "yesterday"}, {"to": "2026-13-45T00:00:00Z"}):
        assert (await client.get(f"{BASE}/reports/sla", headers=operator, params=bad)).status_code == 400
    assert (await client.get(f"{BASE}/reports/sla", headers=auth.headers("citizen"))).status_code == 403
