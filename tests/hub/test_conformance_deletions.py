"""Deletions in notifications (ETSI GS CIM 009 v1.8.1 §5.8.6, §4.5.18): a deleted attribute or
attribute instance is notified as its NGSI-LD Null (with `previousValue` & co. under showChanges,
`deletedAt` with sysAttrs); a deleted entity as id, type and deletedAt, with its attributes as Null
when attributeDeleted (not entityDeleted) or showChanges asked for them; several instances in
keyValues are a `dataset` map."""

from __future__ import annotations

from typing import Any

import httpx

from hub.helpers import JSON
from hub.subscriptions.notify_helpers import (  # noqa: F401 - the fixture is used by name
    Receiver,
    S,
    receiver_fixture,
)

E = "/ngsi-ld/v1/entities"
NULL = "urn:ngsi-ld:null"
BID = "urn:ngsi-ld:Building:del1"


def building() -> dict[str, Any]:
    return {"id": BID, "type": "Building",
            "name": [{"type": "Property", "value": "Eiffel Tower"},
                     {"type": "Property", "value": "Tour Eiffel", "datasetId": "urn:ngsi-ld:Dataset:fr"}],
            "street": {"type": "LanguageProperty", "languageMap": {"fr": "Grand Place", "nl": "Grote Markt"}},
            "locatedAt": {"type": "Relationship", "object": "urn:ngsi-ld:City:Paris"},
            "height": {"type": "Property", "value": 300},
            "style": {"type": "VocabProperty", "vocab": "monument"}}


async def _subscribe(client: httpx.AsyncClient, receiver: Receiver, triggers: list[str],
                     **notification: Any) -> None:
    body = {"type": "Subscription", "entities": [{"type": "Building"}], "notificationTrigger": triggers,
            "notification": {"endpoint": {"uri": receiver.url}, **notification}}
    r = await client.post(S, json=body, headers=JSON)
    assert r.status_code == 201, r.text


async def _notified(receiver: Receiver) -> dict[str, Any]:
    await receiver.wait_count(1)
    [entity] = receiver.data()
    return entity


async def test_deleted_attribute_is_null_in_the_full_entity(client: httpx.AsyncClient, receiver: Receiver) -> None:
    assert (await client.post(E, json=building(), headers=JSON)).status_code == 201
    await _subscribe(client, receiver, ["attributeDeleted"])
    assert (await client.delete(f"{E}/{BID}/attrs/locatedAt")).status_code == 204
    got = await _notified(receiver)
    assert got["locatedAt"] == {"type": "Relationship", "object": NULL}
    assert got["height"] == {"type": "Property", "value": 300}  # the rest of the entity as it is now


async def test_show_changes_gives_the_previous_value_of_each_kind(client: httpx.AsyncClient,
                                                                  receiver: Receiver) -> None:
    assert (await client.post(E, json=building(), headers=JSON)).status_code == 201
    await _subscribe(client, receiver, ["attributeDeleted"], showChanges=True)
    assert (await client.delete(f"{E}/{BID}/attrs/street")).status_code == 204
    got = await _notified(receiver)
    assert got["street"] == {"type": "LanguageProperty", "languageMap": {"@none": NULL},
                             "previousLanguageMap": {"fr": "Grand Place", "nl": "Grote Markt"}}
    assert (await client.delete(f"{E}/{BID}/attrs/style")).status_code == 204
    await receiver.wait_count(2)
    assert receiver.data()[1]["style"] == {"type": "VocabProperty", "vocab": NULL, "previousVocab": "monument"}


