"""Open311 GeoReport v2, exercised by a small client written from the spec (JSON and XML)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any
from xml.etree import ElementTree as ET

import httpx
import pytest
from ops_incidents_helpers import BASE, D1, IN_D1, IN_D2, Clock, act
from sqlalchemy import select

from cityos.core import clock
from cityos.ops.incidents.models import incidents
from cityos.ops.open311.models import api_keys

V2 = "/open311/v2"
LISTS = {"attributes", "values", "endpoints", "formats"}


def _element(element: ET.Element) -> Any:
    children = list(element)
    if not children:
        return element.text
    if element.tag in LISTS:
        return [_element(c) for c in children]
    return {c.tag: _element(c) for c in children}


class GeoReport:
    """A GeoReport v2 client: every call in JSON or XML, answers as Python values in the JSON shape."""

    def __init__(self, http: httpx.AsyncClient, fmt: str = "json") -> None:
        self.http = http
        self.fmt = fmt

    def parse(self, response: httpx.Response) -> Any:
        if self.fmt == "json":
            assert response.headers["content-type"].startswith("application/json")
            return response.json()
        assert response.headers["content-type"].startswith("text/xml")
        assert response.content.startswith(b"<?xml")
        root = ET.fromstring(response.content)
        if root.tag in ("services", "service_requests", "errors"):
            return [_element(c) for c in root]
        return _element(root)

    async def get(self, path: str, params: Any = None, status: int = 200) -> Any:
        response = await self.http.get(f"{V2}/{path}.{self.fmt}", params=params)
        assert response.status_code == status, response.text
        return self.parse(response)

    async def post(self, form: dict[str, Any], status: int = 201, headers: dict[str, str] | None = None) -> Any:
        response = await self.http.post(f"{V2}/requests.{self.fmt}", data=form, headers=headers)
        assert response.status_code == status, response.text
        return self.parse(response)

    async def error(self, path: str, status: int, params: Any = None, form: dict[str, Any] | None = None,
                    headers: dict[str, str] | None = None) -> str:
        if form is not None:
            errors = await self.post(form, status, headers)
        else:
            errors = await self.get(path, params, status)
        assert isinstance(errors, list) and len(errors) == 1
        assert int(errors[0]["code"]) == status
        description: str = errors[0]["description"]
        assert description
        return description


@pytest.fixture
async def api_key(client: httpx.AsyncClient, auth: Any, districts: list[str]) -> str:
    response = await client.post("/api/ops/open311/keys", json={"name": "citizen app"})
    assert response.status_code == 201, response.text
    key: str = response.json()["api_key"]
    return key


def report(api_key: str, **extra: Any) -> dict[str, Any]:
    form = {"api_key": api_key, "service_code": "pothole", "lat": str(IN_D1[1]), "long": str(IN_D1[0]),
            "description": "Deep hole by the bus stop", "email": "li.lei@example.cn", "first_name": "Lei",
            "last_name": "Li", "phone": "13800001234", "device_id": "phone-77", "account_id": "acc-9",
            "attribute[size]": "large", "attribute[depth_cm]": "12"}
    form.update(extra)
    return form


@pytest.mark.parametrize("fmt", ["json", "xml"])
async def test_discovery_services_and_definitions(anon_client: httpx.AsyncClient, fmt: str) -> None:
    geo = GeoReport(anon_client, fmt)
    discovery = await geo.get("discovery")
    endpoint = discovery["endpoints"][0]
    assert endpoint["specification"] == "http://wiki.open311.org/GeoReport_v2"
    assert endpoint["url"].endswith("/open311/v2") and "text/xml" in endpoint["formats"]
    services = await geo.get("services")
    by_code = {s["service_code"]: s for s in services}
    assert {"pothole", "streetlight", "noise", "air_pollution", "flooding"} <= set(by_code)
    pothole = by_code["pothole"]
    assert set(pothole) == {"service_code", "service_name", "description", "metadata", "type", "keywords", "group"}
    assert str(pothole["metadata"]).lower() == "true" and pothole["type"] == "realtime"
    assert str(by_code["traffic_signal"]["metadata"]).lower() == "false"
    definition = await geo.get("services/pothole")
    assert definition["service_code"] == "pothole"
    size = definition["attributes"][0]
    assert {"variable", "code", "datatype", "required", "datatype_description", "order", "description",
            "values"} <= set(size)
    assert size["code"] == "size" and size["datatype"] == "singlevaluelist"
    assert [v["key"] for v in size["values"]] == ["small", "medium", "large"]
    assert "not found" in await geo.error("services/nonexistent", 404)
    assert "not found" in await geo.error("services", 404, params={"jurisdiction_id": "elsewhere"})
    assert (await geo.get("services", params={"jurisdiction_id": "cityos"}))


@pytest.mark.parametrize("fmt", ["json", "xml"])
async def test_post_then_get_requests(app: Any, anon_client: httpx.AsyncClient, client: httpx.AsyncClient,
                                      auth: Any, api_key: str, fmt: str) -> None:
    geo = GeoReport(anon_client, fmt)
    posted = await geo.post(report(api_key))
    assert len(posted) == 1
    request_id = posted[0]["service_request_id"]
    assert posted[0]["account_id"] == "acc-9" and "transport" in posted[0]["service_notice"]
    # the report is an incident, routed and located
    incident = (await client.get(f"{BASE}/{request_id}", headers=auth.headers("operator"))).json()
    assert (incident["source"], incident["department"], incident["district"]) == ("open311", "transport", D1)
    assert incident["attributes"] == {"size": "large", "depth_cm": 12.0}
    # personal fields never come back, and are encrypted at rest
    got = (await geo.get(f"requests/{request_id}"))[0]
    assert got["service_request_id"] == request_id and got["status"] == "open"
    assert got["service_code"] == "pothole" and got["agency_responsible"] == "transport"
    assert float(got["lat"]) == IN_D1[1] and float(got["long"]) == IN_D1[0]
    assert {"requested_datetime", "updated_datetime", "expected_datetime", "status_notes", "description",
            "address", "media_url", "service_name"} <= set(got)
    text = str(got) + str(await geo.get("requests"))
    for secret in ("li.lei", "13800001234", "phone-77", "acc-9", "Lei"):
        assert secret not in text
    async with app.state.engine.connect() as conn:
        stored = (await conn.execute(select(incidents.c.reporter_enc).where(
            incidents.c.id == int(request_id)))).scalar_one()
    assert "li.lei" not in stored and "13800001234" not in stored
    reporter = (await client.get(f"{BASE}/{request_id}/reporter", headers=auth.headers("operator"))).json()
    assert reporter["email"] == "li.lei@example.cn"
    # status follows the incident
    operator = auth.headers("operator")
    for step in ("dispatch", "accept", "arrive"):
        await act(client, operator, request_id, step)
    await act(client, operator, request_id, "resolve", note="Filled with asphalt")
    closed = (await geo.get(f"requests/{request_id}"))[0]
    assert closed["status"] == "closed" and closed["status_notes"] == "Filled with asphalt"
    assert [r["service_request_id"] for r in await geo.get("requests", {"status": "closed"})] == [request_id]
    assert await geo.get("requests", {"status": "open"}) == []


async def test_requests_filters_window_and_merge(client: httpx.AsyncClient, anon_client: httpx.AsyncClient,
                                                 api_key: str, fixed_clock: Clock) -> None:
    geo = GeoReport(anon_client)
    old = (await geo.post(report(api_key)))[0]["service_request_id"]
    fixed_clock.advance(days=100)
    first = (await geo.post(report(api_key)))[0]["service_request_id"]
    merged = await geo.post(report(api_key, lat="20.0105"))
    assert "joins request" in merged[0]["service_notice"]
    lamp_form = {k: v for k, v in report(api_key).items() if not k.startswith("attribute")}
    lamp_form.update({"service_code": "streetlight", "attribute[pole_number]": "SL-17", "lat": str(IN_D2[1]),
                      "long": str(IN_D2[0])})
    lamp = (await geo.post(lamp_form))[0]["service_request_id"]
    recent = [r["service_request_id"] for r in await geo.get("requests")]
    assert old not in recent and set(recent) == {first, merged[0]["service_request_id"], lamp}
    assert [r["service_request_id"] for r in await geo.get("requests", {"service_code": "streetlight"})] == [lamp]
    start = clock.iso(fixed_clock.at - timedelta(days=200))
    end = clock.iso(fixed_clock.at - timedelta(days=50))
    assert [r["service_request_id"] for r in await geo.get("requests", {"start_date": start,
                                                                        "end_date": end})] == [old]
    by_id = await geo.get("requests", {"service_request_id": f"{old},{lamp},999999"})
    assert {r["service_request_id"] for r in by_id} == {old, lamp}
    child = (await geo.get(f"requests/{merged[0]['service_request_id']}"))[0]
    assert child["status"] == "open" and child["service_notice"] == f"Merged into request {first}"
    token_rows = await anon_client.get(f"{V2}/requests.json")
    assert token_rows.status_code == 200


async def test_tokens(app: Any, anon_client: httpx.AsyncClient, api_key: str) -> None:
    posted = (await GeoReport(anon_client).post(report(api_key)))[0]
    async with app.state.engine.connect() as conn:
        token = (await conn.execute(select(incidents.c.token).where(
            incidents.c.id == int(posted["service_request_id"])))).scalar_one()
    for fmt in ("json", "xml"):
        geo = GeoReport(anon_client, fmt)
        found = await geo.get(f"tokens/{token}")
        assert found == [{"service_request_id": posted["service_request_id"], "token": token}]
        await geo.error("tokens/0123456789abcdef0123456789abcdef", 404)
        await geo.error("tokens/' OR 1=1 --", 404)


@pytest.mark.parametrize("fmt", ["json", "xml"])
async def test_post_errors(app: Any, anon_client: httpx.AsyncClient, auth: Any, api_key: str, fmt: str) -> None:
    geo = GeoReport(anon_client, fmt)
    form = report(api_key)
    cases: list[tuple[int, dict[str, Any], str]] = [
        (400, {k: v for k, v in form.items() if k != "api_key"}, "api_key"),
        (403, {**form, "api_key": "o311_wrong"}, "api_key"),
        (400, {k: v for k, v in form.items() if k != "service_code"}, "service_code"),
        (404, {**form, "service_code": "unicorns"}, "service_code"),
        (404, {**form, "service_code": "'; DROP TABLE ops_incidents; --"}, "service_code"),
        (400, {k: v for k, v in form.items() if k not in ("lat", "long")}, "location"),
        (400, {k: v for k, v in form.items() if k != "long"}, "lat and long"),
        (400, {**form, "lat": "north"}, "lat"),
        (400, {**form, "lat": "91"}, "lat"),
        (400, {**form, "long": "nan"}, "long"),
        (400, {**form, "attribute[size]": "gigantic"}, "size"),
        (400, {**form, "attribute[depth_cm]": "deep"}, "depth_cm"),
        (400, {**form, "attribute[colour]": "red"}, "colour"),
        (400, {**form, "email": "not-an-address"}, "email"),
        (400, {**form, "phone": "call me maybe"}, "phone"),
        (400, {**form, "media_url": "javascript:alert(1)"}, "media_url"),
        (400, {**form, "description": "x" * 4001}, "description"),
        (400, {**form, "surprise": "1"}, "surprise"),
        (400, {**{k: v for k, v in form.items() if not k.startswith("attribute")}, "service_code": "streetlight"},
         "pole_number"),
        (404, {**form, "jurisdiction_id": "atlantis"}, "jurisdiction_id"),
    ]
    for status, bad, word in cases:
        description = await geo.error("requests", status, form=bad)
        assert word in description, (word, description)
    # an address alone is a location
    assert await geo.post({k: v for k, v in form.items() if k not in ("lat", "long")} | {"address_string": "1 Main St"})
    # wrong content type, malformed body
    response = await anon_client.post(f"{V2}/requests.{fmt}", json={"api_key": api_key})
    assert response.status_code == 415 and "code" in response.text
    response = await anon_client.post(f"{V2}/requests.{fmt}", content=b"\xff\xfe%%%",
                                      headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert response.status_code == 400
    # a revoked key stops working
    async with app.state.engine.connect() as conn:
        key_id = (await conn.execute(select(api_keys.c.id))).scalar_one()
    admin = auth.headers("sys_admin")
    assert (await anon_client.delete(f"/api/ops/open311/keys/{key_id}", headers=admin)).status_code == 204
    assert "api_key" in await geo.error("requests", 403, form=form)
    # a bad bearer token: 401 in the GeoReport format; sys_admin may not report
    await geo.error("requests", 401, form=report(api_key), headers={"Authorization": "Bearer nope"})


@pytest.mark.parametrize("fmt", ["json", "xml"])
async def test_get_errors(anon_client: httpx.AsyncClient, api_key: str, fmt: str) -> None:
    geo = GeoReport(anon_client, fmt)
    for params, word in (({"service_request_id": "1 OR 1=1"}, "service_request_id"),
                         ({"service_request_id": "1,abc"}, "service_request_id"),
                         ({"start_date": "yesterday"}, "start_date"),
                         ({"end_date": "2026-02-30T00:00:00Z"}, "end_date"),
                         ({"start_date": "2026-03-01T00:00:00Z", "end_date": "2026-01-01T00:00:00Z"}, "after"),
                         ({"status": "pending"}, "status"),
                         ({"service_code": "pothole' OR '1'='1"}, "service_code")):
        assert word in await geo.error("requests", 400, params=params)
    await geo.error("requests/12345678", 404)
    await geo.error("requests/abc", 404)
    await geo.error("nothing-here", 404)
    response = await anon_client.get(f"{V2}/services.yaml")
    assert response.status_code == 404 and response.json()[0]["code"] == 404
    response = await anon_client.get(f"{V2}/services.{fmt}", headers={"Authorization": "Bearer broken"})
    assert response.status_code == 401


async def test_citizen_reporter_follows_own_request(client: httpx.AsyncClient, anon_client: httpx.AsyncClient,
                                                   auth: Any, api_key: str) -> None:
    citizen = auth.headers("citizen", user_id="citizen-7")
    posted = (await GeoReport(anon_client).post(report(api_key), headers=citizen))[0]
    mine = (await client.get(BASE, headers=citizen)).json()
    assert [i["id"] for i in mine["items"]] == [posted["service_request_id"]]
    assert (await client.get(BASE, headers=auth.headers("citizen"))).json()["total"] == 0
    sys_admin = auth.headers("sys_admin")
    await GeoReport(anon_client).error("requests", 403, form=report(api_key), headers=sys_admin)
    other_tenant = auth.headers("citizen", tenant="elsewhere")
    await GeoReport(anon_client).error("requests", 403, form=report(api_key), headers=other_tenant)


async def test_key_admin(client: httpx.AsyncClient, anon_client: httpx.AsyncClient, auth: Any) -> None:
    created = (await client.post("/api/ops/open311/keys", json={"name": "kiosk"})).json()
    assert created["api_key"].startswith("o311_")
    listed = (await client.get("/api/ops/open311/keys")).json()
    assert [k["name"] for k in listed] == ["kiosk"] and "api_key" not in listed[0]
    assert created["api_key"] not in str(listed)
    operator = auth.headers("operator")
    assert (await client.post("/api/ops/open311/keys", headers=operator, json={"name": "x"})).status_code == 403
    assert (await anon_client.get("/api/ops/open311/keys")).status_code == 401
    for bad in (b"{", b'{"name": 5}', b'{"name": ""}', b'{"name": "a", "b": 1}'):
        response = await client.post("/api/ops/open311/keys", content=bad,
                                     headers={"Content-Type": "application/json"})
        assert response.status_code == 400, bad
    assert (await client.delete("/api/ops/open311/keys/nope")).status_code == 404
    assert (await client.delete(f"/api/ops/open311/keys/{created['id']}")).status_code == 204
    assert (await client.delete(f"/api/ops/open311/keys/{created['id']}")).status_code == 404
