"""The declarative rule document: JSON Schema, parsing (JSON or YAML) and semantic checks.

The schema itself is documented in the package docstring (`cityos.ops.rules`). This module turns a
document into a normalised `dict` (`validate_rule`) and says exactly what is wrong with a bad one
(`RuleError`, a 400 ProblemDetails naming the offending path).
"""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import orjson
import yaml
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError
from shapely.geometry import shape

from cityos.core.errors import BadRequestData

SEVERITIES = ("critical", "major", "minor", "warning")
# SDM Alert's severity vocabulary (informational, low, medium, high, critical).
SDM_SEVERITY = {"critical": "critical", "major": "high", "minor": "medium", "warning": "low"}
INCIDENT_LEVELS = ("general", "large", "major", "especially_major")
ORDER_OPS = (">", ">=", "<", "<=")
EQUALITY_OPS = ("==", "!=")
SET_OPS = ("in", "notIn")
OPERATORS = (*ORDER_OPS, *EQUALITY_OPS, *SET_OPS)
DEVICE_KINDS = ("offline", "lowBattery", "spike", "frozen")
LEAF_KINDS = ("threshold", "rate", "sustained", "noData", "geofence", "rule", "device")
MAX_DURATION_SECONDS = 30 * 86400
MAX_NODES = 64
MAX_DEPTH = 8
MAX_BODY_BYTES = 256 * 1024

RULE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")
# An attribute or entity type: an NGSI-LD short name (a JSON-LD term) or an absolute IRI.
NAME = r"^(?:[A-Za-z_][A-Za-z0-9_\-]{0,127}|[A-Za-z][A-Za-z0-9+.\-]*:[^\s<>\"'{}|\\^`=;()]{1,250})$"
_DURATION = re.compile(r"^P(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+(?:\.\d+)?)S)?)?$")


class RuleError(BadRequestData):
    """A rule document that cannot be accepted; `detail` says where and why."""


_DURATION_SCHEMA: dict[str, Any] = {
    "description": "seconds (number) or an ISO 8601 duration such as PT10M",
    "oneOf": [{"type": "number", "exclusiveMinimum": 0}, {"type": "string", "maxLength": 32}],
}
_SCALAR = {"type": ["number", "string", "boolean"]}

SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "https://cityos.dev/schemas/ops-rule.json",
    "title": "CityOS alarm rule",
    "type": "object",
    "additionalProperties": False,
    "required": ["name", "entityTypes", "condition", "severity"],
    "properties": {
        "id": {"type": "string", "pattern": RULE_ID.pattern},
        "name": {"type": "string", "minLength": 1, "maxLength": 200},
        "description": {"type": "string", "maxLength": 2000},
        "entityTypes": {"type": "array", "minItems": 1, "maxItems": 20, "uniqueItems": True,
                        "items": {"type": "string", "pattern": NAME}},
        "idPattern": {"type": "string", "minLength": 1, "maxLength": 256},
        "condition": {"$ref": "#/$defs/condition"},
        "severity": {"enum": list(SEVERITIES)},
        "category": {"type": "string", "minLength": 1, "maxLength": 64},
        "subCategory": {"type": "string", "minLength": 1, "maxLength": 128},
        "incident": {"type": "object", "additionalProperties": False, "required": ["category"],
                     "properties": {"category": {"type": "string", "minLength": 1, "maxLength": 128},
                                    "level": {"enum": list(INCIDENT_LEVELS)}}},
        "department": {"type": "string", "minLength": 1, "maxLength": 128},
        "enabled": {"type": "boolean"},
    },
    "$defs": {
        "attr": {"type": "string", "pattern": NAME},
        "duration": _DURATION_SCHEMA,
        "comparison": {
            "type": "object", "additionalProperties": False, "required": ["attr", "op", "value"],
            "properties": {"attr": {"$ref": "#/$defs/attr"}, "op": {"enum": list(OPERATORS)},
                           "value": {"oneOf": [_SCALAR, {"type": "array", "maxItems": 100, "items": _SCALAR}]}},
        },
        "geometry": {
            "type": "object", "required": ["type", "coordinates"],
            "properties": {"type": {"enum": ["Polygon", "MultiPolygon"]}, "coordinates": {"type": "array"}},
        },
        "condition": {
            "type": "object", "minProperties": 1, "maxProperties": 1, "additionalProperties": False,
            "properties": {
                "all": {"type": "array", "minItems": 1, "maxItems": 32, "items": {"$ref": "#/$defs/condition"}},
                "any": {"type": "array", "minItems": 1, "maxItems": 32, "items": {"$ref": "#/$defs/condition"}},
                "threshold": {"$ref": "#/$defs/comparison"},
                "rate": {
                    "type": "object", "additionalProperties": False, "required": ["attr", "op", "value"],
                    "properties": {"attr": {"$ref": "#/$defs/attr"}, "op": {"enum": list(ORDER_OPS)},
                                   "value": {"type": "number"}, "per": {"$ref": "#/$defs/duration"}},
                },
                "sustained": {
                    "type": "object", "additionalProperties": False, "required": ["for"],
                    "properties": {"for": {"$ref": "#/$defs/duration"}, "condition": {"$ref": "#/$defs/condition"},
                                   "attr": {"$ref": "#/$defs/attr"}, "op": {"enum": list(OPERATORS)},
                                   "value": {"oneOf": [_SCALAR, {"type": "array", "maxItems": 100,
                                                                 "items": _SCALAR}]}},
                },
                "noData": {
                    "type": "object", "additionalProperties": False, "required": ["for"],
                    "properties": {"for": {"$ref": "#/$defs/duration"}, "attr": {"$ref": "#/$defs/attr"}},
                },
                "geofence": {
                    "type": "object", "additionalProperties": False,
                    "properties": {"attr": {"$ref": "#/$defs/attr"}, "inside": {"$ref": "#/$defs/geometry"},
                                   "outside": {"$ref": "#/$defs/geometry"}},
                },
                "rule": {"type": "string", "pattern": RULE_ID.pattern},
                "device": {"enum": list(DEVICE_KINDS)},
            },
        },
    },
}

_VALIDATOR = Draft202012Validator(SCHEMA)


# ---------------------------------------------------------------------- parsing


def parse_body(raw: bytes, content_type: str | None) -> Any:
    """A JSON or YAML request body → a Python document. YAML anchors/aliases are refused."""
    if len(raw) > MAX_BODY_BYTES:
        raise RuleError(f"the rule document is larger than {MAX_BODY_BYTES} bytes")
    media = (content_type or "").split(";")[0].strip().lower()
    if media in ("", "application/json", "application/ld+json") or media.endswith("+json"):
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            if media:
                raise RuleError(f"the body is not valid JSON: {exc}") from exc
    elif media not in ("application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml", "text/plain"):
        from cityos.core.errors import UnsupportedMediaType

        raise UnsupportedMediaType(f"Content-Type must be application/json or application/yaml, not {media!r}")
    return parse_yaml(raw)


def parse_yaml(raw: bytes | str) -> Any:
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            if isinstance(event, yaml.AliasEvent):
                raise RuleError("YAML anchors and aliases are not allowed in rule documents")
        return yaml.safe_load(text)
    except UnicodeDecodeError as exc:
        raise RuleError("the body must be UTF-8") from exc
    except yaml.YAMLError as exc:
        raise RuleError(f"the body is neither valid JSON nor valid YAML: {exc}") from exc


def parse_duration(value: Any, where: str) -> float:
    if isinstance(value, bool):
        raise RuleError(f"{where}: a duration must be seconds or an ISO 8601 duration, not a boolean")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value))
        if not match or value in ("P", "PT"):
            raise RuleError(f"{where}: {str(value)[:40]!r} is not an ISO 8601 duration like PT10M (or seconds)")
        days, hours, minutes, secs = match.groups()
        seconds = int(days or 0) * 86400 + int(hours or 0) * 3600 + int(minutes or 0) * 60 + float(secs or 0)
    if not math.isfinite(seconds) or seconds <= 0 or seconds > MAX_DURATION_SECONDS:
        raise RuleError(f"{where}: a duration must be more than 0 and at most 30 days")
    return seconds


