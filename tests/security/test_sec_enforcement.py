"""Enforcement on the hub, IoT and admin APIs: the role × action matrix (generated from
`policy.MATRIX`), bad tokens, tenant tampering, injection strings, write auditing."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import jwt
import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from auth_tokens import Auth
from cityos.security.audit import AuditQuery
from cityos.security.policy import ANONYMOUS, MATRIX, USER_ROLES, Scope, scope_for

E = "/ngsi-ld/v1/entities"
JSON = {"Content-Type": "application/json"}
DEPT = "environment"


def thing(entity_id: str, owner: str | None = None, department: str | None = DEPT, **attrs: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"id": entity_id, "type": "AirQualityObserved",
                            "pm25": {"type": "Property", "value": 12}}
    if department:
        body["department"] = {"type": "Property", "value": department}
    if owner:
        body["owner"] = {"type": "Property", "value": owner}
    body.update(attrs)
    return body


@dataclass
class Caller:
    role: str
    user_id: str
    headers: dict[str, str]


Call = Callable[[httpx.AsyncClient, Caller], Awaitable[httpx.Response]]


async def _read(http: httpx.AsyncClient, who: Caller) -> httpx.Response:
    return await http.get(E, params={"type": "AirQualityObserved"}, headers=who.headers)


async def _write(http: httpx.AsyncClient, who: Caller) -> httpx.Response:
    # The caller's own entity in the caller's department: every scope but none covers it.
    return await http.post(E, json=thing(f"urn:ngsi-ld:AirQualityObserved:{who.role}-new", owner=who.user_id),
                           headers=who.headers | JSON)


async def _delete(http: httpx.AsyncClient, who: Caller) -> httpx.Response:
    return await http.delete(f"{E}/urn:ngsi-ld:AirQualityObserved:victim", headers=who.headers)


async def _subscriptions(http: httpx.AsyncClient, who: Caller) -> httpx.Response:
    return await http.get("/ngsi-ld/v1/subscriptions", headers=who.headers)


async def _devices(http: httpx.AsyncClient, who: Caller) -> httpx.Response:
    return await http.get("/api/iot/devices", headers=who.headers)


async def _tenant(http: httpx.AsyncClient, who: Caller) -> httpx.Response:
    return await http.get("/admin/history-retention", headers=who.headers)


async def _audit(http: httpx.AsyncClient, who: Caller) -> httpx.Response:
    return await http.get("/audit", headers=who.headers)


async def _users(http: httpx.AsyncClient, who: Caller) -> httpx.Response:
    return await http.get("/auth/users", headers=who.headers)


async def _staff_member(http: httpx.AsyncClient) -> str:
    """An official of DEPT, created with the client's own (sys_admin) token; its name."""
    name = f"target-{uuid.uuid4().hex[:8]}"
    await http.post("/auth/users", json={"username": name, "password": "Correct-Horse-9-battery",
                                         "role": "official", "department": DEPT})
    return name


async def _disable(http: httpx.AsyncClient, who: Caller) -> httpx.Response:
    return await http.post(f"/auth/users/{await _staff_member(http)}/disable", headers=who.headers)


async def _enrol(http: httpx.AsyncClient, who: Caller) -> httpx.Response:
    return await http.post(f"/auth/users/{await _staff_member(http)}/enrolment-code", headers=who.headers)


async def _reset_totp(http: httpx.AsyncClient, who: Caller) -> httpx.Response:
    return await http.post(f"/auth/users/{await _staff_member(http)}/totp/reset", headers=who.headers)


# One representative endpoint per hub / IoT / admin action. The expected outcome comes from MATRIX.
ENDPOINTS: dict[str, Call] = {
    "entity.read": _read, "entity.write": _write, "entity.delete": _delete,
    "subscription.manage": _subscriptions, "device.manage": _devices, "tenant.manage": _tenant,
    "audit.read": _audit, "user.read": _users, "user.disable": _disable, "user.enrol": _enrol,
    "user.reset_totp": _reset_totp,
}


def test_every_matrix_action_of_the_hub_has_an_endpoint() -> None:
    hub_actions = {a for row in MATRIX.values() for a in row if a.split(".")[0] in
                   ("entity", "subscription", "device", "tenant", "audit", "user")} - {"tenant.delete", "user.manage",
                                                                                       "audit.export"}
    assert hub_actions <= set(ENDPOINTS), hub_actions - set(ENDPOINTS)


