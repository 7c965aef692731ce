"""Full bins become collection tasks for the sanitation department (both backends): bin readings reach the hub as
WasteContainer changes, exactly as IoT ingestion writes them; one open task per bin until it is emptied (by
the crew or seen by the sensor); late readings open nothing; only the sanitation department sees the list."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import httpx

from auth_tokens import Auth

API = "/api/waste/collections"
JSON = {"Content-Type": "application/json"}
T0 = dt.datetime(2026, 12, 5, 2, 0, tzinfo=dt.UTC)


def at(minutes: float) -> str:
    return (T0 + dt.timedelta(minutes=minutes)).isoformat().replace("+00:00", "Z")


async def reading(client: httpx.AsyncClient, name: str, fill: float, minutes: float) -> None:
    """A bin's reading as ingestion writes it: the observed entity's fillingLevel with its observedAt."""
    entity = {"id": f"urn:ngsi-ld:WasteContainer:{name}", "type": "WasteContainer",
              "fillingLevel": {"type": "Property", "value": fill, "observedAt": at(minutes), "unitCode": "C62"},
              "district": {"type": "Property", "value": "xuhui"},
              "location": {"type": "GeoProperty", "value": {"type": "Point", "coordinates": [121.43, 31.18]}}}
    written = await client.post("/ngsi-ld/v1/entityOperations/upsert", json=[entity], headers=JSON)
    assert written.status_code in (201, 204), written.text


async def test_a_full_bin_opens_one_task_until_it_is_emptied(app: Any, client: httpx.AsyncClient) -> None:
    crew = Auth(app).headers("official", department="sanitation", username="crew-1")
    opened: list[dict[str, Any]] = []

    async def seen(event: Any) -> None:
        opened.append(event.payload)

    unsubscribe = app.state.bus.subscribe("waste.collection.opened", seen)
    try:
        await reading(client, "bin-a", 0.35, 0)
        assert (await client.get(API, headers=crew)).json() == []          # not full: no task
        await reading(client, "bin-a", 0.86, 15)
        await reading(client, "bin-a", 0.93, 30)                           # still full: the same task
        await reading(client, "bin-b", 0.5, 30)
        tasks = (await client.get(API, params={"status": "open"}, headers=crew)).json()
        assert len(tasks) == 1 and len(opened) == 1
        task = tasks[0]
        assert (task["name"], task["district"], task["status"], task["fill"]) == ("bin-a", "xuhui", "open", 0.93)
        assert task["location"] == [121.43, 31.18] and task["opened"].startswith("2026-12-05T02:15")

        # The crew empties it; a buffered full reading observed before that opens nothing ...
        done = await client.post(f"{API}/{task['id']}/emptied", headers=crew)
        assert done.status_code == 200 and done.json()["status"] == "emptied"
        assert done.json()["emptiedBy"] is not None
        again = await client.post(f"{API}/{task['id']}/emptied", headers=crew)
        assert again.status_code == 409
        await reading(client, "bin-a", 0.95, 45)
        assert (await client.get(API, params={"status": "open"}, headers=crew)).json() == []

        # ... while a full reading after it is a new task, closed this time by the sensor seeing it empty.
        later = (dt.datetime.now(dt.UTC) - T0).total_seconds() / 60 + 1
        await reading(client, "bin-a", 0.9, later)
        reopened = (await client.get(API, params={"status": "open"}, headers=crew)).json()
        assert len(reopened) == 1 and reopened[0]["id"] != task["id"]
        await reading(client, "bin-a", 0.05, later + 30)
        assert (await client.get(API, params={"status": "open"}, headers=crew)).json() == []
        history = (await client.get(API, params={"status": "all"}, headers=crew)).json()
        assert sorted(t["emptiedBy"] == "sensor" for t in history) == [False, True]
        assert len(opened) == 2
    finally:
        unsubscribe()


async def test_concurrent_full_readings_of_many_bins_open_one_task_each(app: Any, client: httpx.AsyncClient) -> None:
    crew = Auth(app).headers("official", department="sanitation", username="crew-2")
    service = app.state.waste_collection
    readings = [{"bin": f"urn:ngsi-ld:WasteContainer:b{i % 5}", "fill": 0.9, "district": None, "lon": None,
                 "lat": None, "at": T0 + dt.timedelta(minutes=i)} for i in range(40)]
    await asyncio.gather(*(service.observe("", r) for r in readings))
    tasks = (await client.get(API, params={"status": "open"}, headers=crew)).json()
    assert sorted(t["name"] for t in tasks) == [f"b{i}" for i in range(5)]


async def test_only_the_sanitation_department_works_the_list(app: Any, client: httpx.AsyncClient,
                                                             anon_client: httpx.AsyncClient) -> None:
    auth = Auth(app)
    assert (await anon_client.get(API)).status_code == 401
    assert (await client.get(API, headers=auth.headers("citizen", user_id="r1"))).status_code == 403
    assert (await client.get(API, headers=auth.headers("official", department="health"))).status_code == 403
    crew = auth.headers("official", department="sanitation", username="crew-3")
    assert (await client.get(API, params={"status": "sideways"}, headers=crew)).status_code == 400
    assert (await client.post(f"{API}/nope/emptied", headers=crew)).status_code == 404
    assert (await client.post(f"{API}/nope/emptied", headers=auth.headers("citizen"))).status_code == 403
