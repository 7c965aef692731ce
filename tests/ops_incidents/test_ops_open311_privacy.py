"""Issue 12, finding 15: Open311 requests are public, so what people type into them is masked, and
anonymous callers read the jurisdiction's tenant only."""

from __future__ import annotations

from typing import Any

import httpx
from ops_incidents_helpers import BASE, IN_D1

V2 = "/open311/v2"
PHONE, DASHED, LANDLINE, ID_CARD = "13812345678", "139-8765-4321", "0898-66123456", "46010019850315123X"
TEXT = f"Deep hole. Call me on {PHONE} or {DASHED}, office {LANDLINE}; ID {ID_CARD}."


async def _key(client: httpx.AsyncClient, tenant: str | None = None) -> str:
    headers = {"NGSILD-Tenant": tenant} if tenant else None
    response = await client.post("/api/ops/open311/keys", json={"name": "app"}, headers=headers)
    assert response.status_code == 201, response.text
    return str(response.json()["api_key"])


async def _post(anon: httpx.AsyncClient, key: str, description: str = TEXT) -> str:
    response = await anon.post(f"{V2}/requests.json", data={
        "api_key": key, "service_code": "pothole", "lat": str(IN_D1[1]), "long": str(IN_D1[0]),
        "description": description})
    assert response.status_code == 201, response.text
    return str(response.json()[0]["service_request_id"])


async def test_open311_descriptions_and_hub_view_mask_phone_and_id_numbers(
        app: Any, client: httpx.AsyncClient, anon_client: httpx.AsyncClient, auth: Any, districts: list[str]) -> None:
    request_id = await _post(anon_client, await _key(client))
    for fmt in ("json", "xml"):
        for path in (f"requests/{request_id}", "requests"):
            response = await anon_client.get(f"{V2}/{path}.{fmt}")
            assert response.status_code == 200, response.text
            for secret in (PHONE, DASHED, "66123456", ID_CARD, "198503151"):
                assert secret not in response.text, (fmt, path, secret)
            assert "138****5678" in response.text and "139****4321" in response.text
            assert "460***********123X" in response.text
    # Staff handling the incident still read what the citizen wrote.
    incident = (await client.get(f"{BASE}/{request_id}", headers=auth.headers("operator"))).json()
    assert incident["description"] == TEXT
    # The hub's copy (shared with every domain, readable beyond the handling department) is masked.
    await app.state.ops_incidents.sync_hub()
    entity = await client.get(f"/ngsi-ld/v1/entities/urn:ngsi-ld:Incident:{request_id}",
                              headers=auth.headers("sys_admin"))
    assert entity.status_code == 200, entity.text
    assert "138****5678" in entity.text
    for secret in (PHONE, DASHED, "66123456", ID_CARD):
        assert secret not in entity.text


async def test_open311_anonymous_reads_only_the_jurisdictions_tenant(
        client: httpx.AsyncClient, anon_client: httpx.AsyncClient, auth: Any, districts: list[str]) -> None:
    ours = await _post(anon_client, await _key(client), "Pothole in the default tenant")
    theirs = await _post(anon_client, await _key(client, "t-other"), "Secret pothole of another tenant")
    listed = await anon_client.get(f"{V2}/requests.json")
    assert [r["service_request_id"] for r in listed.json()] == [ours]
    for path in ("requests.json", f"requests/{theirs}.json", "requests.xml", "services.json"):
        response = await anon_client.get(f"{V2}/{path}", headers={"NGSILD-Tenant": "t-other"})
        assert response.status_code == 404, (path, response.text)
        assert "Secret pothole" not in response.text
        assert response.json()[0]["code"] == 404 if path.endswith(".json") else response.text.startswith("<?xml")
    by_id = await anon_client.get(f"{V2}/requests.json", params={"service_request_id": f"{ours},{theirs}"})
    assert [r["service_request_id"] for r in by_id.json()] == [ours]
    assert (await anon_client.get(f"{V2}/requests/{theirs}.json")).status_code == 404
    # A malformed tenant header: a clear 400 in the GeoReport format.
    malformed = await anon_client.get(f"{V2}/requests.json", headers={"NGSILD-Tenant": "bad tenant!"})
    assert malformed.status_code == 400 and malformed.json()[0]["code"] == 400
    # Signed-in staff of the other tenant read their own tenant's requests; a header naming another is refused.
    staff = auth.headers("operator", tenant="t-other")
    mine = await anon_client.get(f"{V2}/requests.json", headers=staff)
    assert [r["service_request_id"] for r in mine.json()] == [theirs]
    assert (await anon_client.get(f"{V2}/requests.json", headers={**staff, "NGSILD-Tenant": "t-third"})
            ).status_code == 403
