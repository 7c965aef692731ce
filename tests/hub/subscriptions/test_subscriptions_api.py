"""Subscription CRUD and every bad-input path (ETSI GS CIM 009 v1.8.1 §5.8, §5.2.12)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from hub.helpers import JSON, LD, link
from hub.subscriptions.notify_helpers import S, subscription

URI = "http://127.0.0.1:9/notify"
ERR = "https://uri.etsi.org/ngsi-ld/errors/"


async def _create(client: httpx.AsyncClient, body: dict[str, Any], headers: dict[str, str] | None = None) -> str:
    r = await client.post(S, json=body, headers=headers or JSON)
    assert r.status_code == 201, r.text
    return str(r.headers["Location"].rsplit("/", 1)[1])


async def test_create_generates_id_and_defaults(client: httpx.AsyncClient) -> None:
    r = await client.post(S, json=subscription(URI), headers=JSON)
    assert r.status_code == 201, r.text
    location = r.headers["Location"]
    assert location.startswith(f"{S}/urn:ngsi-ld:Subscription:")
    got = (await client.get(location)).json()
    assert got["id"] == location.rsplit("/", 1)[1]
    assert got["type"] == "Subscription"
    assert got["entities"] == [{"type": "AirQualityObserved"}]
    # v1.8.1 §5.2.12: the default notificationTrigger is attributeCreated and attributeUpdated.
    assert got["notificationTrigger"] == ["attributeCreated", "attributeUpdated"]
    # isActive only when given; notification.status once a notification was attempted; createdAt and
    # modifiedAt only with options=sysAttrs (tests/hub/test_conformance_subscriptions.py).
    assert "isActive" not in got and got["status"] == "active"
    notification = got["notification"]
    assert notification["endpoint"] == {"uri": URI, "accept": "application/json"}
    assert notification["format"] == "normalized"
    # No counters before the first notification (as no lastNotification): §5.2.14 "provided by the system".
    assert "status" not in notification and "timesSent" not in notification and "timesFailed" not in notification
    assert "createdAt" not in got
    assert (await client.get(location, params={"options": "sysAttrs"})).json()["createdAt"].endswith("Z")


async def test_create_with_id_and_duplicate(client: httpx.AsyncClient) -> None:
    body = subscription(URI, id="urn:ngsi-ld:Subscription:mine", q="pm25>35", throttling=5,
                        watchedAttributes=["pm25"], subscriptionName="smog", description="PM2.5 above 35")
    assert await _create(client, body) == "urn:ngsi-ld:Subscription:mine"
    r = await client.post(S, json=body, headers=JSON)
    assert r.status_code == 409
    assert r.json()["type"] == ERR + "AlreadyExists"
    got = (await client.get(f"{S}/urn:ngsi-ld:Subscription:mine")).json()
    assert got["q"] == "pm25>35" and got["throttling"] == 5 and got["watchedAttributes"] == ["pm25"]
    assert got["subscriptionName"] == "smog"


async def test_list_paging_and_count(client: httpx.AsyncClient) -> None:
    for n in range(5):
        await _create(client, subscription(URI, id=f"urn:ngsi-ld:Subscription:{n}"))
    r = await client.get(S, params={"limit": 2, "offset": 1, "count": "true"})
    assert r.status_code == 200
    assert [s["id"] for s in r.json()] == ["urn:ngsi-ld:Subscription:1", "urn:ngsi-ld:Subscription:2"]
    assert r.headers["NGSILD-Results-Count"] == "5"
    assert 'rel="next"' in r.headers["Link"] and 'rel="prev"' in r.headers["Link"]
    assert len((await client.get(S)).json()) == 5


async def test_patch_updates_members_and_status(client: httpx.AsyncClient) -> None:
    sub_id = await _create(client, subscription(URI, q="pm25>35"))
    r = await client.patch(f"{S}/{sub_id}", json={"isActive": False, "q": "pm25>50",
                                                 "notification": {"endpoint": {"uri": URI}, "format": "keyValues"}},
                           headers=JSON)
    assert r.status_code == 204, r.text
    got = (await client.get(f"{S}/{sub_id}")).json()
    assert got["status"] == "paused" and got["isActive"] is False and got["q"] == "pm25>50"
    assert got["notification"]["format"] == "keyValues"
    r = await client.patch(f"{S}/{sub_id}", json={"q": None, "isActive": True}, headers=JSON)
    assert r.status_code == 204, r.text
    got = (await client.get(f"{S}/{sub_id}")).json()
    assert "q" not in got and got["status"] == "active"


async def test_delete(client: httpx.AsyncClient) -> None:
    sub_id = await _create(client, subscription(URI))
    assert (await client.delete(f"{S}/{sub_id}")).status_code == 204
    r = await client.get(f"{S}/{sub_id}")
    assert r.status_code == 404 and r.json()["type"] == ERR + "ResourceNotFound"
    assert (await client.delete(f"{S}/{sub_id}")).status_code == 404


async def test_unknown_ids_are_404(client: httpx.AsyncClient) -> None:
    missing = f"{S}/urn:ngsi-ld:Subscription:nope"
    assert (await client.get(missing)).status_code == 404
    assert (await client.patch(missing, json={"isActive": False}, headers=JSON)).status_code == 404
    assert (await client.delete(missing)).status_code == 404
    r = await client.get(S, headers={"NGSILD-Tenant": "nobody"})
    assert r.status_code == 404 and r.json()["type"] == ERR + "NonexistentTenant"


async def test_context_expands_and_compacts(client: httpx.AsyncClient) -> None:
    ctx = [{"Air": "https://example.org/Air", "pm": "https://example.org/pm25"},
           "https://uri.etsi.org/ngsi-ld/v1/ngsi-ld-core-context-v1.8.jsonld"]
    body = {"@context": ctx, **subscription(URI, entities=[{"type": "Air"}], watchedAttributes=["pm"])}
    sub_id = await _create(client, body, LD)
    core = (await client.get(f"{S}/{sub_id}")).json()
    assert core["entities"] == [{"type": "https://example.org/Air"}]
    assert core["watchedAttributes"] == ["https://example.org/pm25"]
    mine = (await client.get(f"{S}/{sub_id}", headers={"Accept": "application/ld+json"})).json()
    assert "@context" in mine


async def test_tenants_are_separate(client: httpx.AsyncClient) -> None:
    sub_id = await _create(client, subscription(URI), {**JSON, "NGSILD-Tenant": "city-a"})
    assert (await client.get(f"{S}/{sub_id}", headers={"NGSILD-Tenant": "city-a"})).status_code == 200
    assert (await client.get(f"{S}/{sub_id}")).status_code == 404


BAD: list[tuple[str, dict[str, Any]]] = [
    ("no entities nor watchedAttributes", {"entities": None}),
    ("entities not an array", {"entities": {"type": "X"}}),
    ("empty entities", {"entities": []}),
    ("selector without type", {"entities": [{"id": "urn:a:b"}]}),
    ("selector id not a URI", {"entities": [{"type": "X", "id": "not a uri"}]}),
    ("bad idPattern", {"entities": [{"type": "X", "idPattern": "(("}]}),
    ("bad q", {"q": "pm25>>3"}),
    ("q not a string", {"q": 5}),
    ("bad georel", {"geoQ": {"georel": "nearby", "geometry": "Point", "coordinates": [1, 2]}}),
    ("geoQ without coordinates", {"geoQ": {"georel": "within", "geometry": "Polygon"}}),
    ("geoQ not an object", {"geoQ": "near"}),
    ("bad geometry", {"geoQ": {"georel": "within", "geometry": "Polygon", "coordinates": [[1, 2]]}}),
    ("ftp endpoint", {"notification": {"endpoint": {"uri": "ftp://example.org/x"}}}),
    ("endpoint not a URL", {"notification": {"endpoint": {"uri": "just text"}}}),
    ("mqtt without topic", {"notification": {"endpoint": {"uri": "mqtt://127.0.0.1:1883"}}}),
    ("endpoint without uri", {"notification": {"endpoint": {}}}),
    ("no notification", {"notification": None}),
    ("notification without endpoint", {"notification": {"format": "keyValues"}}),
    ("bad format", {"notification": {"endpoint": {"uri": URI}, "format": "csv"}}),
    ("bad accept", {"notification": {"endpoint": {"uri": URI, "accept": "text/plain"}}}),
    ("bad receiverInfo", {"notification": {"endpoint": {"uri": URI, "receiverInfo": [{"k": "v"}]}}}),
    ("bad MQTT-QoS", {"notification": {"endpoint": {"uri": "mqtt://h/t", "notifierInfo": [
        {"key": "MQTT-QoS", "value": "3"}]}}}),
    ("attributes not a list", {"notification": {"endpoint": {"uri": URI}, "attributes": "pm25"}}),
    ("showChanges not a boolean", {"notification": {"endpoint": {"uri": URI}, "showChanges": "yes"}}),
    ("timeInterval with watchedAttributes", {"timeInterval": 10, "watchedAttributes": ["pm25"]}),
    ("timeInterval not positive", {"timeInterval": 0}),
    ("throttling negative", {"throttling": -1}),
    ("throttling a string", {"throttling": "5"}),
    ("expiresAt in the past", {"expiresAt": "2001-01-01T00:00:00Z"}),
    ("expiresAt not a date", {"expiresAt": "tomorrow"}),
    ("isActive not a boolean", {"isActive": "yes"}),
    ("unknown trigger", {"notificationTrigger": ["entityExploded"]}),
    ("watchedAttributes a string", {"watchedAttributes": "pm25"}),
    ("wrong type", {"type": "Subscriptions"}),
    ("id not a URI", {"id": "sub 1"}),
    ("jsonldContext not a URL", {"jsonldContext": "ctx"}),
]


@pytest.mark.parametrize(("case", "change"), BAD, ids=[case for case, _ in BAD])
async def test_bad_input_is_400(client: httpx.AsyncClient, case: str, change: dict[str, Any]) -> None:
    body = subscription(URI, **change)
    body = {k: v for k, v in body.items() if v is not None}
    r = await client.post(S, json=body, headers=JSON)
    assert r.status_code == 400, (case, r.text)
    problem = r.json()
    assert problem["type"] == ERR + "BadRequestData" and problem["detail"], case


async def test_bad_bodies(client: httpx.AsyncClient) -> None:
    r = await client.post(S, json=[subscription(URI)], headers=JSON)
    assert r.status_code == 400
    r = await client.post(S, content=b"{not json", headers=JSON)
    assert r.status_code == 400
    r = await client.post(S, json=subscription(URI), headers={"Content-Type": "text/plain"})
    assert r.status_code == 415
    r = await client.post(S, json={"@context": "x", **subscription(URI)}, headers=JSON)
    assert r.status_code == 400


async def test_bad_patches(client: httpx.AsyncClient) -> None:
    sub_id = await _create(client, subscription(URI, watchedAttributes=["pm25"]))
    url = f"{S}/{sub_id}"
    for fragment in ({"q": "(("}, {"timeInterval": 5}, {"id": "urn:ngsi-ld:Subscription:other"},
                     {"entities": None, "watchedAttributes": None}, {"notification": None}, {"unknown": 1},
                     {"expiresAt": "2000-01-01T00:00:00Z"}):
        r = await client.patch(url, json=fragment, headers=JSON)
        assert r.status_code == 400, (fragment, r.text)
    assert (await client.get(url)).json()["watchedAttributes"] == ["pm25"]


async def test_link_context_on_create(client: httpx.AsyncClient) -> None:
    # A Link to a context that cannot be fetched: 503 LdContextNotAvailable, nothing stored.
    r = await client.post(S, json=subscription(URI), headers={**JSON, **link("http://127.0.0.1:9/ctx.jsonld")})
    assert r.status_code == 503
    assert (await client.get(S)).json() == []
