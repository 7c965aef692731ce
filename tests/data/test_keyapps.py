"""有条件开放: an outside developer applies for an API key (purpose, rate limit), the data office approves
(at the asked rate or lower) or rejects, the developer claims the key once and reads the conditional
dataset with it; the negative list is maintained (added to, taken off). Bad input throughout."""

from __future__ import annotations

from typing import Any

import httpx

from auth_tokens import Auth

APPLY = "/opendata/key-applications"
OFFICE = "/api/data/key-applications"
A = "/api/3/action"
CANTEENS = {"code": "elderly-canteens", "title": "长者食堂名录", "keyField": "name",
            "fields": [{"id": "name", "class": "public"}, {"id": "seats", "class": "public", "type": "numeric"},
                       {"id": "manager", "class": "internal"}],
            "records": [{"name": "海秀长者食堂", "seats": 40, "manager": "王"},
                        {"name": "龙华长者食堂", "seats": 30, "manager": "李"}]}
HIDDEN = {"code": "case-files", "title": "个案档案", "keyField": "id", "openType": "none",
          "fields": [{"id": "id", "class": "public"}, {"id": "idNumber", "class": "confidential"}],
          "records": [{"id": "c1", "idNumber": "460100199001011234"}]}
GOOD = {"applicant": "海口开放数据实验室 Haikou Open Data Lab", "contact": "dev@example.org",
        "purpose": "为老年人做长者食堂地图应用 A canteen map app for the elderly", "datasets": ["elderly-canteens"],
        "ratePerMinute": 120}


async def _register(client: httpx.AsyncClient, auth: Auth, body: dict[str, Any]) -> None:
    official = auth.headers("official", department="civil-affairs")
    made = await client.post("/api/data/datasets", json=body, headers=official)
    assert made.status_code == 201, made.text


async def test_a_developer_applies_and_the_office_approves(client: httpx.AsyncClient, anon_client: httpx.AsyncClient,
                                                           auth: Auth) -> None:
    await _register(client, auth, CANTEENS)
    assert (await client.get("/api/data/datasets/elderly-canteens")).json()["openType"] == "conditional"
    # Without a key the conditional dataset shows no rows.
    assert (await anon_client.get(f"{A}/datastore_search", params={"resource_id": "elderly-canteens"})).status_code \
        == 403
    applied = await anon_client.post(APPLY, json=GOOD)
    assert applied.status_code == 201, applied.text
    made = applied.json()
    assert made["status"] == "pending" and made["claim"].startswith("cka_") and made["ratePerMinute"] == 120
    assert applied.headers["cache-control"] == "no-store"
    # Before the decision the claim tells the state, no key.
    waiting = (await anon_client.post(f"{APPLY}/{made['id']}/claim", json={"claim": made["claim"]})).json()
    assert waiting["status"] == "pending" and "key" not in waiting
    # The data office sees it (never the claim code) and approves at a lower rate.
    listed = (await client.get(OFFICE, params={"status": "pending"})).json()["applications"]
    assert [a["id"] for a in listed] == [made["id"]] and "claim" not in listed[0]
    assert listed[0]["purpose"] == GOOD["purpose"] and listed[0]["applicant"] == GOOD["applicant"]
    office = auth.headers("operator", username="data-chen")
    approved = await client.post(f"{OFFICE}/{made['id']}/decision",
                                 json={"decision": "approve", "ratePerMinute": 30, "note": "限速 30"}, headers=office)
    assert approved.status_code == 200, approved.text
    assert approved.json()["status"] == "approved" and approved.json()["ratePerMinute"] == 30
    # A second decision is a conflict.
    again = await client.post(f"{OFFICE}/{made['id']}/decision", json={"decision": "reject"}, headers=office)
    assert again.status_code == 409, again.text
    # The claim gives the key once.
    claimed = await anon_client.post(f"{APPLY}/{made['id']}/claim", json={"claim": made["claim"]})
    assert claimed.status_code == 200, claimed.text
    key = claimed.json()["key"]
    assert key.startswith("cok_") and claimed.json()["ratePerMinute"] == 30
    second = (await anon_client.post(f"{APPLY}/{made['id']}/claim", json={"claim": made["claim"]})).json()
    assert second["status"] == "issued" and "key" not in second
    rows = await anon_client.get(f"{A}/datastore_search", params={"resource_id": "elderly-canteens"},
                                 headers={"Authorization": key})
    assert rows.status_code == 200, rows.text
    assert rows.json()["result"]["total"] == 2
    # The key carries the purpose and holder; the audit chain names the decision and the claim.
    shown = (await client.get(OFFICE)).json()["applications"][0]
    assert shown["status"] == "issued" and shown["keyId"] == claimed.json()["keyId"]
    # The office can revoke the issued key like any other.
    assert (await client.delete(f"/api/data/keys/{shown['keyId']}")).status_code == 204
    assert (await anon_client.get(f"{A}/datastore_search", params={"resource_id": "elderly-canteens"},
                                  headers={"Authorization": key})).status_code == 403


