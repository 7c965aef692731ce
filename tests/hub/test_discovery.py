"""Discovery: /types and /attributes (ETSI GS CIM 009 §5.7.5-5.7.10)."""

from __future__ import annotations

import httpx

from hub.helpers import JSON, air

V = "/ngsi-ld/v1"


async def test_types_and_attributes(client: httpx.AsyncClient) -> None:
    await client.post(f"{V}/entityOperations/create", json=[air(1), air(2)], headers=JSON)
    await client.post(f"{V}/entities", json={"id": "urn:ngsi-ld:Streetlight:1", "type": "Streetlight",
                                             "powerState": {"type": "Property", "value": "on"}}, headers=JSON)
    types = (await client.get(f"{V}/types")).json()
    assert types["type"] == "EntityTypeList"
    assert types["typeList"] == ["AirQualityObserved", "Streetlight"]
    detail = (await client.get(f"{V}/types", params={"details": "true"})).json()
    by_name = {t["typeName"]: t for t in detail}
    assert sorted(by_name["AirQualityObserved"]["attributeNames"]) == ["location", "pm25"]
    info = (await client.get(f"{V}/types/AirQualityObserved")).json()
    assert info["entityCount"] == 2
    assert {a["attributeName"]: a["attributeTypes"] for a in info["attributeDetails"]} == {
        "location": ["GeoProperty"], "pm25": ["Property"]}
    assert (await client.get(f"{V}/types/Unicorn")).status_code == 404
    attrs = (await client.get(f"{V}/attributes")).json()
    assert attrs["attributeList"] == ["location", "pm25", "powerState"]
    pm = (await client.get(f"{V}/attributes/pm25")).json()
    assert pm["attributeCount"] == 2 and pm["typeNames"] == ["AirQualityObserved"]
    assert (await client.get(f"{V}/attributes/nothing")).status_code == 404
