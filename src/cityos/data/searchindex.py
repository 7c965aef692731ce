"""The open catalogue's search index, in memory: `package_search` and the other CKAN listings answer from
it without a database round trip (the catalogue is hundreds to a few thousand entries).

It holds each tenant's catalogue rows and answers `SearchQuery` exactly as `catalogue.search` does in SQL
(same matching, order, paging and facets). It is rebuilt on the next search after this process changed
the catalogue, and at most CITYOS_DATA_SEARCH_TTL_SECONDS (default 5) after another process did (checked
with a one-row aggregate, so an unchanged catalogue is not read again): the
near-real-time behaviour of CKAN's own search index (Solr commits), which package_search documents by
reading from the index, not the database.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from cityos.config import env_float
from cityos.data.catalogue import FACETS, SEARCH_COLUMNS, SORT_COLUMNS, SearchQuery
from cityos.data.models import OPEN_NONE, datasets


class SearchIndex:
    def __init__(self, engine: AsyncEngine, ttl: float | None = None) -> None:
        self.engine = engine
        self.ttl = env_float("CITYOS_DATA_SEARCH_TTL_SECONDS", 5.0) if ttl is None else ttl
        self._rows: dict[str, tuple[float, list[dict[str, Any]]]] = {}
        self._marks: dict[str, tuple[Any, ...]] = {}  # tenant → the catalogue's change mark when loaded

    def invalidate(self, tenant: str | None = None) -> None:
        """This process changed the catalogue of `tenant` (None: of every tenant)."""
        if tenant is None:
            self._rows.clear()
            self._marks.clear()
        else:
            self._rows.pop(tenant, None)
            self._marks.pop(tenant, None)

    async def rows(self, tenant: str) -> list[dict[str, Any]]:
        held = self._rows.get(tenant)
        now = time.monotonic()
        if held is not None and now - held[0] < self.ttl:
            return held[1]
        async with self.engine.connect() as conn:
            # Past the TTL, a one-row aggregate tells whether another process changed the catalogue;
            # only then are all entries (and their JSON fields) read again. The full reload every TTL
            # was the tail of package_search: one request in each window paid for it.
            mark = tuple((await conn.execute(select(
                func.count(), func.max(datasets.c.modified_at), func.max(datasets.c.harvested_at),
                func.sum(datasets.c.version), func.sum(datasets.c.row_count), func.sum(datasets.c.quality_score))
                .where(datasets.c.tenant == tenant))).one())
            if held is not None and self._marks.get(tenant) == mark:
                self._rows[tenant] = (now, held[1])
                return held[1]
            found = [dict(r) for r in (await conn.execute(
                select(datasets).where(datasets.c.tenant == tenant).order_by(datasets.c.id))).mappings()]
        self._rows[tenant] = (now, found)
        self._marks[tenant] = mark
        return found

    async def search(self, tenant: str, query: SearchQuery) -> dict[str, Any]:
        matches = [ds for ds in await self.rows(tenant) if _matches(ds, query)]
        # Stable sorts from the last key to the first give the SQL order (ties by id, ascending).
        for column, descending in reversed(query.sort):
            name = SORT_COLUMNS[column].name
            matches.sort(key=lambda ds, n=name: ds[n], reverse=descending)  # type: ignore[misc]
        facets: dict[str, dict[str, int]] = {}
        for name in query.facets:
            counter: Counter[str] = Counter()
            if name == "tags":
                for ds in matches:
                    counter.update(ds["tags"] or [])
                facets[name] = dict(counter.most_common(50))
                continue
            column = FACETS[name].name
            counter.update(str(ds[column]) for ds in matches if ds[column] is not None)
            facets[name] = dict(counter.most_common())
        page = matches[query.start:query.start + query.rows]
        return {"count": len(matches), "results": page, "facets": facets}


def _matches(ds: dict[str, Any], query: SearchQuery) -> bool:
    if query.open_only and ds["open_type"] == OPEN_NONE:
        return False
    text = ds["search_text"]
    if not all(word in text for word in query.text.lower().split()[:10]):
        return False
    for name, values in query.terms.items():
        if name == "tags":
            if not all(f"|{v.replace('%', '')}|" in ds["tag_text"] for v in values):
                return False
        elif ds[SEARCH_COLUMNS[name].name] not in values:
            return False
    return True
