"""`orderBy` on entity and temporal queries (NGSI-LD v1.9.1 §4.23, §6.4.3.2; not in v1.8.1, where
clients never send it): members in turn, `;asc`/`;desc`, entity members, attribute values, their
sub-attributes and reserved members; missing values last; stable paging by id."""

from __future__ import annotations

import httpx
import pytest

from hub.helpers import JSON

E = "/ngsi-ld/v1/entities"
T = "/ngsi-ld/v1/temporal/entities"
B = "urn:ngsi-ld:Building:"


def building(n: int, name: str, rank: int) -> dict[str, object]:
    return {"id": f"{B}{n}", "type": "Building",
            "name": {"type": "Property", "value": name, "rank": {"type": "Property", "value": rank}}}


@pytest.fixture
async def three(client: httpx.AsyncClient) -> httpx.AsyncClient:
    # created in the order 2, 1, 3; names A, B, C for ids 1, 2, 3; ranks 10, 9, 100 (numbers, not text)
    for n, name, rank in ((2, "B", 9), (1, "A", 10), (3, "C", 100)):
        assert (await client.post(E, json=building(n, name, rank), headers=JSON)).status_code == 201
    return client


def ids(r: httpx.Response) -> list[str]:
    assert r.status_code == 200, r.text
    return [e["id"].removeprefix(B) for e in r.json()]


@pytest.mark.parametrize(("order", "expected"), [
    ("name", "123"), ("id", "123"), ("id;desc", "321"), ("createdAt", "213"), ("name.createdAt", "213"),
    ("name;asc", "123"), ("name;desc", "321"), ("type,name", "123"), ("name.rank", "213"),
    ("name.rank;desc", "312"), ("type;asc,name.rank;desc,name;asc", "312"), ("modifiedAt;desc", "312"),
])
async def test_order_by(three: httpx.AsyncClient, order: str, expected: str) -> None:
    assert "".join(ids(await three.get(E, params={"type": "Building", "orderBy": order}))) == expected
    temporal = await three.get(T, params={"type": "Building", "orderBy": order, "timerel": "after",
                                          "timeAt": "1970-01-01T00:00:00Z", "timeproperty": "createdAt"})
    assert "".join(ids(temporal)) == expected


async def test_missing_values_come_last_and_pages_follow_the_order(three: httpx.AsyncClient) -> None:
    bare = {"id": f"{B}0", "type": "Building"}
    assert (await three.post(E, json=bare, headers=JSON)).status_code == 201
    for order in ("name", "name;desc"):
        got = ids(await three.get(E, params={"type": "Building", "orderBy": order}))
        assert got[-1] == "0", (order, got)
    first = await three.get(E, params={"type": "Building", "orderBy": "name;desc", "limit": "2"})
    assert ids(first) == ["3", "2"]
    nxt = next(part.split(";")[0].strip().strip("<>") for part in first.headers["Link"].split(",")
               if 'rel="next"' in part)
    assert "after=" not in nxt  # offset paging: an id cursor does not follow a value order
    assert ids(await three.get(nxt)) == ["1", "0"]


@pytest.mark.parametrize("order", ["name;up", "", "name,,id", "name;", "a b", "name.createdAt.x"])
async def test_bad_order_by_is_400(three: httpx.AsyncClient, order: str) -> None:
    r = await three.get(E, params={"type": "Building", "orderBy": order})
    assert r.status_code == 400, (order, r.text)
    assert r.json()["type"] == "https://uri.etsi.org/ngsi-ld/errors/BadRequestData"
