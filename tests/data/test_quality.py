"""Quality rules as data checked with pandera: the plans' three rules (PM2.5 against the nearest reference
station ±5 µg/m³ over an hour, more than 20% missing flagged, non-ISO-8601 dates invalid), the score with
history, quarantine with reasons and release, and invalid rule definitions."""

from __future__ import annotations

from typing import Any

import httpx

from auth_tokens import Auth

UPSERT = "/ngsi-ld/v1/entityOperations/upsert"


def _station(i: int, x: float, pm25: float, hour: int) -> dict[str, Any]:
    return {"id": f"urn:ngsi-ld:AirQualityObserved:q{i}", "type": "AirQualityObserved",
            "district": {"type": "Property", "value": "Xiuying"},
            "location": {"type": "GeoProperty", "value": {"type": "Point", "coordinates": [110.0 + x, 20.0]}},
            "pm25": {"type": "Property", "value": pm25, "observedAt": f"2026-12-01T0{hour}:10:00Z"}}


async def test_plan_rules(client: httpx.AsyncClient, auth: Auth) -> None:
    # Reference station q0 at x=0, micro-stations q1 (near, agrees) and q2 (near, off by 12) ; q3 far, nearest q9.
    for hour in (1, 2):
        batch = [_station(0, 0.0, 30.0, hour), _station(1, 0.01, 33.0, hour),
                 _station(2, 0.02, 42.0 if hour == 1 else 31.0, hour),
                 _station(9, 1.0, 10.0, hour), _station(3, 0.99, 12.0, hour)]
        assert (await client.post(UPSERT, json=batch)).status_code in (201, 204)
    assert (await client.post("/api/data/harvest")).status_code == 200
    code = "readings-airqualityobserved-a-pm25"
    rules = [{"rule": "reference", "attribute": "pm25", "tolerance": 5,
              "references": ["urn:ngsi-ld:AirQualityObserved:q0", "urn:ngsi-ld:AirQualityObserved:q9"]},
             {"rule": "iso8601", "field": "observedAt"}, {"rule": "completeness", "max_missing": 0.2}]
    result = (await client.post(f"/api/data/quality/{code}/check", json={"rules": rules})).json()
    assert result["checked"] == 10 and result["failed"] == 1  # q2 in hour 1 only
    assert result["score"] == 90.0 and result["targetMet"] is False
    report = (await client.get(f"/api/data/quality/{code}")).json()
    held = report["quarantine"]
    assert len(held) == 1 and held[0]["record"]["entityId"].endswith("q2")
    assert held[0]["reasons"][0].startswith("reference:pm25±5")
    released = await client.post(f"/api/data/quarantine/{held[0]['id']}/release")
    assert released.json()["status"] == "released"
    assert (await client.post(f"/api/data/quarantine/{held[0]['id']}/release")).status_code == 409

    # A department's upload: one date not in ISO 8601, one record missing 3 of 4 values.
    official = auth.headers("official", department="civil-affairs")
    made = await client.post("/api/data/datasets", headers=official, json={
        "code": "visits", "title": "走访记录", "keyField": "id",
        "fields": [{"id": "id", "class": "public"}, {"id": "visitedAt", "class": "public", "type": "timestamp"},
                   {"id": "site", "class": "public"}, {"id": "note", "class": "public"}],
        "records": [{"id": "1", "visitedAt": "2026-12-01T09:00:00+08:00", "site": "a", "note": "ok"},
                    {"id": "2", "visitedAt": "2026/12/01 09:00", "site": "b", "note": "ok"},
                    {"id": "3", "visitedAt": None, "site": None, "note": None},
                    {"id": "4", "visitedAt": "2026-12-01T10:00:00Z", "site": "d", "note": "ok"}]})
    assert made.status_code == 201, made.text
    checked = (await client.post("/api/data/quality/visits/check")).json()
    assert checked["failed"] == 2 and checked["score"] == 50.0
    assert checked["byRule"] == {"iso8601:visitedAt": 1, "completeness:0.2": 1}
    second = (await client.post("/api/data/quality/visits/check")).json()
    assert second["score"] == 50.0
    report = (await client.get("/api/data/quality/visits")).json()
    assert len(report["history"]) == 2 and report["trend"] == 0.0
    reasons = {q["rowKey"]: q["reasons"] for q in report["quarantine"]}
    assert reasons["2"] == ["iso8601:visitedAt"] and reasons["3"] == ["completeness:0.2"]


