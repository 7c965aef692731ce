"""Tenants are isolated; reading one that does not exist is 404 NonexistentTenant."""

from __future__ import annotations

import httpx

from hub.helpers import JSON, air

E = "/ngsi-ld/v1/entities"


async def test_tenants_are_isolated(client: httpx.AsyncClient) -> None:
    a, b = {"NGSILD-Tenant": "haikou"}, {"NGSILD-Tenant": "sanya"}
    assert (await client.post(E, json=air(1, 10), headers=JSON | a)).status_code == 201
    assert (await client.post(E, json=air(1, 20), headers=JSON | b)).status_code == 201
    one = "urn:ngsi-ld:AirQualityObserved:000001"
    assert (await client.get(f"{E}/{one}", headers=a, params={"options": "keyValues"})).json()["pm25"] == 10
    assert (await client.get(f"{E}/{one}", headers=b, params={"options": "keyValues"})).json()["pm25"] == 20
    assert (await client.get(f"{E}/{one}")).status_code == 404
    await client.delete(f"{E}/{one}", headers=a)
    assert (await client.get(f"{E}/{one}", headers=b)).status_code == 200
    r = await client.get(E, params={"type": "AirQualityObserved"}, headers=a)
    assert r.json() == []


async def test_nonexistent_tenant(client: httpx.AsyncClient) -> None:
    r = await client.get(E, params={"type": "T"}, headers={"NGSILD-Tenant": "atlantis"})
    assert r.status_code == 404
    assert r.json()["type"] == "https://uri.etsi.org/ngsi-ld/errors/NonexistentTenant"
    r = await client.get(f"{E}/urn:x:1", headers={"NGSILD-Tenant": "atlantis"})
    assert r.json()["type"].endswith("NonexistentTenant")
    r = await client.get("/ngsi-ld/v1/types", headers={"NGSILD-Tenant": "atlantis"})
    assert r.status_code == 404


async def test_tenant_header_tampering_is_400(client: httpx.AsyncClient) -> None:
    r = await client.get(E, params={"type": "T"}, headers={"NGSILD-Tenant": "x'; DROP TABLE hub_entities; --"})
    assert r.status_code == 400
    r = await client.get(E, params={"type": "T"}, headers={"NGSILD-Tenant": "a" * 500})
    assert r.status_code == 400
