"""Batch status codes (ETSI GS CIM 009 v1.8.1 §5.6.7-§5.6.10, §6.3.5): an empty batch is refused,
what fails for one entity is reported for that entity (207), never for the whole batch."""

from __future__ import annotations

import httpx
import pytest

from hub.helpers import CORE, JSON, LD, air, link

B = "/ngsi-ld/v1/entityOperations"
E = "/ngsi-ld/v1/entities"
PROBLEM = "https://uri.etsi.org/ngsi-ld/errors/"


@pytest.mark.parametrize("operation", ["create", "upsert", "update", "merge", "delete"])
async def test_empty_batch_is_400(client: httpx.AsyncClient, operation: str) -> None:
    r = await client.post(f"{B}/{operation}", json=[], headers=JSON)
    assert r.status_code == 400, r.text
    assert r.json()["type"] == PROBLEM + "BadRequestData"


async def test_delete_same_id_twice_is_207(client: httpx.AsyncClient) -> None:
    await client.post(E, json=air(1), headers=JSON)
    the_id = air(1)["id"]
    r = await client.post(f"{B}/delete", json=[the_id, the_id], headers=JSON)
    assert r.status_code == 207, r.text
    body = r.json()
    assert body["success"] == [the_id]
    assert [e["entityId"] for e in body["errors"]] == [the_id]
    assert body["errors"][0]["error"]["type"] == PROBLEM + "ResourceNotFound"
    assert (await client.get(f"{E}/{the_id}")).status_code == 404


async def test_context_not_fitting_the_content_type_fails_per_entity(client: httpx.AsyncClient) -> None:
    with_context = {**air(1), "@context": [CORE]}
    r = await client.post(f"{B}/create", json=[with_context, air(2)], headers=JSON)
    assert r.status_code == 207, r.text
    body = r.json()
    assert body["success"] == [air(2)["id"]]
    assert body["errors"][0]["entityId"] == air(1)["id"]
    assert body["errors"][0]["error"]["type"] == PROBLEM + "BadRequestData"
    r = await client.post(f"{B}/create", json=[air(3)], headers=LD)
    assert r.status_code == 207 and r.json()["errors"][0]["entityId"] == air(3)["id"]
    assert (await client.get(f"{E}/{air(3)['id']}")).status_code == 404


async def test_unavailable_context_fails_per_entity(client: httpx.AsyncClient) -> None:
    # Nothing listens on port 9 (discard) on the loopback: the fetch fails fast.
    r = await client.post(f"{B}/upsert", json=[air(1), air(2)],
                          headers=JSON | link("http://127.0.0.1:9/missing-context.jsonld"))
    assert r.status_code == 207, r.text
    errors = r.json()["errors"]
    assert [e["entityId"] for e in errors] == [air(1)["id"], air(2)["id"]]
    assert all(e["error"]["type"] == PROBLEM + "LdContextNotAvailable" for e in errors)
    assert (await client.get(f"{E}/{air(1)['id']}")).status_code == 404


async def test_update_no_overwrite_reports_what_it_left(client: httpx.AsyncClient) -> None:
    await client.post(E, json=air(1, pm25=5.0), headers=JSON)
    fragment = {"id": air(1)["id"], "type": "AirQualityObserved",
                "pm25": {"type": "Property", "value": 99.0}, "no2": {"type": "Property", "value": 7}}
    r = await client.post(f"{B}/update", json=[fragment], headers=JSON, params={"options": "noOverwrite"})
    assert r.status_code == 207, r.text
    assert r.json()["errors"][0]["entityId"] == air(1)["id"]
    stored = (await client.get(f"{E}/{air(1)['id']}")).json()
    assert stored["pm25"]["value"] == 5.0 and stored["no2"]["value"] == 7
    only_new = {"id": air(1)["id"], "type": "AirQualityObserved", "o3": {"type": "Property", "value": 1}}
    r = await client.post(f"{B}/update", json=[only_new], headers=JSON, params={"options": "noOverwrite"})
    assert r.status_code == 204, r.text