async def test_rejected_applications_give_no_key(client: httpx.AsyncClient, anon_client: httpx.AsyncClient,
                                                 auth: Auth) -> None:
    await _register(client, auth, CANTEENS)
    made = (await anon_client.post(APPLY, json=GOOD)).json()
    rejected = await client.post(f"{OFFICE}/{made['id']}/decision", json={"decision": "reject", "note": "用途不明"})
    assert rejected.status_code == 200 and rejected.json()["status"] == "rejected"
    state = (await anon_client.post(f"{APPLY}/{made['id']}/claim", json={"claim": made["claim"]})).json()
    assert state["status"] == "rejected" and state["note"] == "用途不明" and "key" not in state
    assert (await client.get(OFFICE, params={"status": "issued"})).json()["applications"] == []


async def test_key_applications_bad_input(client: httpx.AsyncClient, anon_client: httpx.AsyncClient,
                                          auth: Auth) -> None:
    await _register(client, auth, CANTEENS)
    await _register(client, auth, HIDDEN)
    bad: list[tuple[Any, int, str]] = [
        ({**GOOD, "purpose": "x"}, 400, "purpose"), ({**GOOD, "purpose": 5}, 400, "purpose"),
        ({**GOOD, "applicant": ""}, 400, "applicant"), ({**GOOD, "contact": "a\x00b"}, 400, "contact"),
        ({**GOOD, "datasets": []}, 400, "datasets"), ({**GOOD, "datasets": "elderly-canteens"}, 400, "datasets"),
        ({**GOOD, "datasets": ["elderly-canteens", "elderly-canteens"]}, 400, "datasets"),
        ({**GOOD, "datasets": ["x' OR 1=1 --"]}, 400, "datasets"), ({**GOOD, "datasets": [f"d{i}" for i in range(21)]},
                                                                   400, "datasets"),
        ({**GOOD, "ratePerMinute": 0}, 400, "ratePerMinute"),
        ({**GOOD, "ratePerMinute": 10_000}, 400, "ratePerMinute"),
        ({**GOOD, "ratePerMinute": True}, 400, "ratePerMinute"),
        ({**GOOD, "ratePerMinute": "60"}, 400, "ratePerMinute"),
        ({**GOOD, "purpose": "p" * 2001}, 400, "purpose"), ([GOOD], 400, "object"),
        # Unknown and closed datasets answer alike: nothing about closed data leaks.
        ({**GOOD, "datasets": ["no-such-dataset"]}, 404, "no open dataset"),
        ({**GOOD, "datasets": ["case-files"]}, 404, "no open dataset"),
    ]
    for body, status, word in bad:
        answer = await anon_client.post(APPLY, json=body)
        assert answer.status_code == status, (body, answer.text)
        assert word in answer.json()["detail"], (body, answer.json()["detail"])
    malformed = await anon_client.post(APPLY, content=b"{nope", headers={"Content-Type": "application/json"})
    assert malformed.status_code == 400
    oversize = await anon_client.post(APPLY, content=b'{"purpose": "' + b"x" * 20_000 + b'"}',
                                      headers={"Content-Type": "application/json"})
    assert oversize.status_code in (400, 413), oversize.text
    assert (await client.get(OFFICE)).json()["applications"] == []

    made = (await anon_client.post(APPLY, json=GOOD)).json()
    # Claims: a wrong code, an unknown id, a missing code: all "not found", no state told.
    for app_id, body in ((made["id"], {"claim": "cka_wrong"}), ("nope", {"claim": made["claim"]}),
                         (made["id"], {}), (made["id"], {"claim": 7}), (made["id"], {"claim": "x" * 500})):
        answer = await anon_client.post(f"{APPLY}/{app_id}/claim", json=body)
        assert answer.status_code == 404, (app_id, body, answer.text)
        assert "pending" not in answer.text
    # Decisions: only the data office; a rate above the asked one; a bad verb; an unknown application.
    official = auth.headers("official", department="civil-affairs")
    assert (await client.post(f"{OFFICE}/{made['id']}/decision", json={"decision": "approve"},
                              headers=official)).status_code == 403
    assert (await anon_client.post(f"{OFFICE}/{made['id']}/decision", json={"decision": "approve"})).status_code == 401
    assert (await anon_client.get(OFFICE)).status_code == 401
    assert (await client.get(OFFICE, headers=official)).status_code == 403
    for body, word in (({"decision": "approve", "ratePerMinute": 121}, "ratePerMinute"),
                       ({"decision": "maybe"}, "decision"), ({"decision": "reject", "note": 3}, "note"),
                       ({"decision": "approve", "ratePerMinute": -1}, "ratePerMinute")):
        answer = await client.post(f"{OFFICE}/{made['id']}/decision", json=body)
        assert answer.status_code == 400, (body, answer.text)
        assert word in answer.json()["detail"]
    assert (await client.post(f"{OFFICE}/nope/decision", json={"decision": "approve"})).status_code == 404
    assert (await client.get(OFFICE, params={"status": "weird"})).status_code == 400
    assert (await client.get(OFFICE)).json()["applications"][0]["status"] == "pending"
    # A flood from one address waits for decisions.
    for _ in range(19):
        assert (await anon_client.post(APPLY, json=GOOD)).status_code == 201
    flooded = await anon_client.post(APPLY, json=GOOD)
    assert flooded.status_code == 429, flooded.text


