"""The open-data portal's public figures of a dataset (usage, snapshot versions), and the data classes on
quarantined records (the data office reviews them masked)."""

from __future__ import annotations

import httpx

from auth_tokens import Auth

FIELDS = [{"id": "id", "class": "public"}, {"id": "visitedAt", "class": "public", "type": "timestamp"},
          {"id": "minutes", "class": "public", "type": "numeric"}, {"id": "worker", "class": "internal"},
          {"id": "phone", "class": "sensitive"}, {"id": "idNumber", "class": "confidential"}]


async def _register(client: httpx.AsyncClient, auth: Auth, code: str, fields: list[dict[str, str]],
                    records: list[dict[str, object]], **extra: object) -> None:
    made = await client.post("/api/data/datasets", headers=auth.headers("official", department="civil-affairs"),
                             json={"code": code, "title": "探访记录", "keyField": "id", "fields": fields,
                                   "records": records, **extra})
    assert made.status_code == 201, made.text


async def test_open_stats_count_usage_and_list_snapshots(client: httpx.AsyncClient, auth: Auth) -> None:
    await _register(client, auth, "counts", [{"id": "id", "class": "public"}, {"id": "n", "class": "public"}],
                    [{"id": "a", "n": 1}, {"id": "b", "n": 2}])
    await _register(client, auth, "counts", [{"id": "id", "class": "public"}, {"id": "n", "class": "public"}],
                    [{"id": "a", "n": 1}, {"id": "b", "n": 3}])
    anonymous = {"Authorization": ""}
    first = await client.get("/api/data/open/counts/stats", headers=anonymous)
    assert first.status_code == 200, first.text
    body = first.json()
    assert body["usage"] == {"view": 1, "search": 0, "api": 0, "download": 0}
    assert [v["version"] for v in body["versions"]] == [1, 2] and body["rows"] == 2
    assert body["geo"] is False and body["history"] is False
    assert (await client.get("/opendata/download/counts.csv", headers=anonymous)).status_code == 200
    assert (await client.get("/api/3/action/datastore_search", params={"resource_id": "counts"},
                             headers=anonymous)).status_code == 200
    again = (await client.get("/api/data/open/counts/stats", headers=anonymous)).json()
    assert again["usage"] == {"view": 2, "search": 0, "api": 1, "download": 1}


async def test_open_stats_hide_what_is_not_open(client: httpx.AsyncClient, auth: Auth) -> None:
    await _register(client, auth, "closed", [{"id": "id", "class": "public"}], [{"id": "a"}], openType="none")
    await _register(client, auth, "cond", FIELDS, [{"id": "a", "phone": "13812345678"}])
    anonymous = {"Authorization": ""}
    for code in ("closed", "nothing-here", "x" * 300, "%27%20or%201=1"):
        answer = await client.get(f"/api/data/open/{code}/stats", headers=anonymous)
        assert answer.status_code == 404, (code, answer.text)
        assert "13812345678" not in answer.text
    conditional = await client.get("/api/data/open/cond/stats", headers=anonymous)
    assert conditional.status_code == 200 and "13812345678" not in conditional.text
    # Another tenant's portal does not see this tenant's datasets; a malformed tenant is a 400.
    elsewhere = await client.get("/api/data/open/cond/stats", headers={**anonymous, "NGSILD-Tenant": "other"})
    assert elsewhere.status_code == 404
    bad = await client.get("/api/data/open/cond/stats", headers={**anonymous, "NGSILD-Tenant": "a b'"})
    assert bad.status_code == 400


async def test_quarantined_records_follow_the_data_classes(client: httpx.AsyncClient, auth: Auth) -> None:
    await _register(client, auth, "visits", FIELDS, [
        {"id": "1", "visitedAt": "2026-12-01T09:00:00+08:00", "minutes": 30, "worker": "张三",
         "phone": "13812345678", "idNumber": "460100199001011234"},
        {"id": "2", "visitedAt": "2026/12/01 09:00", "minutes": 20, "worker": "李四",
         "phone": "13900001111", "idNumber": "460100199202022345"}])
    checked = await client.post("/api/data/quality/visits/check")
    assert checked.status_code == 200 and checked.json()["failed"] == 1
    report = await client.get("/api/data/quality/visits")
    held = report.json()["quarantine"]
    assert len(held) == 1 and held[0]["reasons"] == ["iso8601:visitedAt"]
    record = held[0]["record"]
    assert record["visitedAt"] == "2026/12/01 09:00" and record["worker"] == "李四"  # internal: staff see it
    assert record["phone"] != "13900001111" and "idNumber" not in record
    assert "13900001111" not in report.text and "460100199202022345" not in report.text
