"""Deletions in notifications (ETSI GS CIM 009 v1.8.1 §5.8.6, §4.5.18 NGSI-LD Null).

A deleted attribute (or attribute instance) is notified as its NGSI-LD Null: the attribute's own
type with `urn:ngsi-ld:null` as its value member (`{"@none": "urn:ngsi-ld:null"}` as a LanguageProperty's
languageMap), the instance's datasetId, `deletedAt` with sysAttrs, and with `showChanges` the value it
had under the previous-value member (`previousValue`, `previousObject`, `previousLanguageMap`, ...).
A deleted entity is notified as id, type and `deletedAt`, plus the deleted attributes when the
subscriber asked for them (an `attributeDeleted` trigger, or `showChanges`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from cityos.hub.model import NULL_URI, VALUE_KEY
from cityos.hub.store import EntityRecord

Compact = Callable[[str], str]

# The value member of each attribute type, and the member its previous value goes under (showChanges).
PREVIOUS_KEY = {kind: f"previous{value_key[0].upper()}{value_key[1:]}" for kind, value_key in VALUE_KEY.items()}


def deleted_instances(before: EntityRecord, after: EntityRecord | None,
                      wanted: Iterable[str] | None = None) -> dict[str, list[dict[str, Any]]]:
    """The attribute instances `before` had and `after` no longer has, by attribute IRI (and datasetId);
    an attribute gone as a whole counts as one deletion."""
    keep = set(wanted) if wanted is not None else None
    gone: dict[str, list[dict[str, Any]]] = {}
    for iri, instances in before.attrs.items():
        if keep is not None and iri not in keep:
            continue
        if after is None or not after.attrs.get(iri):
            # The whole attribute went (deleteAll, or the entity): one Null for it, with the default
            # instance (else the first) as its previous value.
            whole = next((inst for inst in instances if "datasetId" not in inst), instances[0])
            gone[iri] = [{k: v for k, v in whole.items() if k != "datasetId"}]
            continue
        remaining = {inst.get("datasetId") for inst in after.attrs[iri]}
        lost = [inst for inst in instances if inst.get("datasetId") not in remaining]
        if lost:
            gone[iri] = lost
    return gone


def previous_value(inst: dict[str, Any], compact: Compact) -> Any:
    value = inst.get(VALUE_KEY.get(inst.get("type", ""), "value"))
    if inst.get("type") == "VocabProperty":
        return [compact(str(v)) for v in value] if isinstance(value, list) else compact(str(value))
    return value


def null_instance(inst: dict[str, Any], compact: Compact, *, fmt: str, sys_attrs: bool, show_changes: bool,
                  deleted_at: str) -> Any:
    """The NGSI-LD Null that stands for a deleted instance, in the notification's format."""
    if fmt == "keyValues":
        return NULL_URI
    kind = inst.get("type", "Property")
    value_key = VALUE_KEY.get(kind, "value")
    out: dict[str, Any] = {} if fmt == "concise" else {"type": kind}
    out[value_key] = {"@none": NULL_URI} if kind == "LanguageProperty" else NULL_URI
    if "datasetId" in inst:
        out["datasetId"] = inst["datasetId"]
    if show_changes:
        out[PREVIOUS_KEY.get(kind, "previousValue")] = previous_value(inst, compact)
    if sys_attrs:
        for key in ("createdAt", "modifiedAt"):
            if key in inst:
                out[key] = inst[key]
        out["deletedAt"] = deleted_at
    if fmt == "concise" and list(out) == ["value"]:
        return out["value"]
    return out


def add_nulls(out: dict[str, Any], gone: dict[str, list[dict[str, Any]]], compact: Compact, *, fmt: str,
              sys_attrs: bool, show_changes: bool, deleted_at: str, after: EntityRecord | None = None) -> None:
    """Add each deleted instance to a rendered entity, beside the instances the attribute still has."""
    for iri, instances in gone.items():
        name = compact(iri)
        nulls = [null_instance(inst, compact, fmt=fmt, sys_attrs=sys_attrs, show_changes=show_changes,
                               deleted_at=deleted_at) for inst in instances]
        if fmt == "keyValues":
            remaining = [inst.get("datasetId") for inst in (after.attrs.get(iri, []) if after is not None else [])]
            _add_simplified(out, name, instances, nulls, remaining)
            continue
        present = out.get(name)
        merged = ([] if present is None else present if isinstance(present, list) else [present]) + nulls
        out[name] = merged[0] if len(merged) == 1 else merged


def _add_simplified(out: dict[str, Any], name: str, instances: list[dict[str, Any]], nulls: list[Any],
                    remaining: list[str | None]) -> None:
    """keyValues: several instances are shown as {"dataset": {datasetId or "@none": value}} (§4.5.3)."""
    present = out.get(name)
    if present is None and len(instances) == 1 and "datasetId" not in instances[0]:
        out[name] = nulls[0]
        return
    dataset: dict[str, Any] = {}
    if len(remaining) > 1 and isinstance(present, dict) and isinstance(present.get("dataset"), dict):
        dataset = dict(present["dataset"])
    elif name in out and len(remaining) == 1:
        dataset[remaining[0] or "@none"] = present
    for inst, null in zip(instances, nulls, strict=True):
        dataset[inst.get("datasetId", "@none")] = null
    out[name] = {"dataset": dataset}


def deleted_entity(before: EntityRecord, compact: Compact, *, deleted_at: str, sys_attrs: bool,
                   created_at: str | None, modified_at: str | None) -> dict[str, Any]:
    """A deleted entity's members: id, type, deletedAt (and its system DateTimes with sysAttrs)."""
    types = [compact(t) for t in before.types]
    out: dict[str, Any] = {"id": before.id, "type": types[0] if len(types) == 1 else types}
    if sys_attrs:
        if created_at:
            out["createdAt"] = created_at
        if modified_at:
            out["modifiedAt"] = modified_at
    out["deletedAt"] = deleted_at
    return out
