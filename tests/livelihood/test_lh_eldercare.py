"""Elderly care: readings → alerts → the escalation chain on a moved clock, acknowledgement, 120 through
the hub and the incident domain, vitals for N minutes, inactivity, duplicates and bad input."""

from __future__ import annotations

from typing import Any

import httpx
from lh_support import BASE, born_years_ago, register
from sqlalchemy import select

from cityos.livelihood import models as m

CARE = f"{BASE}/care"
CHAIN = [{"role": "family", "userId": "u-son", "ackMinutes": 5}, {"role": "doctor", "userId": "u-doc", "ackMinutes": 5},
         {"role": "worker", "userId": "u-worker", "ackMinutes": 10}, {"role": "emergency", "ackMinutes": 5}]


async def _enrol(client: httpx.AsyncClient, subject: str = "P-ALONE", device: str = "wb-1") -> None:
    await register(client, subject, {"birth_date": born_years_ago(82), "hukou": "local"}, user_id=f"u-{subject}",
                   district="d-east")
    made = await client.put(f"{CARE}/people", json={"subject": subject, "devices": [device], "chain": CHAIN,
                                                    "workerId": "u-worker"})
    assert made.status_code == 200, made.text


async def _inbox(client: httpx.AsyncClient, auth: Any, user: str) -> list[str]:
    got = await client.get("/api/services/notifications", headers=auth.headers("citizen", user_id=user))
    return [n["subject"] for n in got.json()["items"]]


async def test_a_fall_walks_the_chain_until_someone_acknowledges(app: Any, client: httpx.AsyncClient, auth: Any,
                                                                moving_clock: Any) -> None:
    await _enrol(client)
    fall = {"device": "wb-1", "observedAt": moving_clock.at.isoformat(), "values": {"fallDetected": True,
                                                                                   "heartRate": 98}}
    raised = await client.post(f"{CARE}/readings", json=fall)
    assert raised.status_code == 200 and len(raised.json()["alerts"]) == 1
    assert (await client.post(f"{CARE}/readings", json=fall)).json()["alerts"] == []  # the same reading again
    alert_id = raised.json()["alerts"][0]
    assert "关爱告警:跌倒" in await _inbox(client, auth, "u-son")
    assert not any("体征" in s or "98" in s for s in await _inbox(client, auth, "u-son"))  # no health values
    care = app.state.livelihood_care
    moving_clock.advance(minutes=4)
    assert (await care.sweep())["escalated"] == 0
    moving_clock.advance(minutes=2)
    assert (await care.sweep())["escalated"] == 1
    assert "关爱告警:跌倒" in await _inbox(client, auth, "u-doc")
    stranger = await client.post(f"{CARE}/alerts/{alert_id}/ack", headers=auth.headers("citizen", user_id="u-x"))
    assert stranger.status_code == 404
    acked = await client.post(f"{CARE}/alerts/{alert_id}/ack", headers=auth.headers("citizen", user_id="u-doc"))
    assert acked.status_code == 200 and acked.json()["secondsToAcknowledge"] == 360
    again = await client.post(f"{CARE}/alerts/{alert_id}/ack", headers=auth.headers("citizen", user_id="u-doc"))
    assert again.status_code == 409
    moving_clock.advance(minutes=30)
    assert (await care.sweep())["escalated"] == 0
    roster = (await client.get(f"{CARE}/roster?mine=true", headers=auth.headers(
        "official", department="civil-affairs", districts=["d-east"], user_id="u-worker"))).json()
    [person] = roster["people"]
    [alert] = person["alerts"]
    assert alert["status"] == "acknowledged" and [s["role"] for s in alert["steps"]] == ["family", "doctor"]
    assert "userId" not in str(alert["steps"]) and "heartRate" not in str(roster)


async def test_unanswered_alert_reaches_120_through_the_incident_domain(app: Any, client: httpx.AsyncClient,
                                                                       auth: Any, moving_clock: Any) -> None:
    await _enrol(client)
    raised = await client.post(f"{CARE}/readings", json={"device": "wb-1", "values": {"sos": True}})
    [alert_id] = raised.json()["alerts"]
    care = app.state.livelihood_care
    for minutes in (5, 5, 10):
        moving_clock.advance(minutes=minutes, seconds=1)
        await care.sweep()
    async with app.state.engine.connect() as conn:
        row = (await conn.execute(select(m.care_alerts).where(m.care_alerts.c.id == alert_id))).one()
    assert row.status == "escalated-120" and [s["role"] for s in row.steps][-1] == "emergency"
    entity = await client.get(f"/ngsi-ld/v1/entities/urn:ngsi-ld:Alert:alarm-care-{alert_id}")
    assert entity.status_code == 200, entity.text
    assert "P-ALONE" not in entity.text
    incidents = await client.get("/api/ops/incidents", headers=auth.headers("operator"))
    assert any(i["category"] == "eldercare.emergency-120" for i in incidents.json()["items"]), incidents.text
    # Care staff of the district may still acknowledge after 120 was called.
    staff = auth.headers("official", department="civil-affairs", districts=["d-east"])
    assert (await client.post(f"{CARE}/alerts/{alert_id}/ack", headers=staff)).status_code == 200


