"""Temporal representations of an entity (ETSI GS CIM 009 §4.5.7–§4.5.9, §4.5.19).

- normalized: each attribute is an array of instances, each with its `instanceId`; a deletion is
  an instance whose value is urn:ngsi-ld:null, with `deletedAt`;
- temporalValues (simplified): ``{"type": "Property", "values": [[value, time], ...]}``;
- aggregatedValues: ``{"type": "Property", "avg": [[value, startAt, endAt], ...], ...}``.

With several datasetIds an attribute becomes an array of such objects, one per datasetId.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import orjson

from cityos.core import clock
from cityos.hub.model import NULL_URI, VALUE_KEY, render_instance, written_observed_at
from cityos.hub.temporal.params import AGGREGATED, TEMPORAL_VALUES, TemporalQuery
from cityos.hub.temporal.service import TemporalEntity, instance_uri
from cityos.hub.temporal.sql import Bound, BucketSeries, InstanceRow, utc

Compact = Callable[[str], str]
# The member that carries the values of each attribute type in the simplified representation.
SIMPLIFIED_KEY = {"Property": "values", "GeoProperty": "values", "Relationship": "objects",
                  "LanguageProperty": "languageMaps", "ListProperty": "valueLists",
                  "ListRelationship": "objectLists", "JsonProperty": "jsons", "VocabProperty": "vocabs"}


def _normalized(row: InstanceRow, compact: Compact, tq: TemporalQuery) -> dict[str, Any]:
    inst = row.instance
    kind = inst.get("type", "Property")
    if row.deleted:
        out: dict[str, Any] = {"type": kind, VALUE_KEY.get(kind, "value"): NULL_URI}
        if inst.get("datasetId"):
            out["datasetId"] = inst["datasetId"]
        out["deletedAt"] = inst.get("deletedAt", clock.iso(row.time))
    else:
        out = render_instance(inst, compact, sys_attrs=tq.sys_attrs, fmt="normalized")
    if tq.timeproperty != "observedAt" and tq.timeproperty in inst:
        out[tq.timeproperty] = inst[tq.timeproperty]  # the instant the query was about is always shown
    out["instanceId"] = instance_uri(row.instance_id)
    return out


_WRAPPED = frozenset({"LanguageProperty", "JsonProperty", "VocabProperty", "ListProperty", "ListRelationship"})


def _simple_value(row: InstanceRow, compact: Compact) -> Any:
    kind = row.instance.get("type", "Property")
    if row.deleted:
        return NULL_URI
    value_key = VALUE_KEY.get(kind, "value")
    value = row.instance.get(value_key)
    if kind == "VocabProperty":
        value = [compact(v) for v in value] if isinstance(value, list) else compact(str(value))
    if kind in _WRAPPED:
        # As in the simplified entity (§4.5.3): the value under its member name, e.g. {"languageMap": {...}}.
        return {value_key: value}
    return value


def _by_dataset(items: list[Any], dataset_of: Callable[[Any], str | None]) -> dict[str | None, list[Any]]:
    groups: dict[str | None, list[Any]] = {}
    for item in items:
        groups.setdefault(dataset_of(item), []).append(item)
    return groups


def _one_or_many(parts: list[dict[str, Any]]) -> Any:
    return parts[0] if len(parts) == 1 else parts


def _time_of(row: InstanceRow, tq: TemporalQuery) -> str:
    """The instant of a value as it was written (the instance's own DateTime), else the recorded one."""
    if tq.timeproperty == "observedAt" and not row.deleted:
        written = written_observed_at(row.instance)
        if isinstance(written, str):
            return written
    return clock.iso(row.time)


def _temporal_values(rows: list[InstanceRow], compact: Compact, tq: TemporalQuery, kind: str = "Property") -> Any:
    if not rows:  # no instance in the interval of a paged answer
        return {"type": kind, SIMPLIFIED_KEY.get(kind, "values"): []}
    parts = []
    for dataset_id, group in _by_dataset(rows, lambda r: r.instance.get("datasetId")).items():
        kind = next((r.instance.get("type") for r in group if not r.deleted), None) or "Property"
        part: dict[str, Any] = {"type": kind,
                                SIMPLIFIED_KEY.get(kind, "values"): [[_simple_value(r, compact), _time_of(r, tq)]
                                                                     for r in group]}
        if dataset_id:
            part["datasetId"] = dataset_id
        parts.append(part)
    return _one_or_many(parts)


def _buckets_json(values: list[Any], bounds: list[Bound]) -> Any:
    """The `[[value, start, end], ...]` of one method, as JSON text ready for the response (orjson.Fragment):
    the values serialised together by orjson (the same text as each on its own), each followed by its
    bounds, encoded once per query (sql.Bound.json_tail). No Python list per bucket: building 24,000 of
    them for 1,000 entities, the garbage collector's passes over them cost more than the rest of the request."""
    if len(values) != len(bounds):
        raise ValueError(f"{len(values)} values for {len(bounds)} buckets")
    if not values:
        return orjson.Fragment(b"[]")
    tokens = orjson.dumps(values)[1:-1].split(b",")
    if len(tokens) != len(values):  # never for numbers and nulls, the only values aggregates have
        return [[value, b.start_text, b.end_text] for value, b in zip(values, bounds, strict=True)]
    return orjson.Fragment(b"[[" + b"],[".join([v + b.json_tail for v, b in zip(tokens, bounds, strict=True)])
                           + b"]]")


def _aggregated(series: list[BucketSeries], kind: str, tq: TemporalQuery) -> Any:
    """One part per datasetId (a series each), each method's buckets as JSON text (`_buckets_json`)."""
    parts = []
    for one in series:
        part: dict[str, Any] = {"type": kind}
        for method in tq.aggr_methods:
            part[method] = _buckets_json(one.values[method], one.bounds)
        if one.dataset_id:
            part["datasetId"] = one.dataset_id
        parts.append(part)
    return _one_or_many(parts)


def render_temporal_entity(entity: TemporalEntity, compact: Compact, tq: TemporalQuery) -> dict[str, Any]:
    types = [compact(t) for t in entity.types]
    out: dict[str, Any] = {"id": entity.id, "type": types[0] if len(types) == 1 else types}
    if tq.representation == AGGREGATED:
        for iri in sorted(entity.buckets):
            out[compact(iri)] = _aggregated(entity.buckets[iri], entity.attr_types.get(iri, "Property"), tq)
    elif tq.representation == TEMPORAL_VALUES:
        for iri in sorted(entity.instances):
            out[compact(iri)] = _temporal_values(entity.instances[iri], compact, tq,
                                                 entity.attr_types.get(iri, "Property"))
    else:
        for iri in sorted(entity.instances):
            out[compact(iri)] = [_normalized(row, compact, tq) for row in entity.instances[iri]]
    if tq.sys_attrs:
        if entity.created_at is not None:
            out["createdAt"] = clock.iso(utc(entity.created_at))
        if entity.modified_at is not None:
            out["modifiedAt"] = clock.iso(utc(entity.modified_at))
    return out


def only_datasets(entity: TemporalEntity, dataset_ids: frozenset[str] | None) -> TemporalEntity:
    """The datasetId filter (§4.5.5): only the instances (or buckets) of the listed datasetIds,
    "@none" standing for the default instance; an attribute left with none is left out."""
    if dataset_ids is None:
        return entity
    instances = {iri: kept for iri, rows in entity.instances.items()
                 if (kept := [r for r in rows if r.instance.get("datasetId", "@none") in dataset_ids])}
    buckets = {iri: chosen for iri, series in entity.buckets.items()
               if (chosen := [s for s in series if (s.dataset_id or "@none") in dataset_ids])}
    return dataclasses.replace(entity, instances=instances, buckets=buckets)
