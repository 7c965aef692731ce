"""NGSI-LD entities in the hub's internal form.

The internal form is what `hub_entities.attrs` stores and what the query layer reads:

    {
      "<expanded attribute IRI>": [instance, ...],   # default instance (no datasetId) first
      ...
    }

An instance is a dict with short reserved keys and expanded IRIs for sub-attributes:

    {"type": "Property", "value": 21.5, "observedAt": "2026-01-01T00:00:00.000Z",
     "unitCode": "CEL", "datasetId": "urn:...", "createdAt": "...", "modifiedAt": "...",
     "https://example.org/accuracy": {"type": "Property", "value": 0.5}}

- Property: "value" (any JSON); Relationship: "object" (URI string, or a list for multiple);
  GeoProperty: "value" (a GeoJSON geometry); LanguageProperty: "languageMap" ({lang: text});
  ListProperty: "valueList"; ListRelationship: "objectList"; JsonProperty: "json";
  VocabProperty: "vocab" (expanded IRI).
- Reserved keys never contain ':' and expanded IRIs always do, so they cannot collide.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable
from typing import Any

from cityos.core import clock
from cityos.core.errors import BadRequestData

ATTRIBUTE_TYPES = frozenset(
    {"Property", "Relationship", "GeoProperty", "LanguageProperty", "ListProperty", "ListRelationship",
     "JsonProperty", "VocabProperty"}
)
VALUE_KEY = {
    "Property": "value", "GeoProperty": "value", "Relationship": "object", "LanguageProperty": "languageMap",
    "ListProperty": "valueList", "ListRelationship": "objectList", "JsonProperty": "json", "VocabProperty": "vocab",
}
CONCISE_KEYS = {v: k for k, v in VALUE_KEY.items() if k != "GeoProperty"}
GEOMETRY_TYPES = frozenset({"Point", "LineString", "Polygon", "MultiPoint", "MultiLineString", "MultiPolygon"})
META_KEYS = frozenset({"observedAt", "unitCode", "datasetId", "createdAt", "modifiedAt", "deletedAt", "lang",
                       "instanceId", "objectType", "previousValue", "previousObject"})
SYSTEM_KEYS = frozenset({"createdAt", "modifiedAt", "deletedAt", "instanceId"})
ENTITY_MEMBERS = frozenset({"id", "@id", "type", "@type", "@context", "scope", "createdAt", "modifiedAt",
                            "deletedAt", "location_geojson"})
NULL_URI = "urn:ngsi-ld:null"
# observedAt is kept in UTC with milliseconds, the form q compares as text and history indexes; when
# the writer spelled it otherwise (no fraction, microseconds, an offset), that spelling is kept here
# and returned instead, so a DateTime comes back as it was written. Never rendered under this name.
WRITTEN_OBSERVED_AT = "@observedAt"
GEO_PROPERTIES_DEFAULT = ("https://uri.etsi.org/ngsi-ld/location", "https://uri.etsi.org/ngsi-ld/observationSpace",
                          "https://uri.etsi.org/ngsi-ld/operationSpace")

_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*:[^\s<>\"{}|\\^`]+$")
# ETSI GS CIM 009 §4.6.2: these characters are not allowed in attribute and type names.
_BAD_NAME = re.compile(r"[\s<>\"'=;()\\]")
MAX_ID_LENGTH = 512
MAX_NAME_LENGTH = 256
MAX_NESTING = 16

Expand = Callable[[str], str]
Attrs = dict[str, list[dict[str, Any]]]


def is_uri(value: Any) -> bool:
    return isinstance(value, str) and len(value) <= MAX_ID_LENGTH and bool(_URI.match(value))


def check_entity_id(value: Any) -> str:
    if not is_uri(value):
        raise BadRequestData(f"entity id {str(value)[:80]!r} is not a valid URI")
    return str(value)


def check_name(value: Any, what: str = "attribute name") -> str:
    if not isinstance(value, str) or not value or len(value) > MAX_NAME_LENGTH or _BAD_NAME.search(value):
        raise BadRequestData(f"{what} {str(value)[:80]!r} is not valid")
    return value


def expand_types(value: Any, expand: Expand) -> list[str]:
    names = value if isinstance(value, list) else [value]
    if not names:
        raise BadRequestData("entity type must not be empty")
    expanded = {expand(check_name(name, "entity type")) for name in names}
    if any(iri.startswith("@") for iri in expanded):  # e.g. "type", which the core @context maps to @type
        raise BadRequestData("an entity type must not be a JSON-LD keyword")
    return sorted(expanded)


def normalize_datetime(value: Any, what: str) -> str:
    try:
        return clock.iso(clock.parse_iso(value))
    except (ValueError, TypeError) as exc:
        raise BadRequestData(f"{what} must be an ISO 8601 DateTime, got {str(value)[:60]!r}") from exc


def _check_json_value(value: Any, depth: int = 0) -> None:
    if depth > MAX_NESTING:
        raise BadRequestData(f"value nested deeper than {MAX_NESTING} levels")
    if isinstance(value, float) and not math.isfinite(value):
        raise BadRequestData("numbers must be finite")
    if isinstance(value, dict):
        for item in value.values():
            _check_json_value(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _check_json_value(item, depth + 1)


def _infer_type(raw: dict[str, Any]) -> str:
    declared = raw.get("type")
    if isinstance(declared, str) and declared in ATTRIBUTE_TYPES:
        return declared
    if declared in GEOMETRY_TYPES and "coordinates" in raw:
        return "GeoJSON"
    if declared is not None:
        raise BadRequestData(f"unknown attribute type {str(declared)[:60]!r}")
    for key, attr_type in CONCISE_KEYS.items():
        if key in raw:
            return attr_type
    return "ConciseValue"


def parse_attribute(name: str, raw: Any, expand: Expand, now: str, *, allow_null: bool = False,
                    depth: int = 0) -> list[dict[str, Any]]:
    """One attribute (normalized or concise form) → a list of internal instances."""
    if depth > MAX_NESTING:
        raise BadRequestData(f"attribute {name!r} nested deeper than {MAX_NESTING} levels")
    if isinstance(raw, list) and raw and all(isinstance(item, dict) for item in raw) and depth == 0:
        instances = [parse_instance(name, item, expand, now, allow_null=allow_null, depth=depth) for item in raw]
        dataset_ids = [inst.get("datasetId") for inst in instances]
        if len(set(dataset_ids)) != len(dataset_ids):
            raise BadRequestData(f"attribute {name!r} has two instances with the same datasetId")
        return sorted(instances, key=lambda inst: inst.get("datasetId") is not None)
    return [parse_instance(name, raw, expand, now, allow_null=allow_null, depth=depth)]


def parse_instance(name: str, raw: Any, expand: Expand, now: str, *, allow_null: bool = False,
                   depth: int = 0) -> dict[str, Any]:
    if raw is None:
        raise BadRequestData(f"attribute {name!r} has a null value")
    if not isinstance(raw, dict):
        if isinstance(raw, list) and any(isinstance(item, dict) for item in raw):
            raise BadRequestData(f"attribute {name!r} mixes instances and values")
        _check_json_value(raw)
        if raw == NULL_URI and not allow_null:
            raise BadRequestData(f"attribute {name!r}: {NULL_URI} is only allowed in merge and update")
        return {"type": "Property", "value": raw}
    kind = _infer_type(raw)
    if kind == "GeoJSON":
        return {"type": "GeoProperty", "value": _geometry(name, raw)}
    if kind == "ConciseValue":
        _check_json_value(raw)
        return {"type": "Property", "value": raw}
    instance: dict[str, Any] = {"type": kind}
    value_key = VALUE_KEY[kind]
    if value_key not in raw:
        raise BadRequestData(f"{kind} {name!r} needs a {value_key!r} member")
    instance[value_key] = _parse_value(name, kind, raw[value_key], expand, allow_null)
    for key, item in raw.items():
        if key in ("type", value_key):
            continue
        if key in SYSTEM_KEYS:
            continue  # system attributes are set by the broker, never by the caller
        if key == "observedAt":
            instance["observedAt"] = normalize_datetime(item, f"{name}.observedAt")
            if item != instance["observedAt"]:
                instance[WRITTEN_OBSERVED_AT] = item
        elif key == "unitCode":
            if not isinstance(item, str) or not item or len(item) > 64:
                raise BadRequestData(f"{name}.unitCode must be a short string")
            instance["unitCode"] = item
        elif key == "datasetId":
            if not is_uri(item):
                raise BadRequestData(f"{name}.datasetId must be a URI")
            instance["datasetId"] = item
        elif key in ("lang", "objectType"):
            instance[key] = item
        elif key in META_KEYS:
            continue
        else:
            sub_iri = expand(check_name(key))
            sub = parse_attribute(key, item, expand, now, allow_null=allow_null, depth=depth + 1)
            instance[sub_iri] = sub[0]
    return instance


def _geometry(name: str, value: Any) -> dict[str, Any]:
    from cityos.hub.geoquery import validate_geojson

    try:
        return validate_geojson(value)
    except BadRequestData as exc:
        raise BadRequestData(f"GeoProperty {name!r}: {exc.detail}") from exc


def _parse_value(name: str, kind: str, value: Any, expand: Expand, allow_null: bool) -> Any:
    if value is None:
        raise BadRequestData(f"attribute {name!r} has a null value")
    if kind == "LanguageProperty" and value == {"@none": NULL_URI}:
        value = NULL_URI  # a LanguageProperty's NGSI-LD Null is a languageMap of it (§4.5.18)
    if value == NULL_URI:
        if allow_null:
            return value
        raise BadRequestData(f"attribute {name!r}: {NULL_URI} is only allowed in merge and update")
    if kind == "GeoProperty":
        return _geometry(name, value)
    if kind == "Relationship":
        targets = value if isinstance(value, list) else [value]
        if not targets or not all(is_uri(target) for target in targets):
            raise BadRequestData(f"Relationship {name!r} must point to a URI")
        return value
    if kind == "ListRelationship":
        if not isinstance(value, list) or not all(is_uri(_object_of(item)) for item in value):
            raise BadRequestData(f"ListRelationship {name!r} needs a list of URIs")
        return [_object_of(item) for item in value]
    if kind == "LanguageProperty":
        if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, str | list) for k, v in value.items()
        ):
            raise BadRequestData(f"LanguageProperty {name!r} needs a languageMap of language tag → string")
        return value
    if kind == "ListProperty" and not isinstance(value, list):
        raise BadRequestData(f"ListProperty {name!r} needs a valueList array")
    if kind == "VocabProperty":
        terms = value if isinstance(value, list) else [value]
        if not all(isinstance(term, str) and term for term in terms):
            raise BadRequestData(f"VocabProperty {name!r} needs a term or a list of terms")
        return [expand(t) for t in terms] if isinstance(value, list) else expand(value)
    _check_json_value(value)
    return value


def _object_of(item: Any) -> Any:
    return item.get("object") if isinstance(item, dict) else item


def attribute_iri(name: str, expand: Expand) -> str:
    """An attribute name expanded by the @context; a name that a context maps to a JSON-LD keyword
    (``{"ident": "@id"}``) is refused: the hub reads the id and type only from ``id``/``@id`` and
    ``type``/``@type``, so such an alias must not slip past them as an attribute."""
    iri = expand(check_name(name))
    if iri.startswith("@"):
        raise BadRequestData(f"attribute name {name[:80]!r} expands to the JSON-LD keyword {iri[:40]!r}")
    return iri


def parse_attributes(body: dict[str, Any], expand: Expand, now: str, *, allow_null: bool = False) -> Attrs:
    attrs: Attrs = {}
    for name, raw in body.items():
        if name in ENTITY_MEMBERS:
            continue
        iri = attribute_iri(name, expand)
        attrs[iri] = parse_attribute(name, raw, expand, now, allow_null=allow_null)
    return attrs


def body_id(body: dict[str, Any]) -> Any:
    """The entity id a body names, through ``id`` or its JSON-LD form ``@id``; both given and
    different is refused (the access check and the write must be about one entity)."""
    if "id" in body and "@id" in body and body["id"] != body["@id"]:
        raise BadRequestData("the body gives two different entity ids (id and @id)")
    return body.get("id", body.get("@id"))


def check_body_id(body: Any, entity_id: str) -> None:
    """A body sent to an entity's URL may repeat the entity's id, never name another one (400)."""
    if isinstance(body, dict):
        named = body_id(body)
        if named is not None and named != entity_id:
            raise BadRequestData("the id in the body differs from the id in the URL")


def parse_entity(body: Any, expand: Expand, now: str, *, require_type: bool = True,
                 allow_null: bool = False) -> tuple[str, list[str], Attrs, Any]:
    """An entity body → (id, expanded types, internal attrs, scope)."""
    if not isinstance(body, dict):
        raise BadRequestData("an entity must be a JSON object")
    entity_id = check_entity_id(body_id(body))
    raw_type = body.get("type", body.get("@type"))
    if raw_type is None:
        if require_type:
            raise BadRequestData(f"entity {entity_id} has no type")
        types: list[str] = []
    else:
        types = expand_types(raw_type, expand)
    scope = body.get("scope")
    if scope is not None:
        check_scope(scope)
    return entity_id, types, parse_attributes(body, expand, now, allow_null=allow_null), scope


def check_scope(scope: Any) -> Any:
    """A scope (§4.18) is a string or a non-empty list of strings."""
    if not (isinstance(scope, str) or (isinstance(scope, list) and scope and all(isinstance(s, str) for s in scope))):
        raise BadRequestData("scope must be a string or a list of strings")
    return scope


def merged_scope(old: Any, new: Any) -> Any:
    """The union of two scopes, the old ones first (Append with noOverwrite, §5.6.3); one scope stays a string."""
    listed = [*(old if isinstance(old, list) else [old] if old is not None else []),
              *(new if isinstance(new, list) else [new])]
    unique = list(dict.fromkeys(listed))
    return unique[0] if len(unique) == 1 else unique


def stamp(attrs: Attrs, now: str, previous: Attrs | None = None) -> None:
    """Set createdAt/modifiedAt on each instance, keeping createdAt of instances that already existed."""
    for iri, instances in attrs.items():
        old = {inst.get("datasetId"): inst for inst in (previous or {}).get(iri, [])}
        for inst in instances:
            before = old.get(inst.get("datasetId"))
            inst["createdAt"] = before.get("createdAt", now) if before else now
            inst["modifiedAt"] = now


def geometries(attrs: Attrs) -> dict[str, dict[str, Any]]:
    """The default-instance geometry of every GeoProperty, for the geo index."""
    found: dict[str, dict[str, Any]] = {}
    for iri, instances in attrs.items():
        for inst in instances:
            if inst.get("type") == "GeoProperty" and "datasetId" not in inst and isinstance(inst.get("value"), dict):
                found[iri] = inst["value"]
                break
    return found


# ---------------------------------------------------------------- rendering


Compact = Callable[[str], str]


def written_observed_at(inst: dict[str, Any]) -> Any:
    """observedAt as the writer spelled it (see WRITTEN_OBSERVED_AT)."""
    return inst.get(WRITTEN_OBSERVED_AT, inst.get("observedAt"))


def is_sub_attribute(key: str) -> bool:
    return ":" in key


def render_instance(inst: dict[str, Any], compact: Compact, *, sys_attrs: bool, fmt: str,
                    lang: str | None = None) -> Any:
    kind = inst["type"]
    value_key = VALUE_KEY.get(kind, "value")
    if fmt == "keyValues":
        return _simplified_value(inst, compact, lang)
    out: dict[str, Any] = {} if fmt == "concise" else {"type": kind}
    value = inst.get(value_key)
    if kind == "VocabProperty":
        value = [compact(v) for v in value] if isinstance(value, list) else compact(str(value))
    if kind == "LanguageProperty" and lang is not None:
        out = {} if fmt == "concise" else {"type": "Property"}
        out["value"] = _pick_language(value, lang)
        out["lang"] = _picked_tag(value, lang)
    else:
        out[value_key] = value
    for key, item in inst.items():
        if key in ("type", value_key, WRITTEN_OBSERVED_AT):
            continue
        if key == "observedAt":
            out[key] = inst.get(WRITTEN_OBSERVED_AT, item)
        elif is_sub_attribute(key):
            out[compact(key)] = render_instance(item, compact, sys_attrs=sys_attrs, fmt=fmt, lang=lang)
        elif key in SYSTEM_KEYS:
            if sys_attrs:
                out[key] = item
        else:
            out[key] = item
    if fmt == "concise" and len(out) == 1:
        if "value" in out:
            return out["value"]
        if kind == "GeoProperty":
            return value
    return out


def _simplified_value(inst: dict[str, Any], compact: Compact, lang: str | None) -> Any:
    kind = inst["type"]
    if kind == "LanguageProperty":
        lmap = inst.get("languageMap", {})
        return _pick_language(lmap, lang) if lang else {"languageMap": lmap}
    if kind == "VocabProperty":
        vocab = inst.get("vocab")
        return {"vocab": [compact(str(v)) for v in vocab] if isinstance(vocab, list) else compact(str(vocab))}
    if kind == "ListProperty":
        return {"valueList": inst.get("valueList")}
    if kind == "ListRelationship":
        return {"objectList": inst.get("objectList")}
    if kind == "JsonProperty":
        return {"json": inst.get("json")}
    return inst.get(VALUE_KEY.get(kind, "value"))


def _picked_tag(lmap: Any, lang: str) -> str:
    if not isinstance(lmap, dict) or not lmap:
        return "@none"
    for tag in [t.strip() for t in lang.split(",")]:
        if tag in lmap:
            return tag
    return "@none" if "@none" in lmap else next(iter(lmap))


def _pick_language(lmap: Any, lang: str | None) -> Any:
    if not isinstance(lmap, dict) or not lmap:
        return None
    return lmap.get(_picked_tag(lmap, lang or ""))


def render_entity(entity_id: str, types: list[str], attrs: Attrs, compact: Compact, *, fmt: str = "normalized",
                  sys_attrs: bool = False, created_at: str | None = None, modified_at: str | None = None,
                  only: Iterable[str] | None = None, scope: Any = None, lang: str | None = None) -> dict[str, Any]:
    compact_types = [compact(t) for t in types]
    out: dict[str, Any] = {"id": entity_id, "type": compact_types[0] if len(compact_types) == 1 else compact_types}
    if scope is not None:
        out["scope"] = scope
    wanted = set(only) if only is not None else None
    for iri, instances in attrs.items():
        if wanted is not None and iri not in wanted:
            continue
        rendered = [render_instance(inst, compact, sys_attrs=sys_attrs, fmt=fmt, lang=lang) for inst in instances]
        if fmt == "keyValues" and len(rendered) > 1:
            # Several instances in the simplified form: a map by datasetId, "@none" for the default (§4.5.3).
            out[compact(iri)] = {"dataset": {inst.get("datasetId", "@none"): value
                                             for inst, value in zip(instances, rendered, strict=True)}}
            continue
        out[compact(iri)] = rendered[0] if len(rendered) == 1 else rendered
    if sys_attrs and fmt != "keyValues":
        if created_at:
            out["createdAt"] = created_at
        if modified_at:
            out["modifiedAt"] = modified_at
    return out
