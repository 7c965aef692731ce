"""The datasetId filter (ETSI GS CIM 009 v1.8.1 §4.5.5, §6.4.3.2, §6.18.3.2): only the attribute
instances with one of the listed datasetIds ("@none" for the default instance), on entity and
temporal retrieval and query; an attribute left with no instance is left out."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from hub.helpers import JSON

E = "/ngsi-ld/v1/entities"
T = "/ngsi-ld/v1/temporal/entities"
V = "urn:ngsi-ld:Vehicle:ds1"
FR, DE = "urn:ngsi-ld:Dataset:fr", "urn:ngsi-ld:Dataset:de"


@pytest.fixture(name="vehicle")
async def vehicle_fixture(client: httpx.AsyncClient) -> None:
    entity = {"id": V, "type": "Vehicle",
              "name": [{"type": "Property", "value": "car"},
                       {"type": "Property", "value": "voiture", "datasetId": FR},
                       {"type": "Property", "value": "Auto", "datasetId": DE}],
              "speed": {"type": "Property", "value": 50, "observedAt": "2026-11-20T08:00:00Z"}}
    assert (await client.post(E, json=entity, headers=JSON)).status_code == 201
    r = await client.post(f"{T}/{V}/attrs", headers=JSON, json={"speed": [
        {"type": "Property", "value": 60, "observedAt": "2026-11-20T09:00:00Z", "datasetId": FR}]})
    assert r.status_code == 204, r.text


async def _get(client: httpx.AsyncClient, path: str, **params: str) -> Any:
    r = await client.get(path, params=params)
    assert r.status_code == 200, r.text
    return r.json()


@pytest.mark.usefixtures("vehicle")
async def test_entity_dataset_filter(client: httpx.AsyncClient) -> None:
    got = await _get(client, f"{E}/{V}", datasetId=FR)
    assert got["name"] == {"type": "Property", "value": "voiture", "datasetId": FR} and "speed" not in got
    got = await _get(client, f"{E}/{V}", datasetId="@none")
    assert got["name"] == {"type": "Property", "value": "car"} and got["speed"]["value"] == 50
    [listed] = await _get(client, E, type="Vehicle", datasetId=f"{FR},{DE}")
    assert sorted(i["datasetId"] for i in listed["name"]) == [DE, FR]
    [listed] = await _get(client, E, type="Vehicle", attrs="name", datasetId="urn:ngsi-ld:Dataset:none")
    assert set(listed) == {"id", "type"}  # the entity matches; none of its instances is shown


@pytest.mark.usefixtures("vehicle")
async def test_temporal_dataset_filter(client: httpx.AsyncClient) -> None:
    got = await _get(client, f"{T}/{V}", attrs="speed", datasetId=FR)
    assert [i["value"] for i in got["speed"]] == [60] and got["speed"][0]["datasetId"] == FR
    got = await _get(client, f"{T}/{V}", attrs="speed", datasetId="@none", options="temporalValues")
    assert got["speed"]["values"] == [[50, "2026-11-20T08:00:00Z"]]
    assert await _get(client, T, type="Vehicle", attrs="speed", datasetId=DE) == []
