"""Context Source registrations (ETSI GS CIM 009 v1.8.1 §5.9, §5.10): CRUD, discovery, bad input, rights."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from auth_tokens import Auth
from hub.helpers import CORE, JSON, LD, link

R = "/ngsi-ld/v1/csourceRegistrations"
NGSI_ERRORS = "https://uri.etsi.org/ngsi-ld/errors/"
CTX = {"@context": {"Building": "https://example.org/city#Building", "height": "https://example.org/city#height",
                    "district": "https://example.org/city#district"}}


def registration(n: int = 1, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": f"urn:ngsi-ld:ContextSourceRegistration:r{n}",
        "type": "ContextSourceRegistration",
        "information": [{"entities": [{"type": "Building"}], "propertyNames": ["height"]}],
        "endpoint": "http://district.example:1026",
    }
    body.update(extra)
    return body


async def test_create_retrieve_with_defaults_and_terms_of_the_caller(client: httpx.AsyncClient) -> None:
    r = await client.post(R, json={**registration(), **CTX}, headers=LD)
    assert r.status_code == 201, r.text
    assert r.headers["location"] == f"{R}/urn:ngsi-ld:ContextSourceRegistration:r1"
    # With the same @context the caller gets its own terms back, mode and operations defaulted.
    got = await client.get(f"{R}/urn:ngsi-ld:ContextSourceRegistration:r1",
                           headers={"Accept": LD["Content-Type"]}, params={"options": "sysAttrs"})
    assert got.status_code == 200
    body = got.json()
    assert body["information"] == [{"entities": [{"type": "https://example.org/city#Building"}],
                                    "propertyNames": ["https://example.org/city#height"]}]
    assert body["mode"] == "inclusive" and body["operations"] == ["federationOps"]
    assert "createdAt" in body and "modifiedAt" in body
    plain = (await client.get(f"{R}/urn:ngsi-ld:ContextSourceRegistration:r1")).json()
    assert "createdAt" not in plain


async def test_link_header_context_and_additional_members(client: httpx.AsyncClient) -> None:
    body = registration(2, district={"value": "Haidian"}, mode="exclusive", operations=["retrieveOps", "updateOps"],
                        management={"timeout": 500, "localOnly": False},
                        contextSourceInfo=[{"key": "Authorization", "value": "Bearer s3cret"}])
    ctx_url = "http://127.0.0.1:9/never-fetched"  # a Link to an unreachable @context is refused below
    r = await client.post(R, json=body, headers=JSON | link(CORE))
    assert r.status_code == 201, r.text
    got = (await client.get(f"{R}/{body['id']}")).json()
    assert got["district"] == {"value": "Haidian"}
    assert got["mode"] == "exclusive" and got["operations"] == ["retrieveOps", "updateOps"]
    assert got["management"] == {"timeout": 500, "localOnly": False}
    # A credential for the source is write-only for anyone but the system administrator.
    assert got["contextSourceInfo"] == [{"key": "Authorization", "value": "Bearer s3cret"}]
    r = await client.post(R, json=registration(3), headers=JSON | link(ctx_url))
    assert r.status_code == 503 and r.json()["type"] == NGSI_ERRORS + "LdContextNotAvailable"


async def test_secrets_are_masked_for_operators(client: httpx.AsyncClient, auth: Auth) -> None:
    body = registration(4, contextSourceInfo=[{"key": "Authorization", "value": "Bearer s3cret"},
                                              {"key": "X-Region", "value": "north"}])
    assert (await client.post(R, json=body, headers=JSON)).status_code == 201
    got = (await client.get(f"{R}/{body['id']}", headers=auth.headers("operator"))).json()
    assert got["contextSourceInfo"] == [{"key": "Authorization", "value": "***"}, {"key": "X-Region", "value": "north"}]


async def test_query_by_type_attrs_id_pattern_q_geo_and_time(client: httpx.AsyncClient) -> None:
    city = "http://127.0.0.1:1026"
    regs = [
        registration(10, endpoint=city, location={"type": "Point", "coordinates": [116.3, 39.9]},
                     district={"value": "Haidian"}),
        {**registration(11, endpoint=city), "information": [
            {"entities": [{"type": "Vehicle", "id": "urn:ngsi-ld:Vehicle:A1"}], "propertyNames": ["speed"]}]},
        {**registration(12, endpoint=city), "information": [
            {"entities": [{"type": "Vehicle", "idPattern": "^urn:ngsi-ld:Vehicle:B"}]}]},
        {**registration(13, endpoint=city), "information": [{"propertyNames": ["height"]}],
         "observationInterval": {"startAt": "2020-01-01T00:00:00Z", "endAt": "2021-01-01T00:00:00Z"}},
    ]
    for reg in regs:
        assert (await client.post(R, json=reg, headers=JSON)).status_code == 201

    async def ids(**params: str) -> list[str]:
        r = await client.get(R, params=params)
        assert r.status_code == 200, r.text
        return sorted(item["id"].rsplit(":", 1)[1] for item in r.json())

    assert await ids(type="Building") == ["r10"]
    assert await ids(type="Vehicle") == ["r11", "r12"]
    assert await ids(type="Vehicle", id="urn:ngsi-ld:Vehicle:B7") == ["r12"]
    assert await ids(type="Vehicle", idPattern="A1$") == ["r11", "r12"]  # r12's own pattern cannot be compared
    assert await ids(attrs="speed") == ["r11", "r12"]  # r12 names no attribute: it offers every one
    assert await ids(attrs="height") == ["r10", "r12"]  # not r13: it holds only history (its interval ended)
    assert await ids(q='district=="Haidian"') == ["r10"]
    assert await ids(type="Building", georel="near;maxDistance==2000", geometry="Point",
                     coordinates="[116.3,39.91]") == ["r10"]
    assert await ids(type="Building", georel="near;maxDistance==200", geometry="Point",
                     coordinates="[116.3,39.91]") == []
    assert await ids(attrs="height", timerel="before", timeAt="2020-06-01T00:00:00Z") == ["r13"]
    page = await client.get(R, params={"type": "Vehicle", "limit": "1", "count": "true"})
    assert page.headers["NGSILD-Results-Count"] == "2" and len(page.json()) == 1
    assert 'rel="next"' in page.headers["Link"]


async def test_update_and_delete(client: httpx.AsyncClient) -> None:
    reg = registration(20)
    assert (await client.post(R, json=reg, headers=JSON)).status_code == 201
    change = {"endpoint": "http://other.example:1026", "registrationName": "haidian",
              "expiresAt": "2099-01-01T00:00:00Z"}
    r = await client.patch(f"{R}/{reg['id']}", json=change, headers=JSON)
    assert r.status_code == 204, r.text
    got = (await client.get(f"{R}/{reg['id']}")).json()
    assert got["endpoint"] == "http://other.example:1026" and got["registrationName"] == "haidian"
    assert got["expiresAt"] == "2099-01-01T00:00:00Z"
    r = await client.patch(f"{R}/{reg['id']}", json={"registrationName": None}, headers=JSON)
    assert r.status_code == 204
    assert "registrationName" not in (await client.get(f"{R}/{reg['id']}")).json()
    assert (await client.delete(f"{R}/{reg['id']}")).status_code == 204
    assert (await client.get(f"{R}/{reg['id']}")).status_code == 404
    assert (await client.delete(f"{R}/{reg['id']}")).status_code == 404


@pytest.mark.parametrize(("body", "why"), [
    ({"type": "ContextSourceRegistration", "endpoint": "http://a.example"}, "information"),
    ({"type": "ContextSourceRegistration", "information": None, "endpoint": "http://a.example"}, "information"),
    ({"type": "ContextSourceRegistration", "information": [{"entities": [{"type": "B"}]}]}, "endpoint"),
    (registration(type="Subscription"), "type"),
    (registration(id="not a uri"), "URI"),
    (registration(endpoint="ftp://a.example"), "endpoint"),
    (registration(endpoint="http://a.example:99999"), "port"),
    (registration(mode="sometimes"), "mode"),
    (registration(operations=["dropEverything"]), "operation"),
    (registration(operations="queryEntity"), "operations"),
    (registration(information=[{}]), "RegistrationInfo"),
    (registration(information=[{"entities": [{"id": "urn:a:b"}]}]), "type"),
    (registration(information=[{"entities": [{"type": "B", "idPattern": "(["}]}]), "idPattern"),
    (registration(information=[{"entities": [{"type": "B", "id": "urn:a:1", "idPattern": "x"}]}]), "both"),
    (registration(information=[{"entities": [{"type": "B"}], "propertyNames": "height"}]), "propertyNames"),
    (registration(information=[{"entities": [{"type": "B"}], "colour": ["red"]}]), "colour"),
    (registration(expiresAt="2001-01-01T00:00:00Z"), "past"),
    (registration(expiresAt="tomorrow"), "DateTime"),
    (registration(observationInterval={"startAt": "2024-01-02T00:00:00Z", "endAt": "2024-01-01T00:00:00Z"}),
     "before"),
    (registration(location={"type": "Point", "coordinates": "here"}), "location"),
    (registration(contextSourceInfo=[{"key": "X-A", "value": "1\r\nX-Injected: 1"}]), "line breaks"),
    (registration(contextSourceInfo=[{"name": "X-A"}]), "contextSourceInfo"),
    (registration(management={"timeout": "soon"}), "management"),
    (registration(management={"retries": 3}), "management"),
    (registration(mode="exclusive", information=[{"entities": [{"type": "B"}]}]), "attributes"),
    (registration(mode="redirect", information=[{"propertyNames": ["height"]}]), "entity types"),
    ([registration()], "object"),
])
async def test_bad_registrations_are_refused(client: httpx.AsyncClient, body: Any, why: str) -> None:
    r = await client.post(R, json=body, headers=JSON)
    assert r.status_code == 400, r.text
    problem = r.json()
    assert problem["type"] == NGSI_ERRORS + "BadRequestData" and why.lower() in problem["detail"].lower()
    assert (await client.get(R, params={"type": "B"})).json() == []


async def test_malformed_oversize_duplicate_and_unknown(client: httpx.AsyncClient) -> None:
    r = await client.post(R, content=b'{"id": ', headers=JSON)
    assert r.status_code == 400 and r.json()["type"] == NGSI_ERRORS + "InvalidRequest"
    r = await client.post(R, content=b"{}", headers={"Content-Type": "text/plain"})
    assert r.status_code == 415
    huge = registration(information=[{"entities": [{"type": "B"}], "propertyNames": [f"p{i}" for i in range(101)]}])
    assert (await client.post(R, json=huge, headers=JSON)).status_code == 400
    assert (await client.post(R, json=registration(30), headers=JSON)).status_code == 201
    dup = await client.post(R, json=registration(30), headers=JSON)
    assert dup.status_code == 409 and dup.json()["type"] == NGSI_ERRORS + "AlreadyExists"
    assert (await client.get(f"{R}/urn:ngsi-ld:ContextSourceRegistration:nope")).status_code == 404
    bad_id = await client.get(f"{R}/invalidUri")
    assert bad_id.status_code == 400 and bad_id.json()["type"] == NGSI_ERRORS + "BadRequestData"
    assert (await client.delete(f"{R}/invalidUri")).status_code == 400
    assert (await client.patch(f"{R}/urn:ngsi-ld:ContextSourceRegistration:nope", json={"registrationName": "x"},
                               headers=JSON)).status_code == 404
    r = await client.patch(f"{R}/{registration(30)['id']}", json={"mode": "exclusive"}, headers=JSON)
    assert r.status_code == 400  # the mode of a registration cannot change
    r = await client.patch(f"{R}/{registration(30)['id']}", json={"id": "urn:x:other"}, headers=JSON)
    assert r.status_code == 400
    r = await client.patch(f"{R}/{registration(30)['id']}", json={"endpoint": None}, headers=JSON)
    assert r.status_code == 400
    # The stored registration is untouched by the refused updates.
    assert (await client.get(f"{R}/{registration(30)['id']}")).json()["mode"] == "inclusive"


@pytest.mark.parametrize("params", [
    {}, {"id": "invalidUri"}, {"type": "B", "q": "(broken"}, {"type": "B", "georel": "within"},
    {"type": "B", "timerel": "before"}, {"type": "B", "timerel": "sometime", "timeAt": "2020-01-01T00:00:00Z"},
    {"type": "B", "idPattern": "(["}, {"type": "B", "limit": "-1"}, {"type": "B", "csf": "(("},
    {"type": "B", "options": "keyValues"}, {"type": "B", "colour": "red"},
])
async def test_bad_queries_are_refused(client: httpx.AsyncClient, params: dict[str, str]) -> None:
    r = await client.get(R, params=params)
    assert r.status_code == 400, (params, r.text)
    assert r.json()["type"] in (NGSI_ERRORS + "BadRequestData", NGSI_ERRORS + "InvalidRequest")


async def test_rights(client: httpx.AsyncClient, anon_client: httpx.AsyncClient, auth: Auth) -> None:
    reg = registration(40)
    assert (await client.post(R, json=reg, headers=JSON | auth.headers("operator"))).status_code == 201
    for role in ("citizen", "official", "auditor", "dept_admin"):
        r = await client.post(R, json=registration(41), headers=JSON | auth.headers(role, department="d1"))
        assert r.status_code == 403, role
        r = await client.delete(f"{R}/{reg['id']}", headers=auth.headers(role, department="d1"))
        assert r.status_code == 403, role
    assert (await client.get(f"{R}/{reg['id']}", headers=auth.headers("official", department="d1"))).status_code == 200
    assert (await client.get(f"{R}/{reg['id']}", headers=auth.headers("citizen"))).status_code == 403
    assert (await anon_client.get(f"{R}/{reg['id']}")).status_code == 401
    # Another tenant does not see it.
    other = await client.get(f"{R}/{reg['id']}", headers={"NGSILD-Tenant": "elsewhere"})
    assert other.status_code == 404
