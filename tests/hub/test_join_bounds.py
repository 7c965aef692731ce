"""Linked entities (§4.5.23) stay bounded: `inline` does not nest an entity inside itself along a cycle
of relationships, and one request or notification renders at most `MAX_LINKED_RENDERS` linked entities
(a notification's join runs inside the write that triggered it)."""

from __future__ import annotations

import itertools
from typing import Any

import httpx
import pytest

from cityos.hub import linked
from hub.helpers import JSON
from hub.subscriptions.notify_helpers import (  # noqa: F401 - the fixture is used by name
    Receiver,
    S,
    receiver_fixture,
)

E = "/ngsi-ld/v1/entities"
TOWER = "urn:ngsi-ld:Building:bound-tower"
PARIS = "urn:ngsi-ld:City:bound-paris"


def rel(target: str) -> dict[str, Any]:
    return {"type": "Relationship", "object": target}


def nesting(entity: dict[str, Any]) -> int:
    """How many linked entities are nested, all paths together."""
    return sum(1 + nesting(member["entity"]) for member in entity.values()
               if isinstance(member, dict) and isinstance(member.get("entity"), dict))


async def cycle(client: httpx.AsyncClient) -> None:
    # Two entities linked to each other twice: joinLevel 10 would be 2 + 4 + ... + 1024 nested copies.
    for body in ({"id": PARIS, "type": "City", "a": rel(TOWER), "b": rel(TOWER)},
                 {"id": TOWER, "type": "Building", "a": rel(PARIS), "b": rel(PARIS)}):
        r = await client.post(E, json=body, headers=JSON)
        assert r.status_code == 201, r.text


def check_cycle_cut(tower: dict[str, Any]) -> None:
    assert tower["id"] == TOWER
    for name in ("a", "b"):
        city = tower[name]["entity"]
        assert city["id"] == PARIS
        # The city links back to the tower, shown above it on the path: the object id alone.
        assert city["a"] == rel(TOWER) and city["b"] == rel(TOWER)
    assert nesting(tower) == 2


async def test_inline_does_not_nest_an_entity_inside_itself(client: httpx.AsyncClient,
                                                            receiver: Receiver) -> None:
    await cycle(client)
    r = await client.get(f"{E}/{TOWER}", params={"join": "inline", "joinLevel": "10"})
    assert r.status_code == 200, r.text
    check_cycle_cut(r.json())
    body = {"type": "Subscription", "entities": [{"type": "Building"}],
            "notification": {"endpoint": {"uri": receiver.url}, "join": "inline", "joinLevel": 10}}
    assert (await client.post(S, json=body, headers=JSON)).status_code == 201
    r = await client.patch(f"{E}/{TOWER}/attrs", json={"name": {"type": "Property", "value": "t"}}, headers=JSON)
    assert r.status_code == 204, r.text
    received = await receiver.wait_count(1)
    [tower] = received[0].body["data"]
    check_cycle_cut({k: v for k, v in tower.items() if k != "name"})


async def test_linked_entities_per_notification_are_capped(client: httpx.AsyncClient, receiver: Receiver,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(linked, "MAX_LINKED_RENDERS", 3)
    chain = [f"urn:ngsi-ld:City:bound-{n}" for n in range(6)]
    for here, there in itertools.pairwise(chain):
        assert (await client.post(E, json={"id": here, "type": "City", "next": rel(there)},
                                  headers=JSON)).status_code == 201
    assert (await client.post(E, json={"id": chain[-1], "type": "City"}, headers=JSON)).status_code == 201
    r = await client.get(f"{E}/{chain[0]}", params={"join": "flat", "joinLevel": "10"})
    assert r.status_code == 200, r.text
    assert [e["id"] for e in r.json()] == chain[:4]
    body = {"type": "Subscription", "entities": [{"type": "City", "id": chain[0]}],
            "notification": {"endpoint": {"uri": receiver.url}, "join": "inline", "joinLevel": 10,
                             "format": "keyValues"}}
    assert (await client.post(S, json=body, headers=JSON)).status_code == 201
    r = await client.patch(f"{E}/{chain[0]}/attrs", json={"name": {"type": "Property", "value": "c"}},
                           headers=JSON)
    assert r.status_code == 204, r.text
    received = await receiver.wait_count(1)
    [first] = received[0].body["data"]
    assert first["next"]["next"]["next"]["id"] == chain[3]
    assert first["next"]["next"]["next"]["next"] == chain[4]  # past the budget: the object id alone
