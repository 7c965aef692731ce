"""Linked entities (ETSI GS CIM 009 v1.8.1 §4.5.23): `join=inline|flat` and `joinLevel`.

With `join=inline` each Relationship shown carries the entity it links to under `entity` (in the
simplified form, the linked entity replaces the object id); with `join=flat` the linked entities
follow the entities asked for in one array, each once. `joinLevel` (default 1) says how many hops
are followed. Linked entities are read as the caller may see them (masked, or left out when it may
see none of them), and rendered with the request's format and options and, when `pick`/`omit` name
a nested projection for the relationship (`locatedAt{id,name}`), with that projection. An entity already
shown above on an `inline` path is not nested again (a cycle), and one request or notification renders at
most `MAX_LINKED_RENDERS` linked entities: past that, relationships keep their object ids.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from typing import Any, Generic, TypeVar

from cityos.core.errors import BadRequestData
from cityos.hub.http import parse_int
from cityos.hub.store import EntityRecord

JOINS = ("inline", "flat")
MAX_JOIN_LEVEL = 10
# Linked entities rendered for one request or notification at most: `inline` renders an entity once per
# path to it, so a few entities linked to each other many times would otherwise make a joinLevel of 10
# exponential (inside the hub's write transaction, for a notification).
MAX_LINKED_RENDERS = 1000

V = TypeVar("V")
Render = Callable[[EntityRecord, V], dict[str, Any]]
LinkedView = Callable[[V, str], V]          # (view, relationship IRI) → view of the entities it links to
Shows = Callable[[V, str], bool]            # does the view show this attribute?
Load = Callable[[list[str]], Awaitable[dict[str, EntityRecord]]]  # ids → the visible entities among them


def join_of(params: Any) -> tuple[str | None, int]:
    """(join mode or None, joinLevel) from the query parameters."""
    join = params.get("join")
    level = parse_int(params.get("joinLevel"), "joinLevel", 1, 1, MAX_JOIN_LEVEL)
    if join is None or join == "@none":
        return None, 0
    if join not in JOINS:
        raise BadRequestData(f"join must be inline, flat or @none, not {join[:40]!r}")
    return join, level


def links_of(record: EntityRecord, shows: Callable[[str], bool]) -> Iterator[tuple[str, str | None, str]]:
    """(relationship IRI, datasetId, linked entity id) of every relationship object the view shows."""
    for iri, instances in record.attrs.items():
        if not shows(iri):
            continue
        for inst in instances:
            if inst.get("type") == "Relationship":
                objects = inst.get("object")
            elif inst.get("type") == "ListRelationship":
                objects = [item.get("object") if isinstance(item, dict) else item
                           for item in inst.get("objectList") or []]
            else:
                continue
            for obj in objects if isinstance(objects, list) else [objects]:
                if isinstance(obj, str):
                    yield iri, inst.get("datasetId"), obj


def _attach(out: dict[str, Any], key: str, dataset_id: str | None, obj: str, linked: dict[str, Any],
            fmt: str) -> None:
    rendered = out.get(key)
    if fmt == "keyValues":
        if rendered == obj:
            out[key] = linked
        elif isinstance(rendered, dict) and isinstance(rendered.get("dataset"), dict):
            if rendered["dataset"].get(dataset_id or "@none") == obj:
                rendered["dataset"][dataset_id or "@none"] = linked
        elif isinstance(rendered, list):
            out[key] = [linked if item == obj else item for item in rendered]
        return
    for inst in rendered if isinstance(rendered, list) else [rendered]:
        if not isinstance(inst, dict) or inst.get("datasetId") != dataset_id:
            continue
        if "entity" not in inst:
            inst["entity"] = linked
        elif isinstance(inst["entity"], list):
            inst["entity"].append(linked)
        else:
            inst["entity"] = [inst["entity"], linked]


class Linker(Generic[V]):
    """Follows relationships for one request, reading each linked entity once."""

    def __init__(self, load: Load, render: Render[V], linked_view: LinkedView[V], shows: Shows[V],
                 compact: Callable[[str], str]) -> None:
        self.load_visible = load
        self.render = render
        self.linked_view = linked_view
        self.shows = shows
        self.compact = compact
        self.cache: dict[str, EntityRecord | None] = {}
        self.renders = 0

    def _render(self, record: EntityRecord, view: V) -> dict[str, Any] | None:
        """The linked entity rendered, or None once the request's budget of linked entities is spent."""
        if self.renders >= MAX_LINKED_RENDERS:
            return None
        self.renders += 1
        return self.render(record, view)

    async def _load(self, ids: list[str]) -> None:
        missing = list(dict.fromkeys(i for i in ids if i not in self.cache))
        if missing:
            found = await self.load_visible(missing)
            for entity_id in missing:
                self.cache[entity_id] = found.get(entity_id)

    def _links(self, record: EntityRecord, view: V) -> list[tuple[str, str | None, str]]:
        return list(links_of(record, lambda iri: self.shows(view, iri)))

    async def inline(self, record: EntityRecord, out: dict[str, Any], view: V, fmt: str, level: int,
                     above: frozenset[str] = frozenset()) -> None:
        """Add the linked entities, `level` hops deep, under each relationship of `out`. An entity already
        shown above on the path (a cycle) is not nested again: its relationship keeps the object id."""
        if level <= 0:
            return
        path = above | {record.id}
        links = self._links(record, view)
        await self._load([obj for _, _, obj in links if obj not in path])
        for iri, dataset_id, obj in links:
            linked = self.cache.get(obj) if obj not in path else None
            if linked is None:
                continue
            sub_view = self.linked_view(view, iri)
            linked_out = self._render(linked, sub_view)
            if linked_out is None:
                return
            await self.inline(linked, linked_out, sub_view, fmt, level - 1, path)
            _attach(out, self.compact(iri), dataset_id, obj, linked_out, fmt)

    async def flat(self, records: list[EntityRecord], outs: list[dict[str, Any]], view: V,
                   level: int) -> list[dict[str, Any]]:
        """The entities asked for, then each linked entity once, `level` hops deep."""
        result = list(outs)
        seen = {record.id for record in records}
        frontier = [(record, view) for record in records]
        for _ in range(level):
            hops = [(record, record_view, link) for record, record_view in frontier
                    for link in self._links(record, record_view)]
            await self._load([obj for _, _, (_, _, obj) in hops])
            frontier = []
            for _record, record_view, (iri, _dataset_id, obj) in hops:
                linked = self.cache.get(obj)
                if linked is None or obj in seen:
                    continue
                seen.add(obj)
                sub_view = self.linked_view(record_view, iri)
                linked_out = self._render(linked, sub_view)
                if linked_out is None:
                    return result
                if linked_out:
                    result.append(linked_out)
                frontier.append((linked, sub_view))
        return result
