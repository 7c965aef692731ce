"""Merging reports into nearby open incidents, and undoing it."""

from __future__ import annotations

from typing import Any

import httpx
from ops_incidents_helpers import BASE, Clock, act, create, point

from cityos.ops.incidents.core import NewIncident

HERE = (110.31, 20.01)
# about 110 m north, about 330 m north
NEAR = (110.31, 20.011)
FAR = (110.31, 20.013)


async def _report(service: Any, where: tuple[float, float], category: str = "pothole",
                  source: str = "open311") -> Any:
    return await service.create("", NewIncident(category=category, title="report", source=source,
                                                location=point(*where)))


async def test_reports_merge_within_distance_and_window(client: httpx.AsyncClient, auth: Any, districts: list[str],
                                                        fixed_clock: Clock, service: Any) -> None:
    operator = auth.headers("operator")
    first = await _report(service, HERE)
    assert first.outcome == "created"
    near = await _report(service, NEAR, source="hotline")
    assert near.outcome == "merged" and near.parent["id"] == first.incident["id"]
    assert near.incident["status"] == "merged" and near.parent["reportCount"] == 2
    assert (await _report(service, FAR)).outcome == "created"  # too far
    assert (await _report(service, NEAR, category="waste")).outcome == "created"  # other category
    assert (await _report(service, NEAR, source="manual")).outcome == "created"  # staff entries never merge
    fixed_clock.advance(minutes=121)
    assert (await _report(service, NEAR)).outcome == "created"  # outside the 2 h window
    detail = (await client.get(f"{BASE}/{first.incident['id']}", headers=operator)).json()
    assert detail["reportCount"] == 2 and detail["merged"] == [near.incident["id"]]
    listed = (await client.get(BASE, headers=operator, params={"category": "pothole"})).json()
    assert near.incident["id"] not in [i["id"] for i in listed["items"]]
    with_merged = (await client.get(BASE, headers=operator, params={"category": "pothole",
                                                                    "includeMerged": "true"})).json()
    assert near.incident["id"] in [i["id"] for i in with_merged["items"]]
    # a merged report cannot be acted on by itself
    body = await act(client, operator, near.incident["id"], "dispatch", status=409)
    assert "merged" in body["detail"]


async def test_no_merge_into_resolved_incident(client: httpx.AsyncClient, auth: Any, districts: list[str],
                                               service: Any) -> None:
    operator = auth.headers("operator")
    first = await _report(service, HERE)
    for step in ("dispatch", "accept", "arrive", "resolve"):
        await act(client, operator, first.incident["id"], step)
    assert (await _report(service, NEAR)).outcome == "created"


async def test_split_and_manual_merge(app: Any, client: httpx.AsyncClient, auth: Any, districts: list[str],
                                      service: Any) -> None:
    operator = auth.headers("operator")
    first = await _report(service, HERE)
    child = await _report(service, NEAR)
    parent_id, child_id = first.incident["id"], child.incident["id"]
    await service.sync_hub()
    admin = auth.headers("sys_admin")
    assert (await client.get(f"/ngsi-ld/v1/entities/urn:ngsi-ld:Incident:{child_id}", headers=admin)).status_code == 404
    split = (await client.post(f"{BASE}/{child_id}/split", headers=operator)).json()
    assert split["status"] == "reported" and split["parentId"] is None
    parent = (await client.get(f"{BASE}/{parent_id}", headers=operator)).json()
    assert parent["reportCount"] == 1 and parent["merged"] == []
    assert (await client.post(f"{BASE}/{child_id}/split", headers=operator)).status_code == 409
    await service.sync_hub()
    assert (await client.get(f"/ngsi-ld/v1/entities/urn:ngsi-ld:Incident:{child_id}", headers=admin)).status_code == 200
    # merge it back by hand
    merged = (await client.post(f"{BASE}/{child_id}/merge", headers=operator, json={"into": parent_id})).json()
    assert merged["status"] == "merged" and merged["parentId"] == parent_id
    assert (await client.get(f"{BASE}/{parent_id}", headers=operator)).json()["reportCount"] == 2
    timeline = (await client.get(f"{BASE}/{child_id}/timeline", headers=operator)).json()
    assert [s["action"] for s in timeline] == ["report", "merge", "split", "merge"]
    # bad merges
    other = (await create(client, operator, category="waste", title="bin"))["incident"]["id"]
    assert (await client.post(f"{BASE}/{other}/merge", headers=operator, json={"into": other})).status_code == 409
    assert (await client.post(f"{BASE}/{other}/merge", headers=operator, json={"into": child_id})).status_code == 409
    assert (await client.post(f"{BASE}/{parent_id}/merge", headers=operator, json={"into": other})).status_code == 409
    assert (await client.post(f"{BASE}/{other}/merge", headers=operator, json={"into": "999999"})).status_code == 404
    assert (await client.post(f"{BASE}/{other}/merge", headers=operator, json={"into": 5})).status_code == 400
    assert (await client.post(f"{BASE}/{other}/merge", headers=operator, json={"into": "1 OR 1"})).status_code == 400
    assert (await client.post(f"{BASE}/{other}/split", headers=operator)).status_code == 409
    sanitation = auth.headers("official", department="sanitation")
    response = await client.post(f"{BASE}/{other}/merge", headers=sanitation, json={"into": parent_id})
    assert response.status_code == 403  # the target is transport's


async def test_area_wide_categories_merge_over_a_wider_radius(client: httpx.AsyncClient, auth: Any,
                                                              districts: list[str], fixed_clock: Clock,
                                                              service: Any) -> None:
    """Smog seen by two stations about 1.1 km apart is one incident; two potholes that far apart are two."""
    one_km_north = (110.31, 20.02)
    first = await _report(service, HERE, category="environment.air", source="environment")
    second = await _report(service, one_km_north, category="environment.air", source="environment")
    assert second.outcome == "merged" and second.parent["id"] == first.incident["id"]
    assert (await _report(service, HERE)).outcome == "created"
    assert (await _report(service, one_km_north)).outcome == "created"
    routing = (await client.get(f"{BASE}/routing", headers=auth.headers("operator"))).json()
    assert routing["merge"]["distanceMetresByCategory"]["environment.air"] == 3000
