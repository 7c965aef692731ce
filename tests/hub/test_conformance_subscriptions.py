"""The subscription representation (ETSI GS CIM 009 v1.8.1 §5.2.12, §5.2.15): members as the
subscriber wrote them, system attributes only with options=sysAttrs, notification.status about the
last attempt, and offset paging links."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from hub.helpers import JSON, air
from hub.subscriptions.notify_helpers import (  # noqa: F401 - the fixture is used by name
    Receiver,
    S,
    receiver_fixture,
    subscription,
)

E = "/ngsi-ld/v1/entities"
CLOSED = "http://127.0.0.1:9/notify"  # nothing listens on the discard port: every delivery fails at once


async def _create(client: httpx.AsyncClient, **members: object) -> str:
    r = await client.post(S, json=subscription(CLOSED, **members), headers=JSON)
    assert r.status_code == 201, r.text
    return str(r.headers["Location"].rsplit("/", 1)[1])


async def test_members_as_written(client: httpx.AsyncClient) -> None:
    sub_id = await _create(client, timeInterval=5)
    got = (await client.get(f"{S}/{sub_id}")).json()
    assert got["timeInterval"] == 5 and isinstance(got["timeInterval"], int)
    assert "isActive" not in got and "createdAt" not in got and "modifiedAt" not in got
    assert "status" not in got["notification"]  # nothing was attempted yet
    paused = await _create(client, isActive=False, throttling=2.5)
    got = (await client.get(f"{S}/{paused}")).json()
    assert got["isActive"] is False and got["throttling"] == 2.5 and got["status"] == "paused"


async def test_sys_attrs_on_retrieve_and_query(client: httpx.AsyncClient) -> None:
    sub_id = await _create(client)
    got = (await client.get(f"{S}/{sub_id}", params={"options": "sysAttrs"})).json()
    assert got["createdAt"].endswith("Z") and got["modifiedAt"].endswith("Z")
    [listed] = (await client.get(S, params={"options": "sysAttrs"})).json()
    assert listed["createdAt"] == got["createdAt"]
    assert "createdAt" not in (await client.get(S)).json()[0]
    r = await client.get(f"{S}/{sub_id}", params={"options": "keyValues"})
    assert r.status_code == 400 and r.json()["type"] == "https://uri.etsi.org/ngsi-ld/errors/InvalidRequest"


async def test_paging_links_use_offset_only(client: httpx.AsyncClient) -> None:
    for _ in range(3):
        await _create(client)
    r = await client.get(S, params={"limit": "1", "offset": "1"})
    assert r.status_code == 200 and len(r.json()) == 1
    links = r.headers["Link"]
    assert "after=" not in links
    assert f'<{S}?limit=1&offset=2>;rel="next"' in links and f'<{S}?limit=1&offset=0>;rel="prev"' in links


async def test_status_failed_after_one_failed_delivery(client: httpx.AsyncClient) -> None:
    sub_id = await _create(client)
    assert (await client.post(E, json=air(1), headers=JSON)).status_code == 201
    notification: dict[str, object] = {}
    for _ in range(100):
        notification = (await client.get(f"{S}/{sub_id}")).json()["notification"]
        if notification.get("lastFailure"):
            break
        await asyncio.sleep(0.1)
    assert notification["status"] == "failed", notification
    assert notification["timesFailed"] >= 1 and "lastSuccess" not in notification


@pytest.mark.parametrize("notification", [{"pick": ["id"], "omit": ["id"]}, {"pick": ["id"], "attributes": ["pm25"]},
                                          {"omit": ["pm25"], "attributes": ["pm25"]}, {"pick": []},
                                          {"omit": ["bad name"]}])
async def test_invalid_notification_projection_is_400(client: httpx.AsyncClient,
                                                      notification: dict[str, object]) -> None:
    body = subscription(CLOSED)
    body["notification"] = {**body["notification"], **notification}
    r = await client.post(S, json=body, headers=JSON)
    assert r.status_code == 400, r.text
    assert r.json()["type"] == "https://uri.etsi.org/ngsi-ld/errors/BadRequestData"
    assert (await client.get(S)).json() == []


async def test_notification_pick_and_omit(client: httpx.AsyncClient, receiver: Receiver) -> None:
    body = subscription(receiver.url)
    body["notification"] = {**body["notification"], "pick": ["id", "pm25"]}
    assert (await client.post(S, json=body, headers=JSON)).status_code == 201
    other = subscription(receiver.url, entities=[{"type": "Vehicle"}])
    other["notification"] = {**other["notification"], "omit": ["type", "brand"]}
    assert (await client.post(S, json=other, headers=JSON)).status_code == 201
    listed = {s["entities"][0]["type"]: s["notification"] for s in (await client.get(S)).json()}
    assert set(listed["AirQualityObserved"]["pick"]) == {"id", "pm25"}
    assert set(listed["Vehicle"]["omit"]) == {"brand", "type"}
    await client.post(E, json=air(1), headers=JSON)
    await client.post(E, json={"id": "urn:ngsi-ld:Vehicle:n1", "type": "Vehicle",
                               "brand": {"type": "Property", "value": "X"}, "speed": {"type": "Property", "value": 3}},
                      headers=JSON)
    await receiver.wait_count(2)
    by_id = {entity["id"]: entity for entity in receiver.data()}
    assert set(by_id[air(1)["id"]]) == {"id", "pm25"}
    assert set(by_id["urn:ngsi-ld:Vehicle:n1"]) == {"id", "speed"}


async def test_dataset_id_member_filters_notified_instances(client: httpx.AsyncClient, receiver: Receiver) -> None:
    """v1.8.1 §5.2.12 datasetId: only the instances of the listed datasetIds are notified; shown as written."""
    fr = "urn:ngsi-ld:Dataset:fr"
    body = subscription(receiver.url, entities=[{"type": "Building"}], datasetId=[fr])
    r = await client.post(S, json=body, headers=JSON)
    assert r.status_code == 201, r.text
    assert (await client.get(S)).json()[0]["datasetId"] == [fr]
    building = {"id": "urn:ngsi-ld:Building:ds", "type": "Building",
                "name": [{"type": "Property", "value": "Eiffel Tower"},
                         {"type": "Property", "value": "Tour Eiffel", "datasetId": fr}],
                "height": {"type": "Property", "value": 300}}
    assert (await client.post(E, json=building, headers=JSON)).status_code == 201
    await receiver.wait_count(1)
    [entity] = receiver.data()
    assert entity["name"] == {"type": "Property", "value": "Tour Eiffel", "datasetId": fr} and "height" not in entity


@pytest.mark.parametrize("dataset_id", [[], "not a uri", [3], ["urn:a"] * 101])
async def test_bad_dataset_id_member_is_400(client: httpx.AsyncClient, dataset_id: object) -> None:
    r = await client.post(S, json=subscription(CLOSED, datasetId=dataset_id), headers=JSON)
    assert r.status_code == 400 and r.json()["type"] == "https://uri.etsi.org/ngsi-ld/errors/BadRequestData"