async def test_invalid_rules(client: httpx.AsyncClient, auth: Auth) -> None:
    await client.post("/api/data/datasets", headers=auth.headers("official", department="civil-affairs"), json={
        "code": "visits", "title": "走访记录", "fields": [{"id": "id", "class": "public"}],
        "records": [{"id": "1"}]})
    url = "/api/data/quality/visits/check"
    for rules in ("all", [], [{"rule": "magic"}], [{"rule": "range", "field": "id", "min": 5, "max": 1}],
                  [{"rule": "range", "field": "nosuch", "min": 0, "max": 1}],
                  [{"rule": "completeness", "max_missing": 7}],
                  [{"rule": "reference", "attribute": "pm25", "tolerance": 5, "references": ["x"]}],
                  [{"rule": "iso8601"}] * 51):
        r = await client.post(url, json={"rules": rules})
        assert r.status_code == 400, (rules, r.text)
    assert (await client.post("/api/data/quality/nope/check")).status_code == 404
    assert (await client.post(url, headers=auth.headers("official", department="x"))).status_code == 403
    assert (await client.post("/api/data/quarantine/abc/release")).status_code == 404
    assert (await client.post("/api/data/quarantine/999/release")).status_code == 409


async def test_lineage_graph(client: httpx.AsyncClient, auth: Auth) -> None:
    batch = [_station(0, 0.0, 30.0, 1), _station(1, 0.01, 33.0, 1)]
    assert (await client.post(UPSERT, json=batch)).status_code in (201, 204)
    await client.post("/api/data/harvest")
    await client.post("/api/data/quality/readings-airqualityobserved/check")
    graph = (await client.get("/api/data/lineage/readings-airqualityobserved")).json()
    assert [e["from"] for e in graph["upstream"]] == ["iot:AirQualityObserved.history"]
    assert graph["upstream"][0]["job"] == "cityos.data.harvest" and graph["upstream"][0]["runId"]
    assert {e["to"] for e in graph["downstream"]} == {"quality:readings-airqualityobserved"}
    assert {f["id"]: f["source"]["system"] for f in graph["fields"]}["value"] == "iot"
    state = (await client.get("/api/data/lineage/hub-airqualityobserved")).json()
    assert state["upstream"][0]["from"] == "hub:AirQualityObserved"
    await client.post("/api/data/datasets", headers=auth.headers("official", department="civil-affairs"), json={
        "code": "visits", "title": "走访记录", "fields": [{"id": "id", "class": "public"}], "records": [{"id": "1"}]})
    uploaded = (await client.get("/api/data/lineage/visits")).json()
    assert uploaded["upstream"][0]["from"] == "upload:civil-affairs"
    versions = (await client.get("/api/data/datasets/visits")).json()["versions"]
    assert versions[0]["runId"] == uploaded["upstream"][0]["runId"]
    assert (await client.get("/api/data/lineage/nope")).status_code == 404
    assert (await client.get("/api/data/lineage/visits", headers=auth.headers("citizen"))).status_code == 403


async def test_one_source_per_item(client: httpx.AsyncClient, auth: Auth) -> None:
    def upload(code: str, dept: str) -> tuple[dict[str, str], dict[str, Any]]:
        return auth.headers("official", department=dept), {
            "code": code, "title": "常住人口", "category": "demography",
            "fields": [{"id": "district", "class": "public"}, {"id": "population", "class": "public",
                                                                "system": f"{dept}-system"}],
            "records": [{"district": "Xiuying", "population": 100}]}

    headers, body = upload("population-stats", "statistics")
    assert (await client.post("/api/data/datasets", json=body, headers=headers)).status_code == 201
    assert (await client.get("/api/data/sources/conflicts")).json()["conflicts"] == []
    headers, body = upload("population-police", "public-security")
    assert (await client.post("/api/data/datasets", json=body, headers=headers)).status_code == 201
    conflicts = (await client.get("/api/data/sources/conflicts")).json()["conflicts"]
    assert [c["item"] for c in conflicts] == ["demography/population"]
    assert [s["source"] for s in conflicts[0]["sources"]] == ["public-security/public-security-system",
                                                              "statistics/statistics-system"]
