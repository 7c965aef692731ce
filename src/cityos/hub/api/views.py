"""How entities are shown: the request's view (format, options, projection, join, datasetId) and
entity records rendered in it, linked entities and GeoJSON features included."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from fastapi import Request

from cityos.core.errors import InvalidRequest
from cityos.hub.access import Access
from cityos.hub.api.common import Hub
from cityos.hub.http import split_list
from cityos.hub.jsonld import ActiveContext
from cityos.hub.linked import Linker, join_of
from cityos.hub.model import check_name, render_entity
from cityos.hub.projection import nested_projections, project_core, projection_of
from cityos.hub.store import EntityRecord

FORMATS = {"keyValues": "keyValues", "simplified": "keyValues", "concise": "concise", "normalized": "normalized"}


@dataclass
class View:
    fmt: str
    sys_attrs: bool
    attrs: list[str] | None
    lang: str | None
    # v1.8 projection (§4.21): `pick` keeps only the named members, `omit` drops them; both may name
    # id, type and scope besides attributes. Attribute names are expanded; core members stay as they are.
    pick: frozenset[str] | None = None
    omit: frozenset[str] = frozenset()
    # Linked entities (§4.5.23): join mode, hops, and the nested projections by relationship IRI.
    join: str | None = None
    join_level: int = 0
    nested: dict[str, tuple[str, str]] = field(default_factory=dict)
    # datasetId filter (§4.5.5, §6.4.3.2): only the instances with one of these datasetIds ("@none": default).
    dataset_ids: frozenset[str] | None = None


def view_of(request: Request, ctx: ActiveContext, params: Any = None) -> View:
    options = split_list(request.query_params.get("options"))
    fmt = "normalized"
    for option in options:
        if option in FORMATS:
            fmt = FORMATS[option]
        elif option not in ("sysAttrs", "normalized"):
            raise InvalidRequest(f"unknown option {option!r}")
    explicit = request.query_params.get("format")
    if explicit:
        if explicit not in FORMATS:
            raise InvalidRequest(f"unknown format {explicit!r}")
        fmt = FORMATS[explicit]
    names = split_list(request.query_params.get("attrs"))
    attrs = [ctx.expand(check_name(n)) for n in names if n not in ("id", "type")] if names else None
    pick, omit = projection_of(request.query_params, ctx.expand)
    join, join_level = join_of(params if params is not None else request.query_params)
    dataset_ids = split_list(request.query_params.get("datasetId"))
    return View(fmt, "sysAttrs" in options, attrs, request.query_params.get("lang"), pick, omit, join, join_level,
                nested_projections(request.query_params, ctx.expand) if join else {},
                frozenset(dataset_ids) if dataset_ids else None)


def linked_view(view: View, iri: str, ctx: ActiveContext) -> View:
    """The view of the entities a relationship links to: the request's format and options, with the
    relationship's nested projection if pick/omit gave one."""
    nested = view.nested.get(iri)
    if nested is None:
        return replace(view, attrs=None, pick=None, omit=frozenset(), nested={})
    params = {nested[0]: nested[1]}
    pick, omit = projection_of(params, ctx.expand)
    return replace(view, attrs=None, pick=pick, omit=omit, nested=nested_projections(params, ctx.expand))


def shows(view: View, iri: str) -> bool:
    return ((view.attrs is None or iri in view.attrs) and (view.pick is None or iri in view.pick)
            and iri not in view.omit)


def linker_for(access: Access, hub: Hub, ctx: ActiveContext) -> Linker[View]:
    async def load(ids: list[str]) -> dict[str, EntityRecord]:
        found = await hub.service.retrieve_many(access.tenant, ids)
        seen = {entity_id: access.view(record) for entity_id, record in found.items()}
        return {entity_id: record for entity_id, record in seen.items() if record is not None}

    return Linker(load, lambda record, view: entity_out(record, ctx, view),
                  lambda view, iri: linked_view(view, iri, ctx), shows, ctx.compact)


async def joined(access: Access, hub: Hub, ctx: ActiveContext, view: View, records: list[EntityRecord],
                 outs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rendered entities with their linked entities, as `join` asks (inline or flat)."""
    linker = linker_for(access, hub, ctx)
    if view.join == "flat":
        return await linker.flat(records, outs, view, view.join_level)
    for record, out in zip(records, outs, strict=True):
        await linker.inline(record, out, view, view.fmt, view.join_level)
    return outs


def _iso_created(record: EntityRecord) -> tuple[str, str]:
    from cityos.core.clock import iso

    return iso(record.created_at), iso(record.modified_at)


def entity_out(record: EntityRecord, ctx: ActiveContext, view: View) -> dict[str, Any]:
    created, modified = _iso_created(record)
    attrs = record.attrs
    only = view.attrs
    if view.pick is not None:
        only = [iri for iri in attrs if iri in view.pick]
    if view.omit:
        attrs = {iri: instances for iri, instances in attrs.items() if iri not in view.omit}
    if view.dataset_ids is not None:
        attrs = only_datasets(attrs, view.dataset_ids)
    out = render_entity(record.id, record.types, attrs, ctx.compact, fmt=view.fmt, sys_attrs=view.sys_attrs,
                        created_at=created, modified_at=modified, only=only, scope=record.scope, lang=view.lang)
    return project_core(out, view.pick, view.omit)


Instances = dict[str, list[dict[str, Any]]]


def only_datasets(attrs: Instances, dataset_ids: frozenset[str]) -> Instances:
    """The instances whose datasetId is listed ("@none" stands for the default instance); an attribute
    left without instances is left out."""
    kept = {iri: [inst for inst in instances if inst.get("datasetId", "@none") in dataset_ids]
            for iri, instances in attrs.items()}
    return {iri: instances for iri, instances in kept.items() if instances}


def geojson_feature(record: EntityRecord, ctx: ActiveContext, view: View, geo_attr: str) -> dict[str, Any]:
    body = entity_out(record, ctx, view)
    geometry = None
    for inst in record.attrs.get(geo_attr, []):
        if inst.get("type") == "GeoProperty":
            geometry = inst.get("value")
            break
    return {"id": body.pop("id"), "type": "Feature", "geometry": geometry, "properties": body}