async def test_vitals_gas_and_inactivity_rules(app: Any, client: httpx.AsyncClient, moving_clock: Any) -> None:
    await _enrol(client)
    low = {"device": "wb-1", "values": {"oxygenSaturation": 85}}
    assert (await client.post(f"{CARE}/readings", json=low)).json()["alerts"] == []
    moving_clock.advance(minutes=5)
    assert (await client.post(f"{CARE}/readings", json=low)).json()["alerts"] == []
    moving_clock.advance(minutes=6)
    assert len((await client.post(f"{CARE}/readings", json=low)).json()["alerts"]) == 1
    await client.post(f"{CARE}/readings", json={"device": "wb-1", "values": {"oxygenSaturation": 97}})
    moving_clock.advance(minutes=20)
    assert (await client.post(f"{CARE}/readings", json=low)).json()["alerts"] == []  # a new run starts
    gas = await client.post(f"{CARE}/readings", json={"device": "wb-1", "values": {"gasAlarm": True}})
    assert len(gas.json()["alerts"]) == 1
    care = app.state.livelihood_care
    moving_clock.advance(hours=11)
    assert (await care.sweep())["inactivity"] == 0
    moving_clock.advance(hours=1, minutes=1)  # 12 h quiet, but 22:32 in Shanghai: not checked at night
    assert (await care.sweep())["inactivity"] == 0
    moving_clock.advance(hours=10)  # 08:32 the next morning
    assert (await care.sweep())["inactivity"] == 1
    assert (await care.sweep())["inactivity"] == 0  # one alert per quiet spell


async def test_bad_care_input(client: httpx.AsyncClient, auth: Any, anon_client: httpx.AsyncClient,
                              moving_clock: Any) -> None:
    await _enrol(client)
    cases = [({"device": "nope", "values": {"sos": True}}, 404), ({"device": "wb-1", "values": {"sos": "yes"}}, 400),
             ({"device": "wb-1", "values": {"heartRate": 9999}}, 400), ({"device": "wb-1", "values": {}}, 400),
             ({"device": "wb-1", "values": {"mood": 1}}, 400), ([], 400),
             ({"device": "wb-1", "observedAt": "noon", "values": {"sos": True}}, 400)]
    for body, status in cases:
        sent = await client.post(f"{CARE}/readings", json=body)
        assert sent.status_code == status, (body, sent.text)
    bad_chains = [[], [{"role": "emergency"}, {"role": "family", "userId": "u"}], [{"role": "friend", "userId": "u"}],
                  [{"role": "family"}], [{"role": "family", "userId": "u", "ackMinutes": 0}]]
    for chain in bad_chains:
        sent = await client.put(f"{CARE}/people", json={"subject": "P-ALONE", "devices": [], "chain": chain})
        assert sent.status_code == 400, chain
    unknown = await client.put(f"{CARE}/people", json={"subject": "nobody", "devices": [], "chain": CHAIN})
    assert unknown.status_code == 404
    await register(client, "P-B", {"birth_date": born_years_ago(70)})
    taken = await client.put(f"{CARE}/people", json={"subject": "P-B", "devices": ["wb-1"], "chain": CHAIN})
    assert taken.status_code == 409
    assert (await anon_client.post(f"{CARE}/readings", json=cases[0][0])).status_code == 401
    assert (await client.post(f"{CARE}/readings", json=cases[0][0],
                              headers=auth.headers("citizen"))).status_code == 403
    note = await client.post(f"{CARE}/people/P-ALONE/notes", json={"kind": "visit", "text": "上门探访, 一切正常"},
                             headers=auth.headers("official", department="civil-affairs", districts=["d-east"]))
    assert note.status_code == 200
    far = await client.post(f"{CARE}/people/P-ALONE/notes", json={"kind": "visit", "text": "x"},
                            headers=auth.headers("official", department="civil-affairs", districts=["d-west"]))
    assert far.status_code == 403
    assert (await client.post(f"{CARE}/people/P-ALONE/notes", json={"kind": "gossip", "text": "x"})).status_code == 400


async def test_wristband_readings_arrive_through_the_hub(app: Any, client: httpx.AsyncClient,
                                                         moving_clock: Any) -> None:
    await _enrol(client, device="wearable-007")
    entity = {"id": "urn:ngsi-ld:Device:wearable-007", "type": "Device",
              "heartRate": {"type": "Property", "value": 88},
              "fallDetected": {"type": "Property", "value": True}}
    made = await client.post("/ngsi-ld/v1/entities", json=entity, headers={"Content-Type": "application/json"})
    assert made.status_code == 201, made.text
    async with app.state.engine.connect() as conn:
        alerts = (await conn.execute(select(m.care_alerts.c.kind).where(
            m.care_alerts.c.subject_id == "P-ALONE"))).all()
    assert [a.kind for a in alerts] == ["fall"]
