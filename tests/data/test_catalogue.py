"""The catalogue over what the simulated city produces: harvesting, counts, metadata, search with facets,
department registration, snapshots read as of a day, and every bad input."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from city import UPSERT, seed_city

from auth_tokens import Auth
from cityos.core import clock
from cityos.data.scheduled import start_harvest

DAY1 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
DAY2 = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)


@pytest.fixture
def day() -> Iterator[list[datetime]]:
    moment = [DAY1]
    clock.set_clock(lambda: moment[0])
    try:
        yield moment
    finally:
        clock.reset_clock()


async def test_the_city_fills_the_catalogue(client: httpx.AsyncClient, app: Any, day: list[datetime]) -> None:
    await seed_city(client, hours=3, per_district=3)
    harvested = await client.post("/api/data/harvest")
    assert harvested.status_code == 200, harvested.text
    everything = await app.state.data.catalogue.all("")
    assert len(everything) >= 300
    empty = [d["id"] for d in everything if d["row_count"] <= 0]
    assert not empty, f"datasets without data: {empty[:5]}"
    open_ones = [d for d in everything if d["open_type"] != "none"]
    assert len(open_ones) >= 100
    # Every dataset carries the GB/T 21063 metadata and a class per field.
    for ds in everything:
        assert ds["title"] and ds["provider"] and ds["category"] and ds["update_cycle"]
        assert ds["share_type"] in ("unconditional", "conditional", "none")
        assert all(f["class"] in ("public", "internal", "sensitive", "confidential") for f in ds["fields"])
    kinds = {d["source_kind"] for d in everything}
    assert kinds == {"entities", "readings", "index"}
    # The smart meters' consumption is sensitive: the dataset is shared on condition and open on condition.
    meters = await client.get("/api/data/datasets/hub-energymeter")
    body = meters.json()
    assert body["shareType"] == "conditional" and body["shareTypeZh"] == "有条件共享"
    assert {f["id"]: f["dataClass"] for f in body["fields"]}["activePower"] == "sensitive"
    assert body["versions"][0]["rows"] == body["rows"] > 0


async def test_search_with_facets(client: httpx.AsyncClient) -> None:
    await seed_city(client, hours=2, per_district=1)
    await client.post("/api/data/harvest")
    found = (await client.get("/api/data/datasets", params={"q": "pm25", "rows": 50})).json()
    assert found["count"] >= 1
    assert all("pm25" in str(d).lower() for d in found["datasets"])
    by_dept = (await client.get("/api/data/datasets", params={"provider": "transport", "rows": 500})).json()
    assert by_dept["count"] > 0 and {d["provider"] for d in by_dept["datasets"]} == {"transport"}
    assert by_dept["facets"]["organization"] == {"transport": by_dept["count"]}
    tagged = (await client.get("/api/data/datasets", params={"tag": "school", "category": "public-services"})).json()
    assert tagged["count"] == 11  # the city's schools, and per district
    assert all("school" in d["tags"] for d in tagged["datasets"])
    district = (await client.get("/api/data/datasets", params={"district": "Xiuying", "rows": 0})).json()
    assert district["count"] > 0 and district["facets"]["district"] == {"Xiuying": district["count"]}
    nothing = (await client.get("/api/data/datasets", params={"q": "'; DROP TABLE data_datasets; --"})).json()
    assert nothing["count"] == 0
    assert (await client.get("/api/data/datasets", params={"q": "%"})).json()["count"] == 0
    assert (await client.get("/api/data/datasets", params={"rows": "-1"})).status_code == 400
    assert (await client.get("/api/data/datasets", params={"rows": "100000"})).status_code == 400
    assert (await client.get("/api/data/datasets/no-such-dataset")).status_code == 404


async def test_catalogue_needs_staff(client: httpx.AsyncClient, anon_client: httpx.AsyncClient, auth: Auth) -> None:
    assert (await anon_client.get("/api/data/datasets")).status_code == 401
    assert (await client.get("/api/data/datasets", headers=auth.headers("citizen"))).status_code == 403
    assert (await client.post("/api/data/harvest", headers=auth.headers("official", department="transport"))
            ).status_code == 403
    assert (await client.get("/api/data/datasets", headers=auth.headers("official", department="transport"))
            ).status_code == 200


async def test_a_department_registers_a_dataset(client: httpx.AsyncClient, auth: Auth) -> None:
    official = auth.headers("official", department="civil-affairs")
    body = {"code": "elderly-canteens", "title": "长者食堂名录", "titleEn": "Elderly canteens", "category": "social",
            "updateCycle": "monthly", "tags": ["elderly", "canteen"], "keyField": "name",
            "fields": [{"id": "name", "class": "public"}, {"id": "seats", "class": "public", "type": "numeric"},
                       {"id": "manager", "class": "sensitive"}, {"id": "contract", "class": "confidential"}],
            "records": [{"name": "海秀长者食堂", "seats": 40, "manager": "王小明", "contract": "HT-001"},
                        {"name": "龙华长者食堂", "seats": 25, "manager": "李四", "contract": "HT-002"}]}
    made = await client.post("/api/data/datasets", json=body, headers=official)
    assert made.status_code == 201, made.text
    assert made.json() == {"code": "elderly-canteens", "version": 1, "rows": 2}
    shown = (await client.get("/api/data/datasets/elderly-canteens")).json()
    assert shown["provider"] == "civil-affairs" and shown["openType"] == "conditional"
    assert shown["shareType"] == "conditional" and shown["updateCycleZh"] == "每月"
    # Bad input: each refused with a reason, nothing stored.
    bad = [({**body, "code": "Bad Code!"}, "code"), ({**body, "code": "hub-x"}, "code"),
           ({**body, "code": "x2", "fields": []}, "fields"),
           ({**body, "code": "x3", "fields": [{"id": "a", "class": "secret"}], "records": []}, "class"),
           ({**body, "code": "x4", "fields": [{"id": "a", "class": "public"}, {"id": "a", "class": "public"}],
             "records": []}, "unique"),
           ({**body, "code": "x5", "records": [{"name": "x", "unknown": 1}]}, "declared"),
           ({**body, "code": "x6", "records": "nope"}, "records"),
           ({**body, "code": "x7", "updateCycle": "hourly"}, "updateCycle"),
           ({**body, "code": "x8", "title": ""}, "title")]
    for doc, word in bad:
        refused = await client.post("/api/data/datasets", json=doc, headers=official)
        assert refused.status_code == 400, (doc["code"], refused.text)
        assert word in refused.json()["detail"]
    malformed = await client.post("/api/data/datasets", content=b"{not json", headers={
        **official, "Content-Type": "application/json"})
    assert malformed.status_code == 400
    assert (await client.post("/api/data/datasets", json=body, headers=auth.headers("citizen"))).status_code == 403
    no_dept = await client.post("/api/data/datasets", json={**body, "code": "x9"})  # the sys_admin has none
    assert no_dept.status_code in (400, 403)
    listing = (await client.get("/api/data/datasets", params={"q": "canteen"})).json()
    assert [d["code"] for d in listing["datasets"]] == ["elderly-canteens"]


async def test_snapshots_read_as_of_a_day(client: httpx.AsyncClient, day: list[datetime]) -> None:
    await seed_city(client, hours=1, per_district=1)
    await client.post("/api/data/harvest")
    again = (await client.post("/api/data/harvest")).json()
    rows_before = (await client.get("/api/data/datasets/readings-airqualityobserved")).json()["rows"]
    district = "urn:ngsi-ld:District:sim-district-01"
    day[0] = DAY2
    changed = await client.post(UPSERT, json=[{"id": district, "type": "District",
                                               "population": {"type": "Property", "value": 123456}}])
    assert changed.status_code in (201, 204)
    await client.post("/api/data/harvest")
    shown = (await client.get("/api/data/datasets/hub-district")).json()
    assert [v["version"] for v in shown["versions"]] == [1, 2]
    # The history is not copied twice by a second harvest.
    assert (await client.get("/api/data/datasets/readings-airqualityobserved")).json()["rows"] == rows_before
    assert again["datasets"] > 0

    async def population(as_of: str | None) -> Any:
        params = {"resource_id": "hub-district", "filters": f'{{"id": "{district}"}}'}
        if as_of:
            params["as_of"] = as_of
        r = await client.get("/api/3/action/datastore_search", params=params)
        assert r.status_code == 200, r.text
        return r.json()["result"]["records"][0]["population"]

    assert await population(None) == 123456
    assert await population("2026-12-02") == 123456
    assert await population("2026-12-01") != 123456
    for bad in ("2026-13-01", "yesterday", "2026-10-01", "2026-12-09"):
        r = await client.get("/api/3/action/datastore_search", params={"resource_id": "hub-district", "as_of": bad})
        assert r.status_code == 409 and r.json()["error"]["__type"] == "Validation Error"


async def test_the_catalogue_harvests_itself_on_schedule(client: httpx.AsyncClient, app: Any) -> None:
    """No manual call: the periodic harvest catalogues what the city writes, and a new entity type appears
    in the catalogue (and the CKAN package list) at the next round."""
    catalogue = app.state.data.catalogue

    async def codes_within(seconds: float, wanted: str) -> set[str]:
        for _ in range(int(seconds * 10)):
            codes = {d["id"] for d in await catalogue.all("")}
            if wanted in codes:
                return codes
            await asyncio.sleep(0.1)
        raise AssertionError(f"{wanted} was not catalogued within {seconds} s")

    await seed_city(client, hours=1, per_district=1, profiles=("air-quality",))
    assert await catalogue.all("") == []
    stop = start_harvest(catalogue, [""], interval=0.5, first=0)
    try:
        codes = await codes_within(60, "readings-airqualityobserved")  # the last the round writes
        assert "hub-airqualityobserved" in codes and "hub-noiselevelobserved" not in codes
        made = await client.post("/ngsi-ld/v1/entities", json={
            "id": "urn:ngsi-ld:NoiseLevelObserved:n1", "type": "NoiseLevelObserved", "district":
            {"type": "Property", "value": "Xiuying"}, "LAeq": {"type": "Property", "value": 55.0}})
        assert made.status_code == 201, made.text
        await codes_within(60, "hub-noiselevelobserved")
    finally:
        await stop()
    listed = (await client.get("/api/3/action/package_list")).json()["result"]
    assert "hub-noiselevelobserved" in listed


async def test_a_harvest_appends_readings_a_slice_at_a_time(client: httpx.AsyncClient, app: Any,
                                                            day: list[datetime], monkeypatch: Any) -> None:
    """Readings go into the catalogue in many small transactions (the SQLite writer is free between them);
    every slice carries all copies of its readings, so the totals agree and a second harvest adds nothing.
    Between slices the harvest rests (its duty cycle), here as long as it worked."""
    from cityos.data import catalogue as catalogue_module

    await seed_city(client, hours=2, per_district=1)
    monkeypatch.setattr(catalogue_module, "APPEND_ROWS", 7)
    catalogue = app.state.data.catalogue
    catalogue.harvest_share = 0.5
    rested_before, started = catalogue.harvest_rested, time.monotonic()
    assert (await client.post("/api/data/harvest")).status_code == 200
    assert 0 < catalogue.harvest_rested - rested_before < time.monotonic() - started

    async def counts() -> dict[str, int]:
        return {d["id"]: d["row_count"] for d in await app.state.data.catalogue.all("")
                if d["id"].startswith("readings-airqualityobserved")}

    first = await counts()
    base = first["readings-airqualityobserved"]
    per_quantity = sum(n for code, n in first.items() if code.startswith("readings-airqualityobserved-a-"))
    per_district = sum(n for code, n in first.items() if code.startswith("readings-airqualityobserved-d-"))
    assert base > 70 and per_quantity == base and per_district == base, first
    await client.post("/api/data/harvest")
    assert await counts() == first
