"""Linked entities in notifications (ETSI GS CIM 009 v1.8.1 §5.2.14 `notification.join`/`joinLevel`,
§4.5.23): `flat` notifies the entities the notified ones link to after them, each once; `inline` puts
each under its Relationship (`entity`; in keyValues the linked entity replaces the object id). Linked
entities are rendered in the subscription's format with all their attributes, read as the subscription's
owner may see them. The suite's 046_23–046_30 check these after a `PATCH …/attrs` creating `name`."""

from __future__ import annotations

from typing import Any

import httpx

from auth_tokens import Auth
from hub.helpers import JSON
from hub.subscriptions.notify_helpers import (  # noqa: F401 - the fixture is used by name
    Receiver,
    S,
    receiver_fixture,
)

E = "/ngsi-ld/v1/entities"
TOWER = "urn:ngsi-ld:Building:join-tower"
PARIS = "urn:ngsi-ld:City:join-paris"
FRANCE = "urn:ngsi-ld:Country:join-france"
NAME = {"name": {"type": "Property", "value": "Tour Eiffel"}}


def rel(target: str) -> dict[str, Any]:
    return {"type": "Relationship", "object": target}


async def city_and_tower(client: httpx.AsyncClient) -> None:
    for body in ({"id": FRANCE, "type": "Country", "name": {"type": "Property", "value": "France"}},
                 {"id": PARIS, "type": "City", "name": {"type": "Property", "value": "Paris"},
                  "isInCountry": rel(FRANCE)},
                 {"id": TOWER, "type": "Building", "locatedAt": rel(PARIS),
                  "height": {"type": "Property", "value": 330}}):
        r = await client.post(E, json=body, headers=JSON)
        assert r.status_code == 201, r.text


async def subscribe(client: httpx.AsyncClient, receiver: Receiver, headers: dict[str, str] | None = None,
                    **notification: Any) -> str:
    body = {"type": "Subscription", "entities": [{"type": "Building"}],
            "notification": {"endpoint": {"uri": receiver.url}, **notification}}
    r = await client.post(S, json=body, headers=(headers or {}) | JSON)
    assert r.status_code == 201, r.text
    return str(r.headers["location"].rsplit("/", 1)[1])


async def notified_after_patch(client: httpx.AsyncClient, receiver: Receiver) -> list[dict[str, Any]]:
    r = await client.patch(f"{E}/{TOWER}/attrs/", json=NAME, headers=JSON)
    assert r.status_code == 204, r.text
    received = await receiver.wait_count(1)
    return list(received[0].body["data"])


async def test_flat_notifies_the_linked_entity_after_the_entity(client: httpx.AsyncClient,
                                                                receiver: Receiver) -> None:
    await city_and_tower(client)
    sub_id = await subscribe(client, receiver, join="flat", joinLevel=1)
    shown = (await client.get(f"{S}/{sub_id}")).json()["notification"]
    assert shown["join"] == "flat" and shown["joinLevel"] == 1
    data = await notified_after_patch(client, receiver)
    assert [e["id"] for e in data] == [TOWER, PARIS]
    assert data[0]["name"] == {"type": "Property", "value": "Tour Eiffel"}
    assert data[1] == {"id": PARIS, "type": "City", "name": {"type": "Property", "value": "Paris"},
                       "isInCountry": rel(FRANCE)}


async def test_join_level_follows_more_hops(client: httpx.AsyncClient, receiver: Receiver) -> None:
    await city_and_tower(client)
    await subscribe(client, receiver, join="flat", joinLevel=2, format="keyValues")
    data = await notified_after_patch(client, receiver)
    assert [e["id"] for e in data] == [TOWER, PARIS, FRANCE]
    assert data[2] == {"id": FRANCE, "type": "Country", "name": "France"}


async def test_inline_puts_the_linked_entity_under_its_relationship(client: httpx.AsyncClient,
                                                                    receiver: Receiver) -> None:
    await city_and_tower(client)
    # notification.attributes selects the notified entity's attributes, not the linked entity's.
    await subscribe(client, receiver, join="inline", attributes=["locatedAt"])
    data = await notified_after_patch(client, receiver)
    assert len(data) == 1 and set(data[0]) == {"id", "type", "locatedAt"}
    linked = data[0]["locatedAt"]["entity"]
    assert linked["id"] == PARIS and linked["name"]["value"] == "Paris" and "isInCountry" in linked


async def test_inline_in_key_values_replaces_the_object(client: httpx.AsyncClient, receiver: Receiver) -> None:
    await city_and_tower(client)
    await subscribe(client, receiver, join="inline", format="simplified")
    data = await notified_after_patch(client, receiver)
    assert data[0]["locatedAt"] == {"id": PARIS, "type": "City", "name": "Paris", "isInCountry": FRANCE}
    assert data[0]["name"] == "Tour Eiffel" and data[0]["height"] == 330


