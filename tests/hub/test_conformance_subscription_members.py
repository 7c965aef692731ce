"""Subscription members and notifications per ETSI GS CIM 009 v1.8.1, as the conformance suite's
Subscription group checks them: the default notificationTrigger (§5.2.12), the notification counters
(§5.2.14), the order and last page of a query (§5.8.4, §6.3.9), an entity type selection in an
EntitySelector (§4.17, §5.2.33), notification.sysAttrs in keyValues (§5.2.14) and MQTT-QoS 2."""

from __future__ import annotations

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
CLOSED = "http://127.0.0.1:9/notify"  # nothing listens on the discard port
BAD_REQUEST = "https://uri.etsi.org/ngsi-ld/errors/BadRequestData"


async def _create(client: httpx.AsyncClient, body: dict[str, object]) -> str:
    r = await client.post(S, json=body, headers=JSON)
    assert r.status_code == 201, r.text
    return str(r.headers["Location"].rsplit("/", 1)[1])


def _building(n: int, *types: str, **attrs: object) -> dict[str, object]:
    entity: dict[str, object] = {"id": f"urn:ngsi-ld:Building:sel{n}",
                                 "type": list(types) if len(types) > 1 else types[0],
                                 "name": {"type": "Property", "value": f"b{n}"}}
    entity.update(attrs)
    return entity


async def test_default_triggers_are_attribute_created_and_updated(client: httpx.AsyncClient,
                                                                   receiver: Receiver) -> None:
    sub_id = await _create(client, subscription(receiver.url))
    got = (await client.get(f"{S}/{sub_id}")).json()
    assert got["notificationTrigger"] == ["attributeCreated", "attributeUpdated"]
    # Creating an entity creates its attributes (attributeCreated); an update is attributeUpdated.
    assert (await client.post(E, json=air(1), headers=JSON)).status_code == 201
    await receiver.wait_count(1)
    r = await client.patch(f"{E}/{air(1)['id']}/attrs", json={"pm25": {"type": "Property", "value": 50}},
                           headers=JSON)
    assert r.status_code == 204, r.text
    await receiver.wait_count(2)
    # attributeDeleted is not a default trigger: deleting pm25 notifies nobody. A later update that does
    # notify proves the deletion was seen (and skipped) before it, in order.
    assert (await client.delete(f"{E}/{air(1)['id']}/attrs/pm25")).status_code == 204
    r = await client.patch(f"{E}/{air(1)['id']}/attrs", json={"location": {"type": "GeoProperty", "value": {
        "type": "Point", "coordinates": [116.5, 39.9]}}}, headers=JSON)
    assert r.status_code == 204, r.text
    received = await receiver.wait_count(3)
    assert [set(r.body["data"][0]) >= {"pm25"} for r in received[:3]] == [True, True, False]


async def test_counters_appear_with_the_first_notification(client: httpx.AsyncClient, receiver: Receiver) -> None:
    sub_id = await _create(client, subscription(receiver.url))
    notification = (await client.get(f"{S}/{sub_id}")).json()["notification"]
    assert not {"timesSent", "timesFailed", "lastNotification", "status"} & set(notification)
    assert (await client.post(E, json=air(2), headers=JSON)).status_code == 201
    await receiver.wait_count(1)
    # Read as soon as the notification arrived: the retrieval waits for the delivery's bookkeeping.
    notification = (await client.get(f"{S}/{sub_id}")).json()["notification"]
    assert notification["timesSent"] == 1 and notification["timesFailed"] == 0 and notification["status"] == "ok"


async def test_query_lists_in_creation_order_and_last_page_has_no_next(client: httpx.AsyncClient) -> None:
    ids = ["urn:ngsi-ld:Subscription:zz", "urn:ngsi-ld:Subscription:aa", "urn:ngsi-ld:Subscription:mm"]
    for sub_id in ids:
        await _create(client, subscription(CLOSED, id=sub_id))
    assert [s["id"] for s in (await client.get(S)).json()] == ids
    last = await client.get(S, params={"limit": "1", "offset": "2"})
    assert [s["id"] for s in last.json()] == ids[2:]
    assert 'rel="next"' not in last.headers["Link"] and f'<{S}?limit=1&offset=1>;rel="prev"' in last.headers["Link"]
    middle = await client.get(S, params={"limit": "1", "offset": "1"})
    assert [s["id"] for s in middle.json()] == ids[1:2] and 'rel="next"' in middle.headers["Link"]
    whole = await client.get(S, params={"limit": "3"})
    assert len(whole.json()) == 3 and 'rel="next"' not in whole.headers.get("Link", "")


