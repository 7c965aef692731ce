"""Which entities an aggregated query answered from the rollups selects: the same as from the raw rows.

When the rollups answer a query (`rollups.grain_for`), the has-history test of `attrs` asks them first
(`service._has_history`); these tests compare that path with CITYOS_TEMPORAL_ROLLUPS=0 (raw rows
everywhere) on the answers, the counts and every page, and pin what both must give.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from hub.temporal.temporal_helpers import JSON, E, T, at, post_series, reading, sensor

TENANT_B = {"NGSILD-Tenant": "rollup-sel-b"}


def hourly(**extra: str) -> dict[str, str]:
    return {"type": "Sensor", "attrs": "temperature", "options": "aggregatedValues", "aggrMethods": "avg,totalCount",
            "aggrPeriodDuration": "PT1H", "timerel": "between", "timeAt": at(0), "endTimeAt": at(240), **extra}


def bound(minutes: float) -> str:
    return at(minutes).replace(".000Z", "Z")


async def deletion_only(client: httpx.AsyncClient, entity_id: str) -> None:
    """An entity of the entity API whose temperature history is a recorded deletion and nothing else:
    its one value is deleted through the temporal API (its rollup buckets marked, then recomputed away)."""
    entity = {"id": entity_id, "type": "Sensor", "temperature": reading(7, at(30)), "humidity": reading(50, at(30))}
    assert (await client.post(E, json=entity, headers=JSON)).status_code == 201
    assert (await client.delete(f"{E}/{entity_id}/attrs/temperature")).status_code == 204
    instances = (await client.get(f"{T}/{entity_id}", params={"attrs": "temperature"})).json()["temperature"]
    [value] = [i for i in instances if i.get("value") == 7]
    r = await client.delete(f"{T}/{entity_id}/attrs/temperature/{value['instanceId']}")
    assert r.status_code == 204, r.text


async def city(client: httpx.AsyncClient) -> None:
    # 1: temperature with an empty hour (none in 60–120); created through the temporal API (registry).
    await post_series(client, sensor(1), [(10, at(5)), (20, at(15)), (40, at(130))])
    # 2: through the entity API, then more readings in the same hour and a late one in the first.
    entity = {"id": sensor(2), "type": "Sensor", "temperature": reading(1, at(61))}
    assert (await client.post(E, json=entity, headers=JSON)).status_code == 201
    await post_series(client, sensor(2), [(3, at(62)), (5, at(1))])
    # 3: history of temperature that is only a recorded deletion: selected (it has history), no buckets.
    await deletion_only(client, sensor(3))
    # 4: history of another attribute only; 5: registry entity with another attribute only.
    entity = {"id": sensor(4), "type": "Sensor", "humidity": reading(40, at(10))}
    assert (await client.post(E, json=entity, headers=JSON)).status_code == 201
    await post_series(client, sensor(5), [(1, at(10))], attr="humidity")
    # Another tenant: the same ids, with temperature where the default tenant has none (4, 5), and none
    # where it has some (1): nothing of it may count in the default tenant, nor the other way round.
    for n in (4, 5):
        await post_series(client, sensor(n), [(100 + n, at(20))], headers=TENANT_B)
    await post_series(client, sensor(1), [(1, at(20))], attr="humidity", headers=TENANT_B)


async def both(client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch, params: dict[str, str],
               headers: dict[str, str] | None = None) -> httpx.Response:
    """The answer from the rollups, checked equal (body, count, links) to the answer from the raw rows."""
    rolled = await client.get(T, params=params, headers=headers or {})
    with monkeypatch.context() as m:
        m.setenv("CITYOS_TEMPORAL_ROLLUPS", "0")
        raw = await client.get(T, params=params, headers=headers or {})
    assert rolled.status_code == raw.status_code == 200, (rolled.text, raw.text)
    assert rolled.json() == raw.json()
    for header in ("NGSILD-Results-Count", "Link"):
        assert rolled.headers.get(header) == raw.headers.get(header), header
    return rolled


async def test_selection_from_rollups_is_the_raw_selection(client: httpx.AsyncClient,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    await city(client)
    r = await both(client, monkeypatch, hourly(count="true"))
    body = r.json()
    # 3 is selected and counted (it has history of temperature) but has no bucket in the window, so it is
    # not shown (§5.7.4); 4 and 5 have no temperature history here, whatever tenant B has.
    assert r.headers["NGSILD-Results-Count"] == "3"
    assert [e["id"] for e in body] == [sensor(1), sensor(2)]
    one, two = body[0]["temperature"], body[1]["temperature"]
    # Empty periods give no bucket: sensor 1 has none in the second hour.
    assert one["avg"] == [[15.0, bound(0), bound(60)], [40.0, bound(120), bound(180)]]
    assert two["avg"] == [[5.0, bound(0), bound(60)], [2.0, bound(60), bound(120)]]
    assert two["totalCount"] == [[1, bound(0), bound(60)], [2, bound(60), bound(120)]]


async def test_pages_from_rollups_are_the_raw_pages(client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch) -> None:
    await city(client)
    shown: list[str] = []
    for offset in range(4):
        r = await both(client, monkeypatch, hourly(limit="1", offset=str(offset), count="true"))
        assert r.headers["NGSILD-Results-Count"] == "3"
        shown += [e["id"] for e in r.json()]
    assert shown == [sensor(1), sensor(2)]  # the third page (sensor 3) is empty, the fourth past the end
    # Keyset paging (the next-page link after the last id): the same pages.
    r = await both(client, monkeypatch, hourly(limit="2"))
    assert [e["id"] for e in r.json()] == [sensor(1), sensor(2)]
    assert "rel=\"next\"" in r.headers.get("Link", "")


async def test_other_tenant_from_rollups(client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch) -> None:
    await city(client)
    r = await both(client, monkeypatch, hourly(count="true"), headers=TENANT_B)
    assert r.headers["NGSILD-Results-Count"] == "2"
    body: list[dict[str, Any]] = r.json()
    assert [(e["id"], e["temperature"]["avg"]) for e in body] == [
        (sensor(4), [[104.0, bound(0), bound(60)]]), (sensor(5), [[105.0, bound(0), bound(60)]])]


async def test_no_entity_with_history_from_rollups(client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch) -> None:
    entity = {"id": sensor(9), "type": "Sensor", "humidity": reading(40, at(10))}
    assert (await client.post(E, json=entity, headers=JSON)).status_code == 201
    r = await both(client, monkeypatch, hourly(count="true"))
    assert r.json() == [] and r.headers["NGSILD-Results-Count"] == "0"
