"""The temporal API (ETSI GS CIM 009 §5.6.11–§5.6.17, §5.7.3–§5.7.4) on every backend."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import httpx
import pytest

from cityos.core import clock
from cityos.hub.temporal import sql
from hub.temporal.temporal_helpers import (
    JSON,
    T0,
    E,
    T,
    at,
    history_count,
    post_series,
    reading,
    sensor,
    values_of,
)


@pytest.fixture
def frozen() -> Iterator[list[Any]]:
    """An injected clock the test moves by assigning now[0]."""
    now = [T0]
    clock.set_clock(lambda: now[0])
    yield now
    clock.reset_clock()


async def test_entity_api_changes_are_recorded(client: httpx.AsyncClient, frozen: list[Any]) -> None:
    entity = {"id": sensor(1), "type": "Sensor", "temperature": reading(20.5, at(-30)),
              "status": {"type": "Property", "value": "ok"}}
    assert (await client.post(E, json=entity, headers=JSON)).status_code == 201
    frozen[0] = T0 + timedelta(hours=1)
    patch = {"temperature": reading(21.5, at(45)), "status": {"type": "Property", "value": "degraded"}}
    assert (await client.patch(f"{E}/{sensor(1)}/attrs", json=patch, headers=JSON)).status_code == 204

    body = (await client.get(f"{T}/{sensor(1)}")).json()
    assert body["type"] == "Sensor"
    assert [(i["value"], i["observedAt"]) for i in body["temperature"]] == [(20.5, at(-30)), (21.5, at(45))]
    assert values_of(body, "status") == ["ok", "degraded"]
    assert all(i["instanceId"].startswith("urn:ngsi-ld:attribute:instance:") for i in body["temperature"])
    assert "modifiedAt" not in body["status"][0]

    # Without observedAt, the time of an instance is its modifiedAt.
    later = (await client.get(f"{T}/{sensor(1)}", params={"timerel": "after", "timeAt": at(30)})).json()
    assert values_of(later, "status") == ["degraded"]
    assert values_of(later) == [21.5]
    by_modified = (await client.get(f"{T}/{sensor(1)}", params={
        "timerel": "after", "timeAt": at(30), "timeproperty": "modifiedAt", "options": "sysAttrs"})).json()
    assert values_of(by_modified) == [21.5]
    assert by_modified["temperature"][0]["modifiedAt"] == at(60)
    assert by_modified["temperature"][0]["createdAt"] == at(0)
    by_created = (await client.get(f"{T}/{sensor(1)}", params={
        "timerel": "before", "timeAt": at(1), "timeproperty": "createdAt"})).json()
    assert values_of(by_created) == [20.5, 21.5]  # the attribute was created at T0
    assert by_created["temperature"][0]["createdAt"] == at(0)

    # A deleted attribute leaves a deletion record; a deleted entity keeps its history.
    frozen[0] = T0 + timedelta(hours=2)
    assert (await client.delete(f"{E}/{sensor(1)}/attrs/status")).status_code == 204
    assert (await client.delete(f"{E}/{sensor(1)}")).status_code == 204
    body = (await client.get(f"{T}/{sensor(1)}")).json()
    assert body["status"][-1]["value"] == "urn:ngsi-ld:null"
    assert body["status"][-1]["deletedAt"] == at(120)
    assert values_of(body)[:2] == [20.5, 21.5]
    found = (await client.get(T, params={"type": "Sensor", "attrs": "temperature"})).json()
    assert [e["id"] for e in found] == [sensor(1)]


async def test_every_timerel(client: httpx.AsyncClient) -> None:
    await post_series(client, sensor(1), [(i, at(60 * i)) for i in range(10)])
    url = f"{T}/{sensor(1)}"
    before = (await client.get(url, params={"timerel": "before", "timeAt": at(300)})).json()
    assert values_of(before) == [0, 1, 2, 3, 4]
    after = (await client.get(url, params={"timerel": "after", "timeAt": at(300)})).json()
    assert values_of(after) == [5, 6, 7, 8, 9]
    between = (await client.get(url, params={"timerel": "between", "timeAt": at(120), "endTimeAt": at(300)})).json()
    assert values_of(between) == [2, 3, 4]
    assert values_of((await client.get(url)).json()) == list(range(10))
    empty = (await client.get(url, params={"timerel": "before", "timeAt": at(-1)})).json()
    assert empty == {"id": sensor(1), "type": "Sensor"}


async def test_last_n(client: httpx.AsyncClient) -> None:
    await post_series(client, sensor(1), [(i, at(i)) for i in range(20)])
    await post_series(client, sensor(1), [("on", at(i)) for i in range(2)], attr="power")
    body = (await client.get(f"{T}/{sensor(1)}", params={"lastN": "3"})).json()
    assert values_of(body) == [17, 18, 19]  # the newest, in time order
    assert values_of(body, "power") == ["on", "on"]
    body = (await client.get(f"{T}/{sensor(1)}", params={
        "lastN": "2", "timerel": "between", "timeAt": at(5), "endTimeAt": at(10), "attrs": "temperature"})).json()
    assert values_of(body) == [8, 9]
    assert "power" not in body


async def test_temporal_values_and_relationships(client: httpx.AsyncClient) -> None:
    body = {"id": sensor(1), "type": "Sensor",
            "temperature": [reading(1.5, at(1)), reading(2.5, at(2))],
            "parkedIn": [{"type": "Relationship", "object": "urn:ngsi-ld:Parking:1", "observedAt": at(3)}],
            "pressure": [reading(10, at(1), datasetId="urn:ngsi-ld:ds:a"),
                         reading(20, at(1), datasetId="urn:ngsi-ld:ds:b")]}
    assert (await client.post(T, json=body, headers=JSON)).status_code == 201
    simple = (await client.get(f"{T}/{sensor(1)}", params={"options": "temporalValues"})).json()
    assert simple["temperature"] == {"type": "Property", "values": [[1.5, at(1)], [2.5, at(2)]]}
    assert simple["parkedIn"] == {"type": "Relationship", "objects": [["urn:ngsi-ld:Parking:1", at(3)]]}
    assert sorted(simple["pressure"], key=lambda p: p["datasetId"]) == [
        {"type": "Property", "values": [[10, at(1)]], "datasetId": "urn:ngsi-ld:ds:a"},
        {"type": "Property", "values": [[20, at(1)]], "datasetId": "urn:ngsi-ld:ds:b"}]
    normalized = (await client.get(f"{T}/{sensor(1)}", params={"attrs": "parkedIn"})).json()
    assert set(normalized) == {"id", "type", "parkedIn"}
    assert normalized["parkedIn"][0]["object"] == "urn:ngsi-ld:Parking:1"


async def test_json_ld_response(client: httpx.AsyncClient) -> None:
    await post_series(client, sensor(1), [(1, at(1))])
    r = await client.get(f"{T}/{sensor(1)}", headers={"Accept": "application/ld+json"})
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("application/ld+json")
    assert "@context" in r.json()


async def test_query_selects_entities_like_the_entity_api(client: httpx.AsyncClient) -> None:
    for n in range(1, 6):
        entity = {"id": sensor(n), "type": "Sensor", "temperature": reading(10 * n, at(n)),
                  "location": {"type": "GeoProperty",
                               "value": {"type": "Point", "coordinates": [116.4 + n / 100, 39.9]}}}
        assert (await client.post(E, json=entity, headers=JSON)).status_code == 201
    await post_series(client, "urn:ngsi-ld:Meter:1", [(5, at(1))], attr="power", entity_type="Meter")
    # A temporal-only entity of the same type is found by type and id, never by q or geo.
    await post_series(client, sensor(9), [(99, at(9))])

    r = await client.get(T, params={"type": "Sensor", "count": "true", "limit": "2"})
    assert r.status_code == 200
    assert r.headers["NGSILD-Results-Count"] == "6"
    assert [e["id"] for e in r.json()] == [sensor(1), sensor(2)]
    assert 'rel="next"' in r.headers["Link"]
    page = (await client.get(T, params={"type": "Sensor", "limit": "2", "offset": "4"})).json()
    assert [e["id"] for e in page] == [sensor(5), sensor(9)]
    seen, url = [], f"{T}?type=Sensor&limit=4"
    while url:
        r = await client.get(url)
        seen += [e["id"] for e in r.json()]
        nxt = [p for p in r.headers.get("Link", "").split(", ") if 'rel="next"' in p]
        url = nxt[0][nxt[0].index("/ngsi-ld"):nxt[0].index(">")] if nxt else ""
    assert seen == [sensor(n) for n in (1, 2, 3, 4, 5, 9)]

    # q and the geo-query test the current state of the entities.
    hot = (await client.get(T, params={"type": "Sensor", "q": "temperature>30"})).json()
    assert [e["id"] for e in hot] == [sensor(4), sensor(5)]
    near = (await client.get(T, params={"type": "Sensor", "georel": "near;maxDistance==500", "geometry": "Point",
                                        "coordinates": "[116.41,39.9]"})).json()
    assert [e["id"] for e in near] == [sensor(1)]
    pattern = (await client.get(T, params={"local": "true", "idPattern": ".*:00[19]$"})).json()
    assert [e["id"] for e in pattern] == [sensor(1), sensor(9)]
    by_id = (await client.get(T, params={"local": "true", "id": f"{sensor(2)},urn:ngsi-ld:Meter:1"})).json()
    assert [(e["id"], set(e) - {"id", "type"}) for e in by_id] == [("urn:ngsi-ld:Meter:1", {"power"}),
                                                                   (sensor(2), {"location", "temperature"})]
    # attrs keeps only the entities with history of one of the attributes.
    power = (await client.get(T, params={"attrs": "power"})).json()
    assert [(e["id"], e["power"][0]["value"]) for e in power] == [("urn:ngsi-ld:Meter:1", 5)]
    window = (await client.get(T, params={"type": "Sensor", "timerel": "after", "timeAt": at(4),
                                          "attrs": "temperature"})).json()
    assert {e["id"]: values_of(e) for e in window if "temperature" in e} == {
        sensor(4): [40], sensor(5): [50], sensor(9): [99]}


async def test_many_entities_in_one_read(client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch) -> None:
    # SQLite reads the (entity, attribute) pairs in statements of a bounded size: cross a boundary.
    monkeypatch.setattr(sql, "SQLITE_PAIRS_PER_STATEMENT", 2)
    for n in range(5):
        await post_series(client, sensor(n), [(n, at(1)), (n + 10, at(2))])
    body = (await client.get(T, params={"type": "Sensor", "lastN": "1"})).json()
    assert [values_of(e) for e in body] == [[n + 10] for n in range(5)]


async def test_tenants(client: httpx.AsyncClient) -> None:
    r = await client.get(T, params={"type": "Sensor"}, headers={"NGSILD-Tenant": "nowhere"})
    assert r.status_code == 404
    assert r.json()["type"] == "https://uri.etsi.org/ngsi-ld/errors/NonexistentTenant"
    assert (await client.get(f"{T}/{sensor(1)}", headers={"NGSILD-Tenant": "nowhere"})).status_code == 404
    await post_series(client, sensor(1), [(1, at(1))], headers={"NGSILD-Tenant": "city-b"})
    r = await client.get(f"{T}/{sensor(1)}", headers={"NGSILD-Tenant": "city-b"})
    assert r.status_code == 200 and r.headers["NGSILD-Tenant"] == "city-b"
    assert (await client.get(f"{T}/{sensor(1)}")).status_code == 404


async def test_create_append_and_delete_history(client: httpx.AsyncClient, app: Any) -> None:
    r = await post_series(client, sensor(1), [(1, at(1)), (2, at(2))])
    assert r.status_code == 201
    assert r.headers["Location"] == f"{T}/{sensor(1)}"
    r = await post_series(client, sensor(1), [(3, at(3))])
    assert r.status_code == 204
    more = {"temperature": [reading(4, at(4)), reading(40, at(4.5), datasetId="urn:ngsi-ld:ds:x")],
            "humidity": reading(55, at(4))}
    assert (await client.post(f"{T}/{sensor(1)}/attrs", json=more, headers=JSON)).status_code == 204
    body = (await client.get(f"{T}/{sensor(1)}")).json()
    assert values_of(body) == [1, 2, 3, 4, 40] and values_of(body, "humidity") == [55]

    # datasetId picks one instance series, no datasetId the default one, deleteAll every one.
    r = await client.delete(f"{T}/{sensor(1)}/attrs/temperature", params={"datasetId": "urn:ngsi-ld:ds:x"})
    assert r.status_code == 204
    assert values_of((await client.get(f"{T}/{sensor(1)}")).json()) == [1, 2, 3, 4]
    assert (await client.delete(f"{T}/{sensor(1)}/attrs/temperature")).status_code == 204
    assert "temperature" not in (await client.get(f"{T}/{sensor(1)}")).json()
    await post_series(client, sensor(1), [(5, at(5))])
    assert (await client.post(f"{T}/{sensor(1)}/attrs", json={"temperature": reading(6, at(6), datasetId="urn:a:b")},
                              headers=JSON)).status_code == 204
    r = await client.delete(f"{T}/{sensor(1)}/attrs/temperature", params={"deleteAll": "true"})
    assert r.status_code == 204
    assert await history_count(app, sensor(1)) == 1  # humidity
    assert (await client.delete(f"{T}/{sensor(1)}/attrs/temperature")).status_code == 404

    assert (await client.delete(f"{T}/{sensor(1)}")).status_code == 204
    assert (await client.get(f"{T}/{sensor(1)}")).status_code == 404
    assert await history_count(app, sensor(1)) == 0
    assert (await client.delete(f"{T}/{sensor(1)}")).status_code == 404


async def test_deleting_history_keeps_the_current_entity(client: httpx.AsyncClient, app: Any) -> None:
    entity = {"id": sensor(2), "type": "Sensor", "temperature": reading(20, at(0))}
    assert (await client.post(E, json=entity, headers=JSON)).status_code == 201
    assert (await client.delete(f"{T}/{sensor(2)}")).status_code == 204
    assert (await client.get(f"{E}/{sensor(2)}")).json()["temperature"]["value"] == 20
    assert (await client.get(f"{T}/{sensor(2)}")).json() == {"id": sensor(2), "type": "Sensor"}
    # Later changes are recorded again.
    assert (await client.patch(f"{E}/{sensor(2)}/attrs", json={"temperature": reading(21, at(1))},
                               headers=JSON)).status_code == 204
    assert values_of((await client.get(f"{T}/{sensor(2)}")).json()) == [21]
    assert await history_count(app, sensor(2)) == 1


async def test_modify_and_delete_one_instance(client: httpx.AsyncClient) -> None:
    await post_series(client, sensor(1), [(1, at(1)), (2, at(2)), (3, at(3))])
    instances = (await client.get(f"{T}/{sensor(1)}")).json()["temperature"]
    second = instances[1]["instanceId"]
    url = f"{T}/{sensor(1)}/attrs/temperature/{second}"
    assert (await client.patch(url, json={"value": 20}, headers=JSON)).status_code == 204
    body = (await client.get(f"{T}/{sensor(1)}", params={"options": "sysAttrs"})).json()
    assert values_of(body) == [1, 20, 3]
    assert body["temperature"][1]["instanceId"] == second
    assert body["temperature"][1]["observedAt"] == at(2)
    # A new observedAt moves the instance in time.
    assert (await client.patch(url, json={"type": "Property", "value": 21, "observedAt": at(9)},
                               headers=JSON)).status_code == 204
    assert values_of((await client.get(f"{T}/{sensor(1)}")).json()) == [1, 3, 21]
    assert (await client.delete(url)).status_code == 204
    assert values_of((await client.get(f"{T}/{sensor(1)}")).json()) == [1, 3]
    r = await client.delete(url)
    assert r.status_code == 404
    assert r.json()["type"] == "https://uri.etsi.org/ngsi-ld/errors/ResourceNotFound"
    assert (await client.patch(url, json={"value": 1}, headers=JSON)).status_code == 404


async def test_long_histories_are_cut_with_content_range(client: httpx.AsyncClient, app: Any,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(app.state.temporal, "max_instances", 5)
    await post_series(client, sensor(1), [(i, at(i)) for i in range(12)])
    await post_series(client, sensor(1), [(i, at(2 * i + 0.5)) for i in range(3)], attr="humidity")
    url = f"{T}/{sensor(1)}"

    r = await client.get(url)
    assert r.status_code == 206
    assert r.headers["Content-Range"] == f"date-time {at(0)}-{at(4)}/*"
    body = r.json()
    assert values_of(body) == [0, 1, 2, 3, 4]
    assert values_of(body, "humidity") == [0, 1]  # cut at the same instant as temperature

    # The next part starts where the last ended (timerel=after is inclusive).
    r = await client.get(url, params={"timerel": "after", "timeAt": at(5)})
    assert r.status_code == 206
    assert r.headers["Content-Range"] == f"date-time {at(5)}-{at(9)}/*"
    r = await client.get(url, params={"timerel": "after", "timeAt": at(10)})
    assert r.status_code == 200 and "Content-Range" not in r.headers
    assert values_of(r.json()) == [10, 11]

    r = await client.get(url, params={"lastN": "8", "attrs": "temperature"})
    assert r.status_code == 206
    assert r.headers["Content-Range"] == f"date-time {at(11)}-{at(7)}/8"
    assert values_of(r.json()) == [7, 8, 9, 10, 11]
    r = await client.get(url, params={"lastN": "5"})
    assert r.status_code == 200 and values_of(r.json()) == [7, 8, 9, 10, 11]

    r = await client.get(T, params={"type": "Sensor", "timerel": "between", "timeAt": at(3), "endTimeAt": at(11)})
    assert r.status_code == 206
    assert r.headers["Content-Range"] == f"date-time {at(3)}-{at(7)}/*"
    assert values_of(r.json()[0]) == [3, 4, 5, 6, 7]
