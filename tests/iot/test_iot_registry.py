"""Device registry and provisioning over HTTP: profiles, devices, bulk, CSV, tokens, errors."""

from __future__ import annotations

from typing import Any

import pytest

AQ = {"name": "aq-1", "profile": "air-quality", "lon": 110.3, "lat": 20.0, "district": "Meilan", "department": "EPB"}


async def provision(client: Any, **over: Any) -> dict[str, Any]:
    response = await client.post("/api/iot/devices", json={**AQ, **over})
    assert response.status_code == 201, response.text
    return dict(response.json())


async def test_profiles(client: Any) -> None:
    response = await client.get("/api/iot/profiles")
    assert response.status_code == 200
    ids = {p["id"] for p in response.json()}
    assert {"air-quality", "water-quality", "smoke", "wearable"} <= ids and len(ids) >= 11
    one = await client.get("/api/iot/profiles/noise")
    assert one.json()["entityType"] == "NoiseLevelObserved"
    missing = await client.get("/api/iot/profiles/nope")
    assert missing.status_code == 404 and missing.json()["type"].endswith("ResourceNotFound")


async def test_provision_creates_registry_row_and_hub_entities(client: Any) -> None:
    body = await provision(client)
    assert body["id"] == "urn:ngsi-ld:Device:aq-1" and len(body["token"]) >= 20
    device = (await client.get("/api/iot/devices/urn:ngsi-ld:Device:aq-1")).json()
    assert device["status"] == "inactive" and device["district"] == "Meilan" and "token" not in device
    assert (await client.get("/api/iot/devices/aq-1")).json()["id"] == body["id"]
    entity = (await client.get("/ngsi-ld/v1/entities/urn:ngsi-ld:Device:aq-1?options=keyValues")).json()
    assert entity["type"] == "Device" and entity["deviceState"] == "inactive"
    assert entity["location"]["coordinates"] == [110.3, 20.0] and entity["department"] == "EPB"
    observed = (await client.get("/ngsi-ld/v1/entities/urn:ngsi-ld:AirQualityObserved:aq-1")).json()
    assert observed["refDevice"]["object"] == "urn:ngsi-ld:Device:aq-1"


async def test_provision_errors(client: Any) -> None:
    await provision(client)
    duplicate = await client.post("/api/iot/devices", json=AQ)
    assert duplicate.status_code == 409
    bad_profile = await client.post("/api/iot/devices", json={**AQ, "name": "x", "profile": "nope"})
    assert bad_profile.status_code == 400
    bad_name = await client.post("/api/iot/devices", json={**AQ, "name": "a/b#"})
    assert bad_name.status_code == 400
    bad_lon = await client.post("/api/iot/devices", json={**AQ, "name": "y", "lon": 500})
    assert bad_lon.status_code == 400
    not_json = await client.post("/api/iot/devices/bulk", content=b"[{", headers={"Content-Type": "application/json"})
    assert not_json.status_code == 400


async def test_bulk_reports_row_errors(client: Any) -> None:
    rows = [{**AQ, "name": "b-0"}, {**AQ, "name": "b-1", "profile": "nope"}, {**AQ, "name": "b-0"},
            {"name": "b-3"}, {**AQ, "name": "b-4", "profile": "noise"}]
    response = await client.post("/api/iot/devices/bulk", json=rows)
    assert response.status_code == 207
    body = response.json()
    assert [c["row"] for c in body["created"]] == [0, 4]
    assert [e["row"] for e in body["errors"]] == [1, 2, 3]
    everything_ok = await client.post("/api/iot/devices/bulk", json=[{**AQ, "name": "b-9"}])
    assert everything_ok.status_code == 201
    again = await client.post("/api/iot/devices/bulk", json=[{**AQ, "name": "b-9"}, {**AQ, "name": "b-10"}])
    assert again.status_code == 207 and again.json()["errors"][0]["row"] == 0
    assert [c["name"] for c in again.json()["created"]] == ["b-10"]


async def test_csv_import_with_row_numbers(client: Any) -> None:
    csv_text = ("name,profile,lon,lat,district,department\n"
                "c-1,noise,110.1,20.1,Longhua,EPB\n"
                "c-2,nope,110.1,20.1,Longhua,EPB\n"
                "c-3,noise,abc,20.1,Longhua,EPB\n"
                "c-4,parking-spot,110.2,20.2,Meilan,Transport\n")
    response = await client.post("/api/iot/devices/import", content=csv_text.encode(),
                                 headers={"Content-Type": "text/csv"})
    assert response.status_code == 207, response.text
    body = response.json()
    assert [c["row"] for c in body["created"]] == [2, 5]
    assert [e["row"] for e in body["errors"]] == [3, 4]
    no_header = await client.post("/api/iot/devices/import", content=b"a,b\n1,2\n",
                                  headers={"Content-Type": "text/csv"})
    assert no_header.status_code == 400
    wrong_type = await client.post("/api/iot/devices/import", content=b"x", headers={"Content-Type": "image/png"})
    assert wrong_type.status_code == 415