async def test_deleted_instance_and_keyvalues_dataset(client: httpx.AsyncClient, receiver: Receiver) -> None:
    assert (await client.post(E, json=building(), headers=JSON)).status_code == 201
    await _subscribe(client, receiver, ["attributeDeleted"], format="keyValues")
    # Only the instance goes: the attribute remains, and the trigger is still attributeDeleted.
    r = await client.delete(f"{E}/{BID}/attrs/name", params={"datasetId": "urn:ngsi-ld:Dataset:fr"})
    assert r.status_code == 204
    got = await _notified(receiver)
    assert got["name"] == {"dataset": {"@none": "Eiffel Tower", "urn:ngsi-ld:Dataset:fr": NULL}}
    # keyValues of an attribute with several instances, on retrieval too.
    await client.post(f"{E}/{BID}/attrs", json={"name": {"type": "Property", "value": "Eiffelturm",
                                                         "datasetId": "urn:ngsi-ld:Dataset:de"}}, headers=JSON)
    shown = (await client.get(f"{E}/{BID}", params={"options": "keyValues"})).json()
    assert shown["name"] == {"dataset": {"@none": "Eiffel Tower", "urn:ngsi-ld:Dataset:de": "Eiffelturm"}}


async def test_sys_attrs_give_deleted_at(client: httpx.AsyncClient, receiver: Receiver) -> None:
    assert (await client.post(E, json=building(), headers=JSON)).status_code == 201
    await _subscribe(client, receiver, ["attributeDeleted"], sysAttrs=True)
    await client.patch(f"{E}/{BID}/attrs", json={"height": {"type": "Property", "value": NULL}}, headers=JSON)
    got = await _notified(receiver)
    assert got["height"]["value"] == NULL and got["height"]["deletedAt"].endswith("Z")
    assert "createdAt" in got["height"]


async def test_entity_deleted_is_id_type_deleted_at(client: httpx.AsyncClient, receiver: Receiver) -> None:
    assert (await client.post(E, json=building(), headers=JSON)).status_code == 201
    await _subscribe(client, receiver, ["entityDeleted"], format="keyValues", sysAttrs=True)
    assert (await client.delete(f"{E}/{BID}")).status_code == 204
    got = await _notified(receiver)
    assert set(got) == {"id", "type", "createdAt", "modifiedAt", "deletedAt"}


async def test_entity_deletion_fires_attribute_deleted_for_watched(client: httpx.AsyncClient,
                                                                   receiver: Receiver) -> None:
    assert (await client.post(E, json=building(), headers=JSON)).status_code == 201
    body = {"type": "Subscription", "entities": [{"type": "Building"}], "watchedAttributes": ["height"],
            "notificationTrigger": ["attributeDeleted"], "notification": {"endpoint": {"uri": receiver.url}}}
    assert (await client.post(S, json=body, headers=JSON)).status_code == 201
    assert (await client.delete(f"{E}/{BID}/attrs/street")).status_code == 204  # not watched: nothing
    assert (await client.delete(f"{E}/{BID}")).status_code == 204
    got = await _notified(receiver)
    assert got["height"] == {"type": "Property", "value": NULL}
    assert "deletedAt" in got and "locatedAt" not in got


async def test_entity_deleted_with_show_changes(client: httpx.AsyncClient, receiver: Receiver) -> None:
    assert (await client.post(E, json=building(), headers=JSON)).status_code == 201
    await _subscribe(client, receiver, ["entityDeleted"], showChanges=True)
    assert (await client.delete(f"{E}/{BID}")).status_code == 204
    got = await _notified(receiver)
    assert got["locatedAt"] == {"type": "Relationship", "object": NULL, "previousObject": "urn:ngsi-ld:City:Paris"}
    # An attribute gone as a whole is one Null, whatever its instances (previous: the default one).
    assert got["name"] == {"type": "Property", "value": NULL, "previousValue": "Eiffel Tower"}
    assert "deletedAt" in got


async def test_delete_all_instances_is_one_null(client: httpx.AsyncClient, receiver: Receiver) -> None:
    assert (await client.post(E, json=building(), headers=JSON)).status_code == 201
    await _subscribe(client, receiver, ["attributeDeleted"])
    assert (await client.delete(f"{E}/{BID}/attrs/name", params={"deleteAll": "true"})).status_code == 204
    got = await _notified(receiver)
    assert got["name"] == {"type": "Property", "value": NULL}