async def test_the_negative_list_is_maintained(client: httpx.AsyncClient, auth: Auth) -> None:
    await _register(client, auth, CANTEENS)
    office = auth.headers("operator", username="data-chen")
    made = await client.post("/api/data/negative-list", json={"dataset": "elderly-canteens", "field": "manager",
                                                              "reason": "个人信息 personal data"}, headers=office)
    assert made.status_code == 201, made.text
    entry = made.json()["id"]
    transport = auth.headers("official", department="transport")
    refused = await client.post("/api/data/share", headers=transport, json={
        "dataset": "elderly-canteens", "fields": ["name", "manager"], "purpose": "配送规划 delivery planning",
        "days": 30, "justification": {"manager": "联系人 contact"}, "pledge": {"accepted": True}})
    assert refused.status_code == 403 and "负面清单" in refused.json()["detail"]
    # Only the data office takes entries off; unknown and malformed ids are not found.
    assert (await client.delete(f"/api/data/negative-list/{entry}", headers=transport)).status_code == 403
    for bad in ("999999", "x", "1;DROP TABLE data_negative_list", "9" * 30):
        assert (await client.delete(f"/api/data/negative-list/{bad}", headers=office)).status_code == 404, bad
    assert (await client.delete(f"/api/data/negative-list/{entry}", headers=office)).status_code == 204
    assert (await client.get("/api/data/negative-list")).json()["entries"] == []
    assert (await client.delete(f"/api/data/negative-list/{entry}", headers=office)).status_code == 404
    allowed = await client.post("/api/data/share", headers=transport, json={
        "dataset": "elderly-canteens", "fields": ["name", "manager"], "purpose": "配送规划 delivery planning",
        "days": 30, "justification": {"manager": "联系人 contact"}, "pledge": {"accepted": True}})
    assert allowed.status_code == 201, allowed.text