@pytest.mark.parametrize("role", [ANONYMOUS, *USER_ROLES])
async def test_role_action_matrix(role: str, client: httpx.AsyncClient, auth: Auth) -> None:
    victim = thing("urn:ngsi-ld:AirQualityObserved:victim")
    assert (await client.post(E, json=victim, headers=JSON)).status_code == 201
    user_id = uuid.uuid4().hex
    headers = {} if role == ANONYMOUS else auth.headers(role, department=DEPT, user_id=user_id)
    who = Caller(role, user_id, headers)
    outcomes = {}
    for action, call in ENDPOINTS.items():
        r = await call(client, who) if role != ANONYMOUS else await _anonymous(client, call, who)
        allowed = scope_for(role, action) is not Scope.NONE
        outcomes[action] = r.status_code
        if allowed:
            assert r.status_code not in (401, 403), (role, action, r.status_code, r.text)
            assert r.status_code < 400, (role, action, r.status_code, r.text)
        else:
            assert r.status_code == (401 if role == ANONYMOUS else 403), (role, action, r.status_code, r.text)
            assert r.headers["Content-Type"].startswith("application/json")
            assert r.json()["status"] == r.status_code
    assert set(outcomes) == set(ENDPOINTS)


async def _anonymous(client: httpx.AsyncClient, call: Call, who: Caller) -> httpx.Response:
    saved = client.headers.pop("Authorization")
    try:
        return await call(client, who)
    finally:
        client.headers["Authorization"] = saved


async def test_refusals_are_audited(client: httpx.AsyncClient, auth: Auth, app: Any) -> None:
    r = await client.post(E, json=thing("urn:ngsi-ld:AirQualityObserved:x"),
                          headers=auth.headers("auditor") | JSON)
    assert r.status_code == 403
    rows = await app.state.security.audit.search(AuditQuery(action="entity.write", outcome="denied"))
    assert rows and rows[0]["role"] == "auditor"


async def test_writes_are_audited_after_commit(client: httpx.AsyncClient, app: Any) -> None:
    entity_id = "urn:ngsi-ld:AirQualityObserved:audited"
    assert (await client.post(E, json=thing(entity_id), headers=JSON)).status_code == 201
    r = await client.patch(f"{E}/{entity_id}/attrs", json={"pm25": {"type": "Property", "value": 3}},
                           headers=JSON)
    assert r.status_code == 204
    upsert = [thing("urn:ngsi-ld:AirQualityObserved:b1"), thing("urn:ngsi-ld:AirQualityObserved:b2")]
    assert (await client.post("/ngsi-ld/v1/entityOperations/upsert", json=upsert, headers=JSON)).status_code == 201
    assert (await client.delete(f"{E}/{entity_id}")).status_code == 204
    audit = app.state.security.audit
    actions = {row["action"]: row for row in await audit.search(AuditQuery(action="entity.*", limit=50))}
    assert {"entity.create", "entity.update_attrs", "entity.batch_upsert", "entity.delete"} <= set(actions)
    assert actions["entity.create"]["resource"] == entity_id
    assert actions["entity.create"]["actor"] == "test-admin"
    assert actions["entity.batch_upsert"]["detail"]["count"] == 2
    assert (await audit.verify()).ok


# ---------------------------------------------------------------------- department and ownership


async def test_official_writes_only_its_department(client: httpx.AsyncClient, auth: Auth, app: Any) -> None:
    mine, theirs = "urn:ngsi-ld:AirQualityObserved:mine", "urn:ngsi-ld:AirQualityObserved:theirs"
    assert (await client.post(E, json=thing(mine), headers=JSON)).status_code == 201
    assert (await client.post(E, json=thing(theirs, department="transport"), headers=JSON)).status_code == 201
    official = auth.headers("official", department=DEPT)
    patch = {"pm25": {"type": "Property", "value": 99}}
    assert (await client.patch(f"{E}/{mine}/attrs", json=patch, headers=official | JSON)).status_code == 204
    r = await client.patch(f"{E}/{theirs}/attrs", json=patch, headers=official | JSON)
    assert r.status_code == 403, r.text
    assert (await client.delete(f"{E}/{theirs}", headers=official)).status_code == 403
    # Moving one's own entity to another department is a write to that department: refused.
    moved = {"department": {"type": "Property", "value": "transport"}}
    assert (await client.patch(f"{E}/{mine}/attrs", json=moved, headers=official | JSON)).status_code == 403
    # In a batch, the refused entity is reported and the others are written.
    batch = [thing(mine), thing(theirs, department="transport")]
    r = await client.post("/ngsi-ld/v1/entityOperations/upsert", json=batch, headers=official | JSON)
    assert r.status_code == 207
    assert r.json()["success"] == [mine]
    assert [e["entityId"] for e in r.json()["errors"]] == [theirs]
    assert r.json()["errors"][0]["error"]["status"] == 403
    stored = (await client.get(f"{E}/{theirs}", params={"options": "keyValues"})).json()
    assert stored["pm25"] == 12  # untouched