async def test_entity_type_selection_in_entity_selector(client: httpx.AsyncClient, receiver: Receiver) -> None:
    either = await _create(client, subscription(receiver.url, entities=[{"type": "(Building|Tower)"}],
                                                notificationTrigger=["entityCreated"]))
    both = await _create(client, subscription(receiver.url, entities=[{"type": "Building;Tower"}],
                                              notificationTrigger=["entityCreated"]))
    assert (await client.get(f"{S}/{either}")).json()["entities"] == [{"type": "(Building|Tower)"}]
    assert (await client.get(f"{S}/{both}")).json()["entities"] == [{"type": "Building;Tower"}]
    for entity in (_building(1, "Building"), _building(2, "Tower"), _building(3, "Vehicle"),
                   _building(4, "Building", "Tower")):
        assert (await client.post(E, json=entity, headers=JSON)).status_code == 201
    # The "either" subscription: entities 1, 2 and 4; the "both" subscription: entity 4 only.
    received = await receiver.wait_count(4)
    by_sub: dict[str, set[str]] = {}
    for r in received:
        by_sub.setdefault(r.body["subscriptionId"], set()).update(e["id"] for e in r.body["data"])
    # One more creation matching both proves nothing else (entity 3) was on its way before it.
    assert (await client.post(E, json=_building(5, "Building", "Tower"), headers=JSON)).status_code == 201
    received = await receiver.wait_count(6)
    by_sub = {}
    for r in received:
        by_sub.setdefault(r.body["subscriptionId"], set()).update(e["id"] for e in r.body["data"])
    assert by_sub[either] == {f"urn:ngsi-ld:Building:sel{n}" for n in (1, 2, 4, 5)}
    assert by_sub[both] == {f"urn:ngsi-ld:Building:sel{n}" for n in (4, 5)}


@pytest.mark.parametrize("selection", ["(Building|Tower", "Building||Tower", "Building;", "(Building)|(bad name)", ""])
async def test_malformed_type_selection_is_400(client: httpx.AsyncClient, selection: str) -> None:
    r = await client.post(S, json=subscription(CLOSED, entities=[{"type": selection}]), headers=JSON)
    assert r.status_code == 400, r.text
    assert r.json()["type"] == BAD_REQUEST
    assert (await client.get(S)).json() == []


async def test_sys_attrs_in_key_values_notifications(client: httpx.AsyncClient, receiver: Receiver) -> None:
    body = subscription(receiver.url)
    body["notification"] = {"endpoint": {"uri": receiver.url}, "format": "keyValues", "sysAttrs": True}
    await _create(client, body)
    plain = subscription(receiver.url)
    plain["notification"] = {"endpoint": {"uri": receiver.url}, "format": "keyValues"}
    plain_id = await _create(client, plain)
    assert (await client.post(E, json=air(3), headers=JSON)).status_code == 201
    received = await receiver.wait_count(2)
    for r in received:
        [entity] = r.body["data"]
        if r.body["subscriptionId"] == plain_id:
            assert "createdAt" not in entity and "modifiedAt" not in entity
        else:
            assert entity["createdAt"].endswith("Z") and entity["modifiedAt"].endswith("Z")
            assert entity["pm25"] == 10.0  # keyValues: the attribute is its value


@pytest.mark.parametrize(("qos", "status"), [("2", 201), ("3", 400), ("-1", 400), ("x", 400)])
async def test_mqtt_qos_levels(client: httpx.AsyncClient, qos: str, status: int) -> None:
    body = subscription("mqtt://127.0.0.1:1883/cityos/qos", notification={"endpoint": {
        "uri": "mqtt://127.0.0.1:1883/cityos/qos", "notifierInfo": [{"key": "MQTT-QoS", "value": qos}]}})
    r = await client.post(S, json=body, headers=JSON)
    assert r.status_code == status, r.text
    if status == 400:
        assert r.json()["type"] == BAD_REQUEST