async def test_no_join_notifies_the_entity_alone(client: httpx.AsyncClient, receiver: Receiver) -> None:
    await city_and_tower(client)
    await subscribe(client, receiver, join="@none")
    data = await notified_after_patch(client, receiver)
    assert [e["id"] for e in data] == [TOWER] and "entity" not in data[0]["locatedAt"]


async def test_a_link_to_nothing_stored_is_left_as_it_is(client: httpx.AsyncClient, receiver: Receiver) -> None:
    body = {"id": TOWER, "type": "Building", "locatedAt": rel("urn:ngsi-ld:City:nowhere")}
    assert (await client.post(E, json=body, headers=JSON)).status_code == 201
    await subscribe(client, receiver, join="flat")
    data = await notified_after_patch(client, receiver)
    assert [e["id"] for e in data] == [TOWER]


async def test_bad_join_members_are_refused(client: httpx.AsyncClient, receiver: Receiver) -> None:
    for notification in ({"join": "sideways"}, {"join": 1}, {"joinLevel": 0}, {"joinLevel": 11},
                         {"joinLevel": "2"}, {"joinLevel": True}, {"join": "flat", "joinLevel": 1.5}):
        body = {"type": "Subscription", "entities": [{"type": "Building"}],
                "notification": {"endpoint": {"uri": receiver.url}, **notification}}
        r = await client.post(S, json=body, headers=JSON)
        assert r.status_code == 400, (notification, r.text)
        assert r.json()["type"] == "https://uri.etsi.org/ngsi-ld/errors/BadRequestData"
    assert (await client.get(S)).json() == []
    # An update is checked the same way, and leaves the subscription as it was.
    sub_id = await subscribe(client, receiver, join="flat")
    r = await client.patch(f"{S}/{sub_id}", json={"notification": {"endpoint": {"uri": receiver.url},
                                                                    "join": "deep"}}, headers=JSON)
    assert r.status_code == 400, r.text
    assert (await client.get(f"{S}/{sub_id}")).json()["notification"]["join"] == "flat"


async def test_linked_entities_are_masked_for_the_subscription_owner(client: httpx.AsyncClient, auth: Auth,
                                                                     receiver: Receiver) -> None:
    r = await client.put("/admin/data-classes/CaseFile", headers=JSON, json={
        "attributes": {"idNumber": "sensitive", "diagnosis": "confidential", "status": "public"},
        "default": "internal"})
    assert r.status_code == 204, r.text
    case = {"id": "urn:ngsi-ld:CaseFile:join-c1", "type": "CaseFile",
            "idNumber": {"type": "Property", "value": "110101199003071234"},
            "diagnosis": {"type": "Property", "value": "secret diagnosis"},
            "status": {"type": "Property", "value": "open"},
            "department": {"type": "Property", "value": "health"}}
    assert (await client.post(E, json=case, headers=JSON)).status_code == 201
    tower = {"id": TOWER, "type": "Building", "concerns": rel(case["id"])}
    assert (await client.post(E, json=tower, headers=JSON)).status_code == 201
    await subscribe(client, receiver, auth.headers("operator"), join="flat", format="keyValues")
    data = await notified_after_patch(client, receiver)
    assert [e["id"] for e in data] == [TOWER, case["id"]]
    linked = data[1]
    assert linked["idNumber"] == "110***********1234" and "diagnosis" not in linked
    assert linked["status"] == "open"


async def test_periodic_notifications_join_too(client: httpx.AsyncClient, receiver: Receiver) -> None:
    await city_and_tower(client)
    body = {"type": "Subscription", "entities": [{"type": "Building"}], "timeInterval": 0.5,
            "notification": {"endpoint": {"uri": receiver.url}, "join": "flat", "format": "keyValues"}}
    assert (await client.post(S, json=body, headers=JSON)).status_code == 201
    received = await receiver.wait_count(2)
    for notification in received[:2]:
        assert [e["id"] for e in notification.body["data"]] == [TOWER, PARIS]


async def test_only_relationships_the_notification_shows_are_followed(client: httpx.AsyncClient,
                                                                       receiver: Receiver) -> None:
    await city_and_tower(client)
    # pick leaves locatedAt out of the notified entity: its city is not notified either.
    await subscribe(client, receiver, join="flat", pick=["id", "type", "name", "height"])
    data = await notified_after_patch(client, receiver)
    assert [e["id"] for e in data] == [TOWER] and "locatedAt" not in data[0]