async def test_citizen_writes_only_what_it_owns(client: httpx.AsyncClient, auth: Auth) -> None:
    me = uuid.uuid4().hex
    citizen = auth.headers("citizen", user_id=me)
    own = thing("urn:ngsi-ld:AirQualityObserved:own", owner=me, department=None)
    other = thing("urn:ngsi-ld:AirQualityObserved:other", owner="someone-else", department=None)
    assert (await client.post(E, json=own, headers=citizen | JSON)).status_code == 201
    assert (await client.post(E, json=other, headers=citizen | JSON)).status_code == 403
    assert (await client.delete(f"{E}/{own['id']}", headers=citizen)).status_code == 403  # no entity.delete


async def test_citizen_calling_official_endpoints(client: httpx.AsyncClient, auth: Auth) -> None:
    citizen = auth.headers("citizen")
    calls = [
        client.post("/ngsi-ld/v1/subscriptions", json={"type": "Subscription", "entities": [{"type": "X"}],
                                                        "notification": {"endpoint": {"uri": "http://x.test/"}}},
                    headers=citizen | JSON),
        client.get("/api/iot/health", headers=citizen),
        client.put("/admin/history-retention", json={"days": 3}, headers=citizen | JSON),
        client.get("/admin/data-classes", headers=citizen),
        client.delete(f"{E}/urn:ngsi-ld:X:1", headers=citizen),
        client.post("/ngsi-ld/v1/entityOperations/delete", json=["urn:ngsi-ld:X:1"], headers=citizen | JSON),
        client.get("/audit", headers=citizen),
        client.post("/ngsi-ld/v1/temporal/entities", json={"id": "urn:ngsi-ld:X:1", "type": "X"},
                    headers=citizen | JSON),
    ]
    for call in calls:
        r = await call
        assert r.status_code == 403, (r.request.method, r.request.url, r.status_code)


async def test_data_class_policies_need_tenant_manage(client: httpx.AsyncClient, auth: Auth) -> None:
    operator = auth.headers("operator")
    policy = {"id": "urn:ngsi-ld:DataClassPolicy:x", "type": "DataClassPolicy",
              "entityType": {"type": "Property", "value": "https://uri.etsi.org/ngsi-ld/default-context/X"},
              "defaultClass": {"type": "Property", "value": "public"}}
    # An operator may write entities, but not make data public by writing a policy entity.
    assert (await client.post(E, json=policy, headers=operator | JSON)).status_code == 403
    assert (await client.put("/admin/data-classes/X", json={"default": "public"},
                             headers=operator | JSON)).status_code == 403
    assert (await client.put("/admin/data-classes/X", json={"default": "public"}, headers=JSON)).status_code == 204


# ---------------------------------------------------------------------- tokens


def _claims(token: str) -> dict[str, Any]:
    return dict(jwt.decode(token, options={"verify_signature": False}))