def _where(error: ValidationError) -> str:
    path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)
    return path.lstrip(".") or "(document)"


def _message(error: ValidationError) -> str:
    schema: dict[str, Any] = error.schema if isinstance(error.schema, dict) else {}
    properties = schema.get("properties", {})
    if error.validator == "additionalProperties":
        extra = sorted(set(error.instance) - set(properties)) if isinstance(error.instance, dict) else []
        return f"unknown member(s) {', '.join(map(repr, extra))}; allowed: {', '.join(sorted(properties))}"
    if error.validator in ("minProperties", "maxProperties") and "all" in properties:
        return f"a condition must have exactly one of: all, any, {', '.join(LEAF_KINDS)}"
    if error.validator == "enum":
        allowed_values: Any = error.validator_value
        return f"{error.instance!r} is not one of {', '.join(map(str, allowed_values))}"
    if error.validator == "pattern":
        return f"{str(error.instance)[:80]!r} is not a well-formed name or id"
    return error.message


def _best(errors: list[ValidationError]) -> ValidationError:
    # Deepest first: "condition.threshold.op: '>>' is not one of ..." beats "condition is not valid".
    error = max(errors, key=lambda e: (len(e.absolute_path), -len(e.context or ())))
    while error.context:
        error = max(error.context, key=lambda e: len(e.absolute_path))
    return error


def check_schema(doc: Any) -> None:
    if not isinstance(doc, dict):
        raise RuleError(f"a rule document must be a JSON/YAML object, not {type(doc).__name__}")
    errors = list(_VALIDATOR.iter_errors(doc))
    if errors:
        error = _best(errors)
        raise RuleError(f"{_where(error)}: {_message(error)}")


# ---------------------------------------------------------------------- semantic checks


def validate_rule(doc: Any, *, rule_id: str | None = None,
                  lookup: Callable[[str], Mapping[str, Any] | None] | None = None) -> dict[str, Any]:
    """Schema + semantic checks; returns the normalised document (with `id` and `enabled`).

    `lookup(id)` gives another rule's document for `{"rule": id}` references (None: unknown);
    references are followed to reject cycles and unknown rules.
    """
    check_schema(doc)
    out = dict(doc)
    if rule_id is not None:
        if "id" in out and out["id"] != rule_id:
            raise RuleError(f"id: the document says {out['id']!r} but the URL says {rule_id!r}")
        out["id"] = rule_id
    out.setdefault("id", f"rule-{uuid.uuid4().hex[:12]}")
    out.setdefault("enabled", True)
    if "idPattern" in out:
        try:
            re.compile(out["idPattern"])
        except re.error as exc:
            raise RuleError(f"idPattern: not a valid regular expression: {exc}") from exc
    counter = [0]
    device = _check_condition(out["condition"], "condition", counter, 0, top=True)
    if device and out["entityTypes"] != ["Device"]:
        raise RuleError("entityTypes: a device rule applies to entityTypes [Device] only")
    refs = references(out["condition"])
    if refs:
        _check_references(out["id"], refs, lookup)
    return out


def _check_condition(node: dict[str, Any], where: str, counter: list[int], depth: int, top: bool = False) -> bool:
    counter[0] += 1
    if counter[0] > MAX_NODES:
        raise RuleError(f"{where}: a condition may have at most {MAX_NODES} nodes")
    if depth > MAX_DEPTH:
        raise RuleError(f"{where}: conditions may nest at most {MAX_DEPTH} levels")
    (kind, body), = node.items()
    here = f"{where}.{kind}"
    if kind in ("all", "any"):
        for i, child in enumerate(body):
            if _check_condition(child, f"{here}[{i}]", counter, depth + 1):
                raise RuleError(f"{here}[{i}]: a device condition cannot be combined with others")
    elif kind == "threshold":
        _check_comparison(body, here)
    elif kind == "rate":
        if "per" in body:
            parse_duration(body["per"], f"{here}.per")
    elif kind == "sustained":
        parse_duration(body["for"], f"{here}.for")
        inline = [k for k in ("attr", "op", "value") if k in body]
        if "condition" in body:
            if inline:
                raise RuleError(f"{here}: give either 'condition' or attr/op/value, not both")
            if _check_condition(body["condition"], f"{here}.condition", counter, depth + 1):
                raise RuleError(f"{here}.condition: a device condition cannot be sustained")
        elif len(inline) != 3:
            raise RuleError(f"{here}: needs 'condition' or all of attr, op and value")
        else:
            _check_comparison(body, here)
    elif kind == "noData":
        parse_duration(body["for"], f"{here}.for")
    elif kind == "geofence":
        sides = [k for k in ("inside", "outside") if k in body]
        if len(sides) != 1:
            raise RuleError(f"{here}: give exactly one of 'inside' or 'outside' (a GeoJSON Polygon)")
        _check_polygon(body[sides[0]], f"{here}.{sides[0]}")
    elif kind == "device":
        return True
    return False


