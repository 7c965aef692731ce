"""Scope (ETSI GS CIM 009 v1.8.1 §4.18) through the attribute operations: Append replaces it, or adds
to it with noOverwrite (§5.6.3); Update replaces it only where the entity has one (§5.6.2); Delete
Attribute `scope` removes it (§5.6.5); it is not an attribute to Replace Attribute (§5.6.19)."""

from __future__ import annotations

import httpx
import pytest

from hub.helpers import JSON

E = "/ngsi-ld/v1/entities"
B1 = "urn:ngsi-ld:Building:scope1"
MADRID = "/Madrid/Gardens/ParqueNorte"
COMPANY = "/CompanyA/OrganizationB/UnitC"


async def make(client: httpx.AsyncClient, scope: object = None) -> None:
    body: dict[str, object] = {"id": B1, "type": "Building"}
    if scope is not None:
        body["scope"] = scope
    assert (await client.post(E, json=body, headers=JSON)).status_code == 201


async def scope_of(client: httpx.AsyncClient) -> object:
    r = await client.get(f"{E}/{B1}")
    assert r.status_code == 200
    return r.json().get("scope")


async def test_append_replaces_the_scope(client: httpx.AsyncClient) -> None:
    await make(client, MADRID)
    r = await client.post(f"{E}/{B1}/attrs", json={"scope": COMPANY}, headers=JSON)
    assert r.status_code == 204, r.text
    assert await scope_of(client) == COMPANY


async def test_append_with_no_overwrite_adds_scopes(client: httpx.AsyncClient) -> None:
    await make(client, MADRID)
    r = await client.post(f"{E}/{B1}/attrs", params={"options": "noOverwrite"}, json={"scope": [COMPANY, MADRID]},
                          headers=JSON)
    assert r.status_code == 204, r.text
    assert await scope_of(client) == [MADRID, COMPANY]
    found = await client.get(E, params={"type": "Building", "scopeQ": COMPANY})
    assert [e["id"] for e in found.json()] == [B1]


async def test_update_replaces_an_existing_scope(client: httpx.AsyncClient) -> None:
    await make(client, MADRID)
    r = await client.patch(f"{E}/{B1}/attrs", json={"scope": COMPANY}, headers=JSON)
    assert r.status_code == 204, r.text
    assert await scope_of(client) == COMPANY


async def test_update_does_not_add_a_scope(client: httpx.AsyncClient) -> None:
    await make(client)
    r = await client.patch(f"{E}/{B1}/attrs", json={"scope": COMPANY}, headers=JSON)
    assert r.status_code == 207, r.text
    assert r.json()["notUpdated"][0]["attributeName"] == "scope"
    assert await scope_of(client) is None


async def test_delete_scope(client: httpx.AsyncClient) -> None:
    await make(client, [MADRID, COMPANY])
    assert (await client.delete(f"{E}/{B1}/attrs/scope")).status_code == 204
    assert await scope_of(client) is None
    r = await client.delete(f"{E}/{B1}/attrs/scope")
    assert r.status_code == 404
    assert r.json()["type"] == "https://uri.etsi.org/ngsi-ld/errors/ResourceNotFound"


@pytest.mark.parametrize("bad", [[], 5, [1, "a"], {"a": "b"}])
async def test_bad_scope_is_400(client: httpx.AsyncClient, bad: object) -> None:
    await make(client, MADRID)
    for method in ("POST", "PATCH"):
        r = await client.request(method, f"{E}/{B1}/attrs", json={"scope": bad}, headers=JSON)
        assert r.status_code == 400, (method, bad, r.text)
    r = await client.put(f"{E}/{B1}/attrs/scope", json={"type": "Property", "value": COMPANY}, headers=JSON)
    assert r.status_code == 400
    assert await scope_of(client) == MADRID
