"""The CKAN Action API v3, read by the real `ckanapi` client against a running `cityos serve` process
(the same database the test seeded), then CKAN's documented shapes and every bad input over HTTP."""

from __future__ import annotations

import asyncio
import io
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pyarrow.parquet as pq
import pytest
from city import seed_city

from auth_tokens import Auth
from own_services import free_port

A = "/api/3/action"


def _serve(database_url: str, port: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "CITYOS_DATABASE_URL": database_url, "CITYOS_INGEST_WORKERS": "0",
           "CITYOS_MQTT_URL": f"mqtt://127.0.0.1:{free_port()}", "CITYOS_WEB": "0"}
    process = subprocess.Popen([sys.executable, "-m", "cityos.cli", "serve", "--port", str(port), "--no-migrate",
                                "--log-level", "error"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return process
        except httpx.HTTPError:
            time.sleep(0.2)
    process.kill()
    raise AssertionError("cityos serve did not start")


@pytest.fixture
def ckanapi_module() -> Iterator[Any]:
    ckanapi = pytest.importorskip("ckanapi")
    yield ckanapi


async def _seeded(client: httpx.AsyncClient) -> None:
    await seed_city(client, hours=2, per_district=1, profiles=("air-quality", "smart-meter", "noise"))
    assert (await client.post("/api/data/harvest")).status_code == 200


async def _key(client: httpx.AsyncClient, datasets: list[str], rate: int = 100) -> dict[str, Any]:
    made = await client.post("/api/data/keys", json={"holder": "海口大学交通研究所", "purpose": "空气质量研究 research",
                                                     "datasets": datasets, "ratePerMinute": rate})
    assert made.status_code == 201, made.text
    return dict(made.json())


async def test_ckanapi_reads_the_catalogue(client: httpx.AsyncClient, database_url: str,
                                           ckanapi_module: Any) -> None:
    await _seeded(client)
    key = await _key(client, ["hub-airqualityobserved"])
    port = free_port()
    server = await asyncio.to_thread(_serve, database_url, port)
    try:
        await asyncio.to_thread(_ckanapi_session, ckanapi_module, f"http://127.0.0.1:{port}", key["key"])
    finally:
        server.terminate()
        await asyncio.to_thread(server.wait, 20)


async def test_a_keys_rate_limit_holds_across_api_processes(client: httpx.AsyncClient,
                                                            anon_client: httpx.AsyncClient, database_url: str) -> None:
    """Two API processes on one database serve the same key: together they admit its rate, not twice it."""
    await _seeded(client)
    key = await _key(client, ["hub-energymeter"], rate=4)
    port = free_port()
    server = await asyncio.to_thread(_serve, database_url, port)
    try:
        # all calls inside one clock minute (the previous minute then weighs nothing): past :40, wait for :00
        await asyncio.sleep(61 - time.time() % 60 if time.time() % 60 > 40 else 0)
        params, headers = {"resource_id": "hub-energymeter", "limit": 1}, {"Authorization": key["key"]}
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as other:
            answers = []
            for turn in range(8):
                http = anon_client if turn % 2 == 0 else other
                answers.append(await http.get(f"{A}/datastore_search", params=params, headers=headers))
    finally:
        server.terminate()
        await asyncio.to_thread(server.wait, 20)
    assert [a.status_code for a in answers] == [200] * 4 + [429] * 4, [a.text for a in answers]
    assert all(1 <= int(a.headers["Retry-After"]) <= 60 for a in answers[4:])
    assert "4 calls a minute" in answers[-1].json()["error"]["message"]


def _ckanapi_session(ckanapi: Any, url: str, api_key: str) -> None:
    ckan = ckanapi.RemoteCKAN(url, user_agent="cityos-test")
    names = ckan.action.package_list()
    assert "readings-airqualityobserved-a-pm25" in names and names == sorted(names)
    found = ckan.call_action("package_search", {"q": "pm25", "fq": "organization:environment", "rows": 5,
                                                "start": 0, "sort": "name asc",
                                                "facet.field": ["organization", "tags", "groups"]})
    assert found["count"] >= 1 and len(found["results"]) <= 5
    assert all(p["organization"]["name"] == "environment" for p in found["results"])
    assert found["search_facets"]["organization"]["items"][0]["name"] == "environment"
    package = ckan.action.package_show(id="readings-airqualityobserved-a-pm25")
    assert package["name"] == "readings-airqualityobserved-a-pm25" and package["resources"]
    datastore = package["resources"][0]
    assert datastore["datastore_active"] is True
    assert ckan.action.resource_show(id=datastore["id"])["package_id"] == package["id"]
    orgs = ckan.action.organization_list()
    assert "environment" in orgs
    org = ckan.action.organization_show(id="environment")
    assert org["package_count"] > 0 and org["is_organization"] is True
    assert "environment" in ckan.action.group_list()
    assert "AirQualityObserved" in ckan.action.tag_list()
    rows = ckan.action.datastore_search(resource_id=datastore["id"], filters={"attribute": "pm25"},
                                        sort="observedAt desc", limit=3, offset=0, fields=["entityId", "value",
                                                                                           "observedAt"])
    assert rows["total"] == 20 and len(rows["records"]) == 3  # 10 stations × 2 hours
    assert set(rows["records"][0]) == {"entityId", "value", "observedAt"}
    stamps = [r["observedAt"] for r in rows["records"]]
    assert stamps == sorted(stamps, reverse=True)
    # Errors come back as ckanapi's exceptions, mapped from CKAN's error shapes.
    with pytest.raises(ckanapi.NotFound):
        ckan.action.package_show(id="no-such-dataset")
    with pytest.raises(ckanapi.ValidationError):
        ckan.action.datastore_search(resource_id=datastore["id"], filters={"nosuchfield": 1})
    with pytest.raises(ckanapi.SearchQueryError):
        ckan.call_action("package_search", {"fq": "organization:x OR 1=1"})
    # A conditionally open dataset needs its API key.
    with pytest.raises(ckanapi.NotAuthorized):
        ckan.action.datastore_search(resource_id="hub-airqualityobserved")
    keyed = ckanapi.RemoteCKAN(url, apikey=api_key, user_agent="cityos-test")
    got = keyed.action.datastore_search(resource_id="hub-airqualityobserved", limit=1)
    assert got["total"] == 10 and "batteryLevel" in got["records"][0]


async def test_ckan_shapes(client: httpx.AsyncClient, anon_client: httpx.AsyncClient) -> None:
    await _seeded(client)
    r = await anon_client.get(f"{A}/package_list")
    body = r.json()
    assert r.status_code == 200 and set(body) == {"help", "success", "result"} and body["success"] is True
    assert body["help"].endswith("/api/3/action/help_show?name=package_list")
    package = (await anon_client.get(f"{A}/package_show", params={"id": "hub-district"})).json()["result"]
    for key in ("id", "name", "title", "notes", "organization", "owner_org", "tags", "groups", "resources",
                "metadata_created", "metadata_modified", "license_id", "state", "type", "extras", "num_resources"):
        assert key in package
    assert {r["format"] for r in package["resources"]} == {"JSON", "CSV", "PARQUET", "GEOJSON"}
    extras = {e["key"]: e["value"] for e in package["extras"]}
    assert extras["open_type_zh"] == "无条件开放" and extras["share_type_zh"] == "无条件共享"
    # POST with a JSON body works as GET does.
    posted = await anon_client.post(f"{A}/datastore_search", json={"resource_id": "hub-district", "limit": 2,
                                                                    "sort": "name asc"})
    result = posted.json()["result"]
    assert result["total"] == 10 and len(result["records"]) == 2 and result["records"][0]["_id"]
    assert result["fields"][0] == {"id": "_id", "type": "int"}
    assert result["_links"]["next"].endswith("offset=2")
    names = [r["name"] for r in result["records"]]
    assert names == sorted(names)
    q = (await anon_client.get(f"{A}/datastore_search", params={"resource_id": "hub-district", "q": "Xiuying"})).json()
    assert q["result"]["total"] == 1
    empty = await anon_client.get(f"{A}/package_search", params={"q": "no-such-thing-at-all"})
    assert empty.json()["result"]["count"] == 0


async def test_ckan_bad_input(client: httpx.AsyncClient, anon_client: httpx.AsyncClient) -> None:
    await _seeded(client)

    async def error(path: str, status: int, kind: str, **params: Any) -> dict[str, Any]:
        r = await anon_client.get(f"{A}/{path}", params=params)
        assert r.status_code == status, (path, params, r.text)
        body = r.json()
        assert body["success"] is False and body["error"]["__type"] == kind, body
        assert "Traceback" not in r.text
        return dict(body["error"])

    await error("package_show", 404, "Not Found Error", id="nope")
    await error("package_show", 409, "Validation Error")
    await error("resource_show", 404, "Not Found Error", id="hub-district.xlsx")
    await error("datastore_search", 404, "Not Found Error", resource_id="nope")
    await error("no_such_action", 400, "Bad request")
    for fq in ("name:x OR 1=1", "title:*", "{!join from=id to=id}x", "secret:1", "name:(a b)", "x" * 2000):
        await error("package_search", 409, "Search Query Error", fq=fq)
    for sort in ("password desc", "name; DROP TABLE data_datasets"):
        await error("package_search", 409, "Search Query Error", sort=sort)
    await error("package_search", 409, "Validation Error", rows="100000")
    await error("package_search", 409, "Validation Error", rows="-1")
    await error("package_search", 409, "Validation Error", **{"facet.field": '["password"]'})
    await error("package_search", 409, "Validation Error", **{"facet.field": "[broken"})
    injected = await anon_client.get(f"{A}/package_search", params={"q": "' OR '1'='1"})
    assert injected.status_code == 200 and injected.json()["result"]["count"] == 0
    rid = "readings-airqualityobserved"
    for filters in ("{broken", "[1, 2]", '{"value": {"$gt": 1}}', '{"nosuch": 1}', '{"value": "abc"}',
                    '{"observedAt": "yesterday"}', '{"entityId": ["x"' + ', "y"' * 200 + "]}"):
        await error("datastore_search", 409, "Validation Error", resource_id=rid, filters=filters)
    for limit in ("100000000", "-5", "ten"):
        await error("datastore_search", 409, "Validation Error", resource_id=rid, limit=limit)
    await error("datastore_search", 409, "Validation Error", resource_id=rid, offset="99999999999")
    await error("datastore_search", 409, "Validation Error", resource_id=rid, sort="value; DROP TABLE data_rows")
    await error("datastore_search", 409, "Validation Error", resource_id=rid, fields="value,password")
    injected_filter = await anon_client.get(f"{A}/datastore_search", params={
        "resource_id": rid, "filters": orjson.dumps({"entityId": "x' OR '1'='1"}).decode()})
    assert injected_filter.json()["result"]["total"] == 0
    total = (await anon_client.get(f"{A}/datastore_search", params={"resource_id": rid})).json()["result"]["total"]
    assert total > 0  # nothing was dropped by the attempts above
    bad_json = await anon_client.post(f"{A}/package_show", content=b"{oops", headers={"Content-Type":
                                                                                      "application/json"})
    assert bad_json.status_code == 400 and bad_json.json()["error"]["__type"] == "Bad request"
    array = await anon_client.post(f"{A}/package_show", json=[1, 2])
    assert array.status_code == 400
    await error("datastore_search", 403, "Authorization Error", resource_id="hub-airqualityobserved")
    bad_key = await anon_client.get(f"{A}/package_list", headers={"Authorization": "cok_forged"})
    assert bad_key.status_code == 403


async def test_tiers_and_desensitisation(client: httpx.AsyncClient, anon_client: httpx.AsyncClient,
                                         auth: Auth) -> None:
    await _seeded(client)
    meters = "hub-energymeter"
    assert (await anon_client.get(f"{A}/datastore_search", params={"resource_id": meters})).status_code == 403
    key = await _key(client, [meters], rate=3)
    headers = {"Authorization": key["key"]}
    got = (await anon_client.get(f"{A}/datastore_search", params={"resource_id": meters, "limit": 1},
                                 headers=headers)).json()["result"]
    record = got["records"][0]
    # sensitive → masked, internal → shown with a key, public → clear
    assert record["activePower"] == "***" and record["totalActiveEnergyImport"] == "***"
    assert isinstance(record["voltage"], float)
    assert {f["id"] for f in got["fields"]} >= {"activePower", "voltage"}
    # The key covers this dataset only, and its rate (3 a minute) is enforced.
    other = await anon_client.get(f"{A}/datastore_search", params={"resource_id": "hub-airqualityobserved"},
                                  headers=headers)
    assert other.status_code == 403
    statuses = [(await anon_client.get(f"{A}/datastore_search", params={"resource_id": meters},
                                       headers=headers)).status_code for _ in range(3)]
    assert statuses[-1] == 429
    # A revoked key is refused.
    assert (await client.delete(f"/api/data/keys/{key['id']}")).status_code == 204
    assert (await anon_client.get(f"{A}/datastore_search", params={"resource_id": meters},
                                  headers=headers)).status_code == 403
    assert (await client.delete(f"/api/data/keys/{key['id']}")).status_code == 404
    # Keys: bad input and who may issue them.
    for body in ({"holder": "x", "purpose": "p", "datasets": [meters]},
                 {"holder": "x", "purpose": "purpose", "datasets": [], "ratePerMinute": 5},
                 {"holder": "x", "purpose": "purpose", "datasets": [meters], "ratePerMinute": 10 ** 9},
                 {"holder": "x", "purpose": "purpose", "datasets": "all"}):
        assert (await client.post("/api/data/keys", json=body)).status_code == 400
    assert (await client.post("/api/data/keys", json={"holder": "x", "purpose": "purpose",
                                                      "datasets": ["nope"]})).status_code == 404
    assert (await client.post("/api/data/keys", json={"holder": "x", "purpose": "purpose", "datasets": [meters]},
                              headers=auth.headers("citizen"))).status_code == 403
    # A registered dataset's confidential field never appears, not even with a key.
    await client.post("/api/data/datasets", headers=auth.headers("official", department="civil-affairs"), json={
        "code": "canteens", "title": "长者食堂", "fields": [{"id": "name", "class": "public"},
                                                          {"id": "manager", "class": "sensitive"},
                                                          {"id": "contract", "class": "confidential"}],
        "records": [{"name": "海秀长者食堂", "manager": "王小明", "contract": "HT-001"}]})
    key2 = await _key(client, ["canteens"])
    seen = await anon_client.get(f"{A}/datastore_search", params={"resource_id": "canteens"},
                                 headers={"Authorization": key2["key"]})
    assert seen.json()["result"]["records"][0]["manager"] == "王**"
    assert "HT-001" not in seen.text and "contract" not in seen.text


async def test_downloads(client: httpx.AsyncClient, anon_client: httpx.AsyncClient) -> None:
    await _seeded(client)
    code = "hub-district"
    csv = await anon_client.get(f"/opendata/download/{code}.csv")
    assert csv.status_code == 200 and csv.headers["content-type"].startswith("text/csv")
    lines = csv.content.decode("utf-8-sig").splitlines()
    assert lines[0].startswith("_id,id,") and len(lines) == 11
    doc = (await anon_client.get(f"/opendata/download/{code}.json")).json()
    assert len(doc["records"]) == 10
    geo = (await anon_client.get(f"/opendata/download/{code}.geojson")).json()
    assert geo["type"] == "FeatureCollection" and geo["features"][0]["geometry"]["type"] == "Polygon"
    parquet = await anon_client.get(f"/opendata/download/{code}.parquet")
    table = pq.read_table(io.BytesIO(parquet.content))
    assert table.num_rows == 10 and "population" in table.column_names
    readings = await anon_client.get("/opendata/download/readings-airqualityobserved-a-pm25.parquet")
    assert pq.read_table(io.BytesIO(readings.content)).num_rows == 20
    assert (await anon_client.get(f"/opendata/download/{code}.xlsx")).status_code == 404
    assert (await anon_client.get("/opendata/download/nope.csv")).status_code == 404
    assert (await anon_client.get("/opendata/download/readings-airqualityobserved.geojson")).status_code == 404
    assert (await anon_client.get("/opendata/download/hub-energymeter.csv")).status_code == 403
    assert (await anon_client.get(f"/opendata/download/{code}.csv", params={"as_of": "tomorrow"})).status_code == 400
    stats = (await client.get("/api/data/usage")).json()["usage"]
    assert stats[code]["download"] == 4


async def test_datastore_totals_sorting_and_estimates(client: httpx.AsyncClient, anon_client: httpx.AsyncClient,
                                                      database_url: str) -> None:
    await _seeded(client)
    rid = "readings-airqualityobserved"
    everything = (await anon_client.get(f"{A}/datastore_search", params={"resource_id": rid, "limit": 32000})
                  ).json()["result"]
    count = len(everything["records"])
    assert count > 20 and everything["total"] == count and everything["total_was_estimated"] is False
    station = everything["records"][0]["entityId"]
    attribute = everything["records"][0]["attribute"]
    expected = sorted((r for r in everything["records"] if r["entityId"] == station and r["attribute"] == attribute),
                      key=lambda r: (r["observedAt"], r["_id"]), reverse=True)
    filters = orjson.dumps({"entityId": station, "attribute": attribute}).decode()
    # The reading-history query of the benchmark: filter + sort, paged; pages neither overlap nor skip.
    pages = []
    for offset in range(0, len(expected), 1):
        page = (await anon_client.get(f"{A}/datastore_search", params={
            "resource_id": rid, "filters": filters, "sort": "observedAt desc", "limit": 1, "offset": offset})
                ).json()["result"]
        assert page["total"] == len(expected) and page["total_was_estimated"] is False
        pages += page["records"]
    assert [r["_id"] for r in pages] == [r["_id"] for r in expected]
    # CKAN's total_estimation_threshold: no estimate with filters (CKAN's rule), an exact count below it.
    exact = (await anon_client.get(f"{A}/datastore_search", params={
        "resource_id": rid, "filters": filters, "limit": 1, "total_estimation_threshold": 0})).json()["result"]
    assert exact["total"] == len(expected) and exact["total_was_estimated"] is False
    high = (await anon_client.get(f"{A}/datastore_search", params={
        "resource_id": rid, "limit": 1, "total_estimation_threshold": 10_000_000})).json()["result"]
    assert high["total"] == count and high["total_was_estimated"] is False
    low = (await anon_client.get(f"{A}/datastore_search", params={
        "resource_id": rid, "limit": 1, "total_estimation_threshold": 0})).json()["result"]
    if database_url.startswith("postgresql"):
        # The planner's estimate of the matching rows (what CKAN reads from PostgreSQL's statistics).
        assert low["total_was_estimated"] is True and low["total"] > 0
    else:
        assert low["total_was_estimated"] is False and low["total"] == count
    for bad in ("-1", "x", "1.5", "²", "9" * 5000):
        refused = await anon_client.get(f"{A}/datastore_search", params={
            "resource_id": rid, "total_estimation_threshold": bad})
        assert refused.status_code == 409 and "total_estimation_threshold" in refused.json()["error"]
