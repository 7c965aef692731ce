"""The in-memory search index behind package_search: past its TTL it reloads only when the catalogue changed
(another process's write is seen through the change mark), and answers like the SQL search."""

from __future__ import annotations

from typing import Any

import httpx
from sqlalchemy import update

from cityos.core.db import write_transaction
from cityos.data.catalogue import SearchQuery, search
from cityos.data.models import datasets
from cityos.data.searchindex import SearchIndex

BODY = {"code": "canteens", "title": "长者食堂名录", "keyField": "name",
        "fields": [{"id": "name", "class": "public"}], "records": [{"name": "海秀长者食堂"}]}


async def test_the_index_reloads_only_on_change(client: httpx.AsyncClient, app: Any, auth: Any) -> None:
    official = auth.headers("official", department="civil-affairs")
    assert (await client.post("/api/data/datasets", json=BODY, headers=official)).status_code == 201
    engine = app.state.engine
    index = SearchIndex(engine, ttl=0)  # another process's index: every call is past its TTL
    first = await index.rows("")
    assert [d["id"] for d in first] == ["canteens"]
    # Unchanged: the same list object is served again (no reload).
    assert await index.rows("") is first
    # Another process changes an entry without telling this index: the mark changes, the index reloads.
    async with write_transaction(engine, app.state.data.catalogue.lock) as conn:
        await conn.execute(update(datasets).where(datasets.c.id == "canteens").values(quality_score=42.0))
    again = await index.rows("")
    assert again is not first and again[0]["quality_score"] == 42.0
    assert await index.rows("") is again
    # A second dataset (a count change) is seen too, and the search answers as SQL does.
    assert (await client.post("/api/data/datasets", json={**BODY, "code": "canteens-2"},
                              headers=official)).status_code == 201
    query = SearchQuery(text="长者", rows=10, facets=("organization",))
    from_index = await index.search("", query)
    from_sql = await search(engine, "", query)
    assert from_index["count"] == from_sql["count"] == 2
    assert [d["id"] for d in from_index["results"]] == [d["id"] for d in from_sql["results"]]
    assert from_index["facets"] == from_sql["facets"]
    # Unknown tenants hold nothing.
    assert await index.rows("nobody") == []
