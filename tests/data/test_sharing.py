"""Sharing between departments: request with purpose, minimum-necessary fields and the signed pledge;
the negative list first; the owner approves, narrows or rejects; sensitive fields through the two-person
approval; reads of exactly the granted fields until expiry or revocation, each audited with the grant id."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from city import seed_city

from auth_tokens import Auth
from cityos.core import clock

S = "/api/data/share"
NOW = datetime(2026, 12, 3, 2, 0, tzinfo=UTC)


@pytest.fixture
def moment() -> Iterator[list[datetime]]:
    at = [NOW]
    clock.set_clock(lambda: at[0])
    try:
        yield at
    finally:
        clock.reset_clock()


def _request(**overrides: Any) -> dict[str, Any]:
    body = {"dataset": "hub-energymeter", "fields": ["id", "voltage", "activePower"],
            "purpose": "停电应急调度 outage response planning", "days": 30,
            "justification": {"activePower": "识别高负荷区域 to find high-load areas"},
            "pledge": {"accepted": True}}
    body.update(overrides)
    return body


async def test_request_decide_read_revoke(client: httpx.AsyncClient, auth: Auth, moment: list[datetime]) -> None:
    await seed_city(client, hours=1, per_district=1, profiles=("smart-meter",))
    assert (await client.post("/api/data/harvest")).status_code == 200
    requester = auth.headers("official", department="transport", user_id="u-transport", username="wang")
    owner = auth.headers("official", department="energy", user_id="u-energy", username="li")
    second = auth.headers("dept_admin", department="energy", user_id="u-energy-admin", username="zhao")
    outsider = auth.headers("official", department="sanitation", user_id="u-san")

    made = await client.post(S, json=_request(), headers=requester)
    assert made.status_code == 201, made.text
    item = made.json()
    assert item["status"] == "pending" and item["owner"] == "energy"
    assert item["pledge"]["signer"] == "wang" and item["pledge"]["sha256"] and item["pledge"]["signedAt"]

    # Only the owning department decides; it narrows to two fields, one of them sensitive.
    assert (await client.post(f"{S}/{item['id']}/decision", json={"decision": "approve"},
                              headers=outsider)).status_code == 403
    assert (await client.post(f"{S}/{item['id']}/decision", json={"decision": "approve", "fields": ["secret"]},
                              headers=owner)).status_code == 400
    assert (await client.post(f"{S}/{item['id']}/decision", json={"decision": "maybe"},
                              headers=owner)).status_code == 400
    decided = (await client.post(f"{S}/{item['id']}/decision",
                                 json={"decision": "approve", "fields": ["id", "activePower"], "note": "最小必要"},
                                 headers=owner)).json()
    assert decided["status"] == "awaiting_second" and decided["approvalId"]
    assert (await client.post(f"{S}/{item['id']}/decision", json={"decision": "approve"},
                              headers=owner)).status_code == 409
    # Not readable yet; the owner cannot activate before the second person.
    assert (await client.get(f"{S}/{item['id']}/rows", headers=requester)).status_code == 403
    assert (await client.post(f"{S}/{item['id']}/activate", headers=owner)).status_code == 409
    # The owner cannot be its own second person.
    assert (await client.post(f"/auth/approvals/{decided['approvalId']}/approve", headers=owner)).status_code == 403
    approved = await client.post(f"/auth/approvals/{decided['approvalId']}/approve", headers=second)
    assert approved.status_code == 200, approved.text
    active = (await client.post(f"{S}/{item['id']}/activate", headers=owner)).json()
    assert active["status"] == "approved" and active["grantedFields"] == ["id", "activePower"]
    assert active["expiresAt"] == clock.iso(NOW + timedelta(days=30))

    rows = await client.get(f"{S}/{item['id']}/rows", params={"limit": 5}, headers=requester)
    assert rows.status_code == 200, rows.text
    body = rows.json()
    assert body["fields"] == ["activePower", "id"] and body["total"] == 10
    assert all(set(r) == {"_id", "id", "activePower"} and isinstance(r["activePower"], float)
               for r in body["records"])
    # Exactly the granted fields: voltage was not granted.
    for params in ({"fields": "voltage"}, {"filters": '{"voltage": 1}'}, {"sort": "voltage desc"}):
        assert (await client.get(f"{S}/{item['id']}/rows", params=params, headers=requester)).status_code in (400,
                                                                                                              403)
    assert (await client.get(f"{S}/{item['id']}/rows", headers=outsider)).status_code == 403
    # Every read, and every refused one, is in the audit chain with the grant id.
    auditor = auth.headers("auditor")
    trail = (await client.get("/audit", params={"action": "data.share.read", "limit": 50},
                              headers=auditor)).json()
    assert trail and all(r["resource"] == f"grant:{item['id']}" for r in trail)
    assert any(r["outcome"] == "success" for r in trail)

    revoked = (await client.post(f"{S}/{item['id']}/revoke", headers=owner)).json()
    assert revoked["status"] == "revoked"
    assert (await client.get(f"{S}/{item['id']}/rows", headers=requester)).status_code == 403
    assert (await client.post(f"{S}/{item['id']}/revoke", headers=owner)).status_code == 409

    # A grant without sensitive fields starts at once, and ends when it expires.
    short = (await client.post(S, json=_request(fields=["id", "voltage"], days=1, justification={}),
                               headers=requester)).json()
    ok = (await client.post(f"{S}/{short['id']}/decision", json={"decision": "approve"}, headers=owner)).json()
    assert ok["status"] == "approved"
    assert (await client.get(f"{S}/{short['id']}/rows", headers=requester)).status_code == 200
    moment[0] = NOW + timedelta(days=2)
    assert (await client.get(f"{S}/{short['id']}/rows", headers=requester)).status_code == 403
    rejected = (await client.post(S, json=_request(fields=["id"], justification={}), headers=requester)).json()
    assert (await client.post(f"{S}/{rejected['id']}/decision", json={"decision": "reject", "note": "无必要"},
                              headers=owner)).json()["status"] == "rejected"
    stats = (await client.get("/api/data/share-stats")).json()
    assert stats["departments"]["transport"]["granted"] == 2 and stats["datasetsShared"] == 1


async def test_refusals(client: httpx.AsyncClient, auth: Auth) -> None:
    await seed_city(client, hours=1, per_district=1, profiles=("smart-meter",))
    await client.post("/api/data/harvest")
    requester = auth.headers("official", department="transport", user_id="u-transport")
    operator = auth.headers("operator")
    # The negative list first: a field on every dataset, and a whole dataset.
    assert (await client.post("/api/data/negative-list", json={"dataset": "*", "field": "totalActiveEnergyImport",
                                                               "reason": "居民用电隐私"}, headers=operator)
            ).status_code == 201
    assert (await client.post("/api/data/negative-list", json={"dataset": "hub-energymeter-d-xiuying",
                                                               "reason": "试点保密"}, headers=operator)
            ).status_code == 201
    assert (await client.post("/api/data/negative-list", json={"dataset": "*", "reason": "x"}, headers=operator)
            ).status_code == 400
    assert (await client.post("/api/data/negative-list", json={"dataset": "nope", "reason": "xx"}, headers=operator)
            ).status_code == 404
    assert (await client.post("/api/data/negative-list", json={"dataset": "*", "field": "a", "reason": "xx"},
                              headers=requester)).status_code == 403
    listed = await client.post(S, json=_request(fields=["id", "totalActiveEnergyImport"],
                                                justification={"totalActiveEnergyImport": "需要 needed"}),
                               headers=requester)
    assert listed.status_code == 403 and "负面清单" in listed.json()["detail"]
    whole = await client.post(S, json=_request(dataset="hub-energymeter-d-xiuying"), headers=requester)
    assert whole.status_code == 403
    bad = [(_request(fields=["id", "activePower"], justification={}), 400, "justification"),
           (_request(pledge={"accepted": False}), 400, "pledge"),
           (_request(pledge=None), 400, "pledge"),
           (_request(days=0), 400, "days"), (_request(days=10_000), 400, "days"), (_request(days="30"), 400, "days"),
           (_request(fields=[]), 400, "fields"), (_request(fields=["id", "id"]), 400, "fields"),
           (_request(fields=["nosuch"]), 400, "fields"), (_request(purpose=""), 400, "purpose"),
           (_request(dataset="nope"), 404, "nope")]
    for body, status, word in bad:
        r = await client.post(S, json=body, headers=requester)
        assert r.status_code == status, (body, r.text)
        assert word in r.json()["detail"]
    own = await client.post(S, json=_request(), headers=auth.headers("official", department="energy"))
    assert own.status_code == 400
    assert (await client.post(S, json=_request(), headers=auth.headers("citizen"))).status_code == 403
    assert (await client.post(S, json=_request())).status_code == 403  # the sys_admin does not request data
    assert (await client.post(S, content=b"{", headers={**requester, "Content-Type": "application/json"})
            ).status_code == 400
    # Confidential fields are never shared.
    await client.post("/api/data/datasets", headers=auth.headers("official", department="civil-affairs"), json={
        "code": "subsidies", "title": "高龄津贴发放", "fields": [{"id": "name", "class": "public"},
                                                               {"id": "idNumber", "class": "confidential"}],
        "records": [{"name": "王小明", "idNumber": "460100194001011234"}]})
    secret = await client.post(S, json=_request(dataset="subsidies", fields=["name", "idNumber"], justification={}),
                               headers=requester)
    assert secret.status_code == 403 and "不予共享" in secret.json()["detail"]
    assert (await client.get(f"{S}/nope/rows", headers=requester)).status_code == 404