def _check_comparison(body: dict[str, Any], where: str) -> None:
    op, value = body["op"], body["value"]
    if op in ORDER_OPS and (isinstance(value, bool) or not isinstance(value, int | float)):
        raise RuleError(f"{where}.value: operator {op!r} needs a number, got {value!r}"[:300])
    if op in EQUALITY_OPS and isinstance(value, list):
        raise RuleError(f"{where}.value: operator {op!r} needs a single value; use 'in' for a list")
    if op in SET_OPS and not isinstance(value, list):
        raise RuleError(f"{where}.value: operator {op!r} needs a list of values")
    if isinstance(value, float) and not math.isfinite(value):
        raise RuleError(f"{where}.value: numbers must be finite")


def _rings(geometry: dict[str, Any]) -> list[Any]:
    coords = geometry.get("coordinates")
    polygons = coords if geometry.get("type") == "MultiPolygon" else [coords]
    if not isinstance(polygons, list):
        return []
    return [ring for polygon in polygons if isinstance(polygon, list) for ring in polygon]


def _check_polygon(geometry: dict[str, Any], where: str) -> None:
    for ring in _rings(geometry):
        if not isinstance(ring, list) or len(ring) < 4 or ring[0] != ring[-1]:
            raise RuleError(f"{where}: every polygon ring needs at least 4 positions and must be closed "
                            "(first position = last)")
    try:
        polygon = shape(geometry)
    except (ValueError, TypeError, AttributeError, IndexError, KeyError) as exc:
        raise RuleError(f"{where}: not a valid GeoJSON {geometry.get('type')}: {exc}"[:300]) from exc
    if polygon.is_empty or not polygon.is_valid:
        raise RuleError(f"{where}: the polygon is empty or invalid (self-intersecting or unclosed)")
    minx, miny, maxx, maxy = polygon.bounds
    if minx < -180 or maxx > 180 or miny < -90 or maxy > 90:
        raise RuleError(f"{where}: coordinates must be longitude, latitude in WGS 84")


def references(node: dict[str, Any]) -> list[str]:
    """Ids of the rules a condition refers to (`{"rule": id}`), in order."""
    found: list[str] = []
    (kind, body), = node.items()
    if kind == "rule":
        found.append(body)
    elif kind in ("all", "any"):
        for child in body:
            found.extend(references(child))
    elif kind == "sustained" and "condition" in body:
        found.extend(references(body["condition"]))
    return found


def _check_references(rule_id: str, refs: list[str], lookup: Callable[[str], Mapping[str, Any] | None] | None) -> None:
    def visit(current: str, trail: list[str], refs_here: list[str]) -> None:
        for ref in refs_here:
            if ref == rule_id or ref in trail:
                cycle = " → ".join([*trail, ref])
                raise RuleError(f"condition: rule references form a cycle: {cycle}")
            target = lookup(ref) if lookup else None
            if target is None:
                raise RuleError(f"condition: referenced rule {ref!r} does not exist")
            if "device" in target["condition"]:
                raise RuleError(f"condition: rule {ref!r} is a device rule and cannot be referenced")
            visit(ref, [*trail, ref], references(target["condition"]))

    visit(rule_id, [rule_id], refs)
