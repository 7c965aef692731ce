"""A notification split by CITYOS_NOTIFY_MAX_ENTITIES keeps each flat-joined linked entity with the entity
linking to it (§4.5.23): the entities are split first, each part joined on its own."""

from __future__ import annotations

import dataclasses
from typing import Any

import httpx

from hub.helpers import JSON
from hub.subscriptions.notify_helpers import (  # noqa: F401 - the fixture is used by name
    Receiver,
    S,
    receiver_fixture,
)

E = "/ngsi-ld/v1/entities"


async def test_linked_entities_stay_with_their_entity_when_split(client: httpx.AsyncClient, app: Any,
                                                                 receiver: Receiver) -> None:
    cities = [f"urn:ngsi-ld:City:chunk-{n}" for n in range(2)]
    towers = [f"urn:ngsi-ld:Building:chunk-{n}" for n in range(2)]
    for city in cities:
        assert (await client.post(E, json={"id": city, "type": "City"}, headers=JSON)).status_code == 201
    body = {"type": "Subscription", "entities": [{"type": "Building"}],
            "notification": {"endpoint": {"uri": receiver.url}, "join": "flat", "format": "keyValues"}}
    assert (await client.post(S, json=body, headers=JSON)).status_code == 201
    service = app.state.subscriptions
    saved = service.settings
    service.settings = dataclasses.replace(saved, max_entities_per_notification=1)
    try:
        batch = [{"id": tower, "type": "Building", "locatedAt": {"type": "Relationship", "object": city}}
                 for tower, city in zip(towers, cities, strict=True)]
        r = await client.post("/ngsi-ld/v1/entityOperations/create", json=batch, headers=JSON)
        assert r.status_code == 201, r.text
        received = await receiver.wait_count(2)
    finally:
        service.settings = saved
    assert sorted([e["id"] for e in n.body["data"]] for n in received) == [
        [tower, city] for tower, city in zip(towers, cities, strict=True)]
    assert len(receiver.bodies()) == 2