async def test_list_filters_and_paging(client: Any) -> None:
    rows = [{**AQ, "name": f"l-{i:02d}", "district": "A" if i % 2 else "B"} for i in range(7)]
    assert (await client.post("/api/iot/devices/bulk", json=rows)).status_code == 201
    page = (await client.get("/api/iot/devices?limit=3&offset=0")).json()
    assert page["total"] == 7 and [d["name"] for d in page["items"]] == ["l-00", "l-01", "l-02"]
    page2 = (await client.get("/api/iot/devices?limit=3&offset=6")).json()
    assert [d["name"] for d in page2["items"]] == ["l-06"]
    only_a = (await client.get("/api/iot/devices?district=A")).json()
    assert only_a["total"] == 3
    assert (await client.get("/api/iot/devices?profile=noise")).json()["total"] == 0
    assert (await client.get("/api/iot/devices?limit=0")).status_code == 400


async def test_token_rotation_and_revocation(client: Any) -> None:
    old = (await provision(client))["token"]
    assert (await client.post(f"/api/v1/{old}/telemetry", json={"pm25": 1})).status_code == 200
    rotated = await client.post("/api/iot/devices/aq-1/token")
    new = rotated.json()["token"]
    assert rotated.status_code == 200 and new != old
    assert (await client.post(f"/api/v1/{old}/telemetry", json={"pm25": 2})).status_code == 401
    assert (await client.post(f"/api/v1/{new}/telemetry", json={"pm25": 3})).status_code == 200
    assert (await client.delete("/api/iot/devices/aq-1/token")).status_code == 204
    assert (await client.post(f"/api/v1/{new}/telemetry", json={"pm25": 4})).status_code == 401


async def test_unknown_ids_are_404(client: Any) -> None:
    for method, path in (("GET", "/api/iot/devices/nope"), ("DELETE", "/api/iot/devices/nope"),
                         ("POST", "/api/iot/devices/nope/token"), ("DELETE", "/api/iot/devices/nope/token"),
                         ("GET", "/api/iot/dead-letters/999"), ("POST", "/api/iot/dead-letters/999/replay"),
                         ("GET", "/api/iot/rpc/999")):
        response = await client.request(method, path)
        assert response.status_code == 404, (method, path, response.text)
    rpc = await client.post("/api/iot/devices/nope/rpc", json={"method": "reboot"})
    assert rpc.status_code == 404


async def test_delete_device(client: Any) -> None:
    token = (await provision(client))["token"]
    assert (await client.delete("/api/iot/devices/aq-1")).status_code == 204
    assert (await client.get("/api/iot/devices/aq-1")).status_code == 404
    assert (await client.get("/ngsi-ld/v1/entities/urn:ngsi-ld:Device:aq-1")).status_code == 404
    assert (await client.post(f"/api/v1/{token}/telemetry", json={"pm25": 1})).status_code == 401


async def test_management_api_needs_device_manage(client: Any, anon_client: Any, auth: Any) -> None:
    assert (await anon_client.get("/api/iot/devices")).status_code == 401
    wrong = await anon_client.get("/api/iot/devices", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    citizen = await client.get("/api/iot/devices", headers=auth.headers("citizen"))
    assert citizen.status_code == 403
    operator = await client.get("/api/iot/devices", headers=auth.headers("operator"))
    assert operator.status_code == 200


async def test_broker_hooks_take_the_broker_secret(client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CITYOS_IOT_ADMIN_TOKEN", "s3cret-admin-token")
    wrong = await client.post("/api/iot/mqtt/auth", json={"username": "x"})
    assert wrong.status_code == 401
    right = await client.post("/api/iot/mqtt/auth", json={"username": "x"},
                              headers={"Authorization": "Bearer s3cret-admin-token"})
    assert right.status_code == 200
    assert right.json()["result"] == "deny"


async def test_mqtt_auth_and_acl_hooks(client: Any) -> None:
    token = (await provision(client))["token"]
    allow = (await client.post("/api/iot/mqtt/auth", json={"username": token, "clientid": "x"})).json()
    assert allow["result"] == "allow" and allow["client_attrs"]["device"] == "aq-1"
    deny = (await client.post("/api/iot/mqtt/auth", json={"username": "bogus"})).json()
    assert deny["result"] == "deny" and deny["ok"] is False
    acl = await client.post("/api/iot/mqtt/acl", json={"username": token, "topic": "cityos/devices/aq-1/telemetry",
                                                        "action": "publish"})
    assert acl.json()["result"] == "allow"
    other = await client.post("/api/iot/mqtt/acl", json={"username": token, "topic": "cityos/devices/zz/telemetry",
                                                          "action": "publish"})
    assert other.json()["result"] == "deny"


async def test_a_device_names_the_gateway_it_reports_through(client: Any) -> None:
    await provision(client, name="gw-a", profile="smart-meter", gateway=True)
    await provision(client, name="aq-g", gatewayName="gw-a")
    device = (await client.get("/api/iot/devices/aq-g")).json()
    assert device["gatewayName"] == "gw-a" and device["gateway"] is False
    entity = (await client.get("/ngsi-ld/v1/entities/urn:ngsi-ld:Device:aq-g?options=keyValues")).json()
    assert entity["refGateway"] == "urn:ngsi-ld:Device:gw-a"  # what the incident correlation follows
    bad = await client.post("/api/iot/devices", json={**AQ, "name": "aq-h", "gatewayName": "not a name!"})
    assert bad.status_code in (400, 422) and bad.json()["title"]
    assert (await client.get("/api/iot/devices/aq-h")).status_code == 404  # nothing half-made