async def test_expired_token_is_refused(client: httpx.AsyncClient, auth: Auth) -> None:
    token = auth.token("operator", issued_at=datetime(2020, 1, 1, tzinfo=UTC), ttl=60)
    r = await client.get(E, params={"type": "T"}, headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 401
    assert "expired" in r.json()["detail"]


async def test_forged_tokens_are_refused(client: httpx.AsyncClient, auth: Auth) -> None:
    genuine = auth.token("sys_admin")
    claims, header = _claims(genuine), jwt.get_unverified_header(genuine)
    # Same claims and kid, signed with another key.
    wrong_key = jwt.encode(claims, Ed25519PrivateKey.generate(), algorithm="EdDSA", headers={"kid": header["kid"]})
    # alg=none: no signature at all.
    head = base64.urlsafe_b64encode(orjson.dumps({"alg": "none", "typ": "JWT", "kid": header["kid"]})).rstrip(b"=")
    body = base64.urlsafe_b64encode(orjson.dumps(claims)).rstrip(b"=")
    alg_none = f"{head.decode()}.{body.decode()}."
    # HS256 with the public key as the secret (key confusion).
    public = auth.app.state.security.service.issuer.jwks()["keys"][0]["x"]
    confused = jwt.encode(claims, public, algorithm="HS256", headers={"kid": header["kid"]})
    tampered = genuine.rsplit(".", 2)
    payload = dict(claims, role="sys_admin", tnt="other")
    tampered[1] = base64.urlsafe_b64encode(orjson.dumps(payload)).rstrip(b"=").decode()
    for token in (wrong_key, alg_none, confused, ".".join(tampered), "not-a-jwt", genuine + "x"):
        r = await client.delete(f"{E}/urn:ngsi-ld:X:1", headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 401, (token[:40], r.status_code, r.text)


async def test_revoked_token_is_refused(client: httpx.AsyncClient, auth: Auth, app: Any) -> None:
    token = auth.token("operator")
    headers = {"Authorization": f"Bearer {token}"}
    assert (await client.get(E, params={"type": "T"}, headers=headers)).status_code in (200, 404)
    await app.state.security.service.revoke_family(_claims(token)["sid"])
    r = await client.get(E, params={"type": "T"}, headers=headers)
    assert r.status_code == 401
    assert "revoked" in r.json()["detail"]
    rows = await app.state.security.audit.search(AuditQuery(action="auth.token", outcome="denied"))
    assert rows


async def test_oversized_token_is_refused(client: httpx.AsyncClient) -> None:
    r = await client.get(E, params={"type": "T"}, headers={"Authorization": "Bearer " + "a" * 20_000})
    assert r.status_code == 401
    assert "too large" in r.json()["detail"]


async def test_malformed_authorization_header(client: httpx.AsyncClient) -> None:
    for value in ("Basic Zm9vOmJhcg==", "Bearer", "Bearer    ", "token abc"):
        r = await client.get(E, params={"type": "T"}, headers={"Authorization": value})
        assert r.status_code == 401, value


# ---------------------------------------------------------------------- tenants


async def test_tenant_header_tampering_is_refused(client: httpx.AsyncClient, auth: Auth, app: Any) -> None:
    r = await client.post(E, json=thing("urn:ngsi-ld:AirQualityObserved:t1"),
                          headers=JSON | {"NGSILD-Tenant": "alpha"})
    assert r.status_code == 201  # sys_admin may name any tenant
    beta = auth.headers("operator", tenant="beta")
    for method, url, body in (("GET", E + "?type=AirQualityObserved", None),
                              ("GET", f"{E}/urn:ngsi-ld:AirQualityObserved:t1", None),
                              ("POST", E, thing("urn:ngsi-ld:AirQualityObserved:t2")),
                              ("GET", "/ngsi-ld/v1/temporal/entities?type=AirQualityObserved", None)):
        r = await client.request(method, url, json=body, headers=beta | JSON | {"NGSILD-Tenant": "alpha"})
        assert r.status_code == 403, (method, url, r.status_code)
    # Without the header, the token's own tenant is used: alpha's entity is not there.
    r = await client.get(f"{E}/urn:ngsi-ld:AirQualityObserved:t1", headers=beta)
    assert r.status_code == 404
    rows = await app.state.security.audit.search(AuditQuery(action="entity.read", outcome="denied", tenant="beta"))
    assert any(row["resource"] == "tenant:alpha" for row in rows)


# ---------------------------------------------------------------------- injection strings

INJECTIONS = ["' OR '1'='1", "1; DROP TABLE hub_entities; --", '{"$ne": null}', "\") OR (\"1\"=\"1",
              "%27%20OR%201%3D1", "*/ UNION SELECT * FROM sec_users --", "${jndi:ldap://x/}", "[]", "{}",
              "\\", "'", '"', "..%2f..%2f", "1e309"]
PARAMS = ["type", "id", "idPattern", "attrs", "q", "georel", "geometry", "coordinates", "geoproperty", "limit",
          "offset", "count", "options", "lang", "after", "format", "pick", "geometryProperty", "scopeQ", "csf"]


async def test_injection_strings_in_every_query_parameter(client: httpx.AsyncClient, auth: Auth) -> None:
    assert (await client.post(E, json=thing("urn:ngsi-ld:AirQualityObserved:keep"), headers=JSON)).status_code == 201
    assert (await client.post(E, json=thing("urn:ngsi-ld:AirQualityObserved:other-tenant"),
                              headers=JSON | {"NGSILD-Tenant": "secret"})).status_code == 201
    operator = auth.headers("operator")
    for name in PARAMS:
        for value in INJECTIONS:
            params = {"type": "AirQualityObserved", name: value}
            for url in (E, "/ngsi-ld/v1/temporal/entities"):
                r = await client.get(url, params=params, headers=operator)
                assert r.status_code in (200, 206, 400, 404), (url, name, value, r.status_code, r.text)
                if r.status_code == 200:
                    ids = {e["id"] for e in r.json()} if isinstance(r.json(), list) else set()
                    assert "urn:ngsi-ld:AirQualityObserved:other-tenant" not in ids
                else:
                    assert r.json()["type"].startswith("https://")  # ProblemDetails, no stack trace
    r = await client.get(E, params={"type": "AirQualityObserved"}, headers=operator)
    assert [e["id"] for e in r.json()] == ["urn:ngsi-ld:AirQualityObserved:keep"]
