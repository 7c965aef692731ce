"""Context Source registrations as documents (ETSI GS CIM 009 v1.8.1 §5.2.9, §5.2.10, §4.20).

A registration is kept in internal form: entity types, property and relationship names and the
names of additional (CSource property) members expanded to IRIs with the @context of the request
that wrote them, so that a caller with another @context sees its own terms.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from cityos.core import clock
from cityos.core.clock import as_utc_or_none
from cityos.core.errors import BadRequestData
from cityos.hub import geoquery
from cityos.hub.jsonld import ActiveContext
from cityos.hub.model import check_entity_id, check_name, is_uri
from cityos.hub.qlang import python_pattern

Spec = dict[str, Any]
Compact = Callable[[str], str]

TYPE = "ContextSourceRegistration"
MODES = ("inclusive", "exclusive", "redirect", "auxiliary")
MAX_LIST = 100

# v1.8.1 §4.20: the operations a context source may offer, and the named groups of them.
OPERATIONS = frozenset({
    "createEntity", "updateEntity", "appendAttrs", "updateAttrs", "deleteAttrs", "deleteEntity", "createBatch",
    "upsertBatch", "updateBatch", "deleteBatch", "upsertTemporal", "appendAttrsTemporal", "deleteAttrsTemporal",
    "updateAttrsTemporal", "deleteAttrInstanceTemporal", "deleteTemporal", "mergeEntity", "replaceEntity",
    "replaceAttrs", "mergeBatch", "purgeEntity", "retrieveEntity", "queryEntity", "queryBatch", "retrieveTemporal",
    "queryTemporal", "retrieveEntityTypes", "retrieveEntityTypeDetails", "retrieveEntityTypeInfo",
    "retrieveAttrTypes", "retrieveAttrTypeDetails", "retrieveAttrTypeInfo", "createSubscription",
    "updateSubscription", "retrieveSubscription", "querySubscription", "deleteSubscription", "entityMap",
    "canCompress",
})
_TYPE_OPS = {"retrieveEntityTypes", "retrieveEntityTypeDetails", "retrieveEntityTypeInfo", "retrieveAttrTypes",
             "retrieveAttrTypeDetails", "retrieveAttrTypeInfo"}
_SUBSCRIPTION_OPS = {"createSubscription", "updateSubscription", "retrieveSubscription", "querySubscription",
                     "deleteSubscription"}
GROUPS: dict[str, frozenset[str]] = {
    "federationOps": frozenset({"retrieveEntity", "queryEntity", "queryBatch", "retrieveTemporal", "queryTemporal",
                                *_TYPE_OPS, *_SUBSCRIPTION_OPS}),
    "updateOps": frozenset({"updateEntity", "updateAttrs", "replaceEntity", "replaceAttrs"}),
    "retrieveOps": frozenset({"retrieveEntity", "queryEntity"}),
    "redirectionOps": frozenset({"createEntity", "updateEntity", "appendAttrs", "updateAttrs", "deleteAttrs",
                                 "deleteEntity", "mergeEntity", "replaceEntity", "replaceAttrs", "retrieveEntity",
                                 "queryEntity", *_TYPE_OPS}),
}
DEFAULT_OPERATIONS = ["federationOps"]
MANAGEMENT_KEYS: dict[str, tuple[type, ...]] = {"localOnly": (bool,), "cacheDuration": (int, float),
                                                "timeout": (int, float), "cooldown": (int, float)}
# Members with a meaning of their own; anything else is an additional CSource property (§5.2.9).
KNOWN = {"id", "type", "registrationName", "description", "information", "tenant", "observationInterval",
         "managementInterval", "location", "observationSpace", "operationSpace", "expiresAt", "endpoint",
         "contextSourceInfo", "scope", "mode", "operations", "refreshRate", "management", "@context",
         "createdAt", "modifiedAt", "status", "timesSent", "timesFailed", "lastSuccess", "lastFailure"}
GEO_MEMBERS = ("location", "observationSpace", "operationSpace")
SECRET_KEYS = {"authorization", "x-api-key", "api-key", "x-auth-token"}
SECRET_MASK = "***"  # noqa: S105 - the mask shown in place of a secret


def new_id() -> str:
    return f"urn:ngsi-ld:ContextSourceRegistration:{uuid.uuid4()}"


def expanded_operations(spec: Spec) -> frozenset[str]:
    """The operations a registration offers, groups resolved."""
    found: set[str] = set()
    for name in spec.get("operations") or DEFAULT_OPERATIONS:
        found |= GROUPS.get(name, {name})
    return frozenset(found)


# ---------------------------------------------------------------------- member parsers


def _string(value: Any, what: str, max_length: int = 1024) -> str:
    if not isinstance(value, str) or not value or len(value) > max_length:
        raise BadRequestData(f"{what} must be a non-empty string of at most {max_length} characters")
    return value


def _list(value: Any, what: str, *, allow_empty: bool = False) -> list[Any]:
    if not isinstance(value, list) or (not value and not allow_empty):
        raise BadRequestData(f"{what} must be a non-empty array")
    if len(value) > MAX_LIST:
        raise BadRequestData(f"{what} may have at most {MAX_LIST} members")
    return value


def check_pattern(value: Any) -> str:
    text = _string(value, "idPattern", 256)
    try:
        python_pattern(text)
        re.compile(text)
    except (ValueError, re.error) as exc:
        raise BadRequestData(f"idPattern is not a valid regular expression: {exc}") from exc
    return text


def _entity_info(item: Any, ctx: ActiveContext) -> dict[str, Any]:
    if not isinstance(item, dict):
        raise BadRequestData("each member of information.entities must be an EntityInfo object")
    if "type" not in item:
        raise BadRequestData("an EntityInfo needs a type")
    types = item["type"] if isinstance(item["type"], list) else [item["type"]]
    if not types:
        raise BadRequestData("an EntityInfo needs a type")
    info: dict[str, Any] = {"type": [ctx.expand(check_name(t, "entity type")) for t in types]}
    if "id" in item and "idPattern" in item:
        raise BadRequestData("an EntityInfo has id or idPattern, not both")
    if "id" in item:
        info["id"] = check_entity_id(item["id"])
    if "idPattern" in item:
        info["idPattern"] = check_pattern(item["idPattern"])
    unknown = set(item) - {"id", "idPattern", "type"}
    if unknown:
        raise BadRequestData(f"unknown member {sorted(unknown)[0][:60]!r} in an EntityInfo")
    return info


def _names(value: Any, ctx: ActiveContext, what: str) -> list[str]:
    return [ctx.expand(check_name(_string(n, what, 256), what)) for n in _list(value, what)]


def _information(value: Any, ctx: ActiveContext) -> list[dict[str, Any]]:
    infos = []
    for item in _list(value, "information"):
        if not isinstance(item, dict):
            raise BadRequestData("each member of information must be a RegistrationInfo object")
        unknown = set(item) - {"entities", "propertyNames", "relationshipNames"}
        if unknown:
            raise BadRequestData(f"unknown member {sorted(unknown)[0][:60]!r} in a RegistrationInfo")
        info: dict[str, Any] = {}
        if "entities" in item:
            info["entities"] = [_entity_info(e, ctx) for e in _list(item["entities"], "information.entities")]
        for key in ("propertyNames", "relationshipNames"):
            if key in item:
                info[key] = _names(item[key], ctx, f"information.{key}")
        if not info:
            raise BadRequestData("a RegistrationInfo needs entities, propertyNames or relationshipNames")
        infos.append(info)
    return infos


def _datetime(value: Any, what: str) -> str:
    try:
        when = clock.parse_iso(value)
    except (ValueError, TypeError) as exc:
        raise BadRequestData(f"{what} must be an ISO 8601 DateTime") from exc
    return clock.iso(when) if not isinstance(value, str) else value


def _interval(value: Any, what: str) -> dict[str, str]:
    if not isinstance(value, dict) or "startAt" not in value or set(value) - {"startAt", "endAt"}:
        raise BadRequestData(f"{what} must be an object with startAt and optionally endAt")
    out = {"startAt": _datetime(value["startAt"], f"{what}.startAt")}
    if "endAt" in value:
        out["endAt"] = _datetime(value["endAt"], f"{what}.endAt")
        if clock.parse_iso(out["endAt"]) < clock.parse_iso(out["startAt"]):
            raise BadRequestData(f"{what}.endAt is before its startAt")
    return out


def _geometry(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict) or not isinstance(value.get("type"), str) or "coordinates" not in value:
        raise BadRequestData(f"{what} must be a GeoJSON geometry")
    try:
        geoquery.parse_geoquery("intersects", value["type"], value["coordinates"], None, lambda n: n)
    except BadRequestData as exc:
        raise BadRequestData(f"{what} is not a valid GeoJSON geometry: {exc.detail}") from exc
    return {"type": value["type"], "coordinates": value["coordinates"]}


def _expires(value: Any) -> str:
    text = _datetime(value, "expiresAt")
    if clock.parse_iso(text) <= clock.now():
        raise BadRequestData("expiresAt is in the past")
    return text


def check_endpoint(value: Any) -> str:
    text = _string(value, "endpoint", 2048)
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BadRequestData(f"endpoint must be an http or https URL, not {text[:80]!r}")
    try:
        parts.port  # noqa: B018 - urlsplit checks the port lazily
    except ValueError as exc:
        raise BadRequestData(f"endpoint has an invalid port: {text[:80]!r}") from exc
    return text


def _key_values(value: Any) -> list[dict[str, str]]:
    pairs = []
    for item in _list(value, "contextSourceInfo"):
        if not isinstance(item, dict) or set(item) != {"key", "value"}:
            raise BadRequestData("each member of contextSourceInfo must be an object with key and value")
        key = _string(item["key"], "contextSourceInfo.key", 256)
        val = _string(item["value"], "contextSourceInfo.value", 4096)
        if any(c in key + val for c in "\r\n\0"):
            raise BadRequestData("contextSourceInfo keys and values must not hold line breaks")
        pairs.append({"key": key, "value": val})
    return pairs


def _operations(value: Any) -> list[str]:
    names = [_string(n, "operations", 64) for n in _list(value, "operations")]
    unknown = [n for n in names if n not in OPERATIONS and n not in GROUPS]
    if unknown:
        raise BadRequestData(f"unknown operation {unknown[0][:60]!r}")
    return names


def _management(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise BadRequestData("management must be an object")
    out: dict[str, Any] = {}
    for key, item in value.items():
        kind = MANAGEMENT_KEYS.get(key)
        if kind is None:
            raise BadRequestData(f"unknown management member {str(key)[:60]!r}")
        is_flag = kind == (bool,)
        if isinstance(item, bool) != is_flag or not isinstance(item, kind) or (not is_flag and _negative(item)):
            raise BadRequestData(f"management.{key} has the wrong type")
        out[key] = item
    return out


def _negative(value: Any) -> bool:
    return bool(value < 0)


def _scope(value: Any) -> list[str]:
    scopes = value if isinstance(value, list) else [value]
    for s in scopes:
        if not isinstance(s, str) or not re.fullmatch(r"/?[\w\-.]+(/[\w\-.#+]+)*", s):
            raise BadRequestData("scope must be a scope string or an array of them")
    return list(scopes)


def _parse_member(key: str, value: Any, ctx: ActiveContext) -> Any:
    if key == "information":
        return _information(value, ctx)
    if key in ("registrationName", "description"):
        return _string(value, key, 4096)
    if key == "tenant":
        return _string(value, key, 256)
    if key in ("observationInterval", "managementInterval"):
        return _interval(value, key)
    if key in GEO_MEMBERS:
        return _geometry(value, key)
    if key == "expiresAt":
        return _expires(value)
    if key == "endpoint":
        return check_endpoint(value)
    if key == "contextSourceInfo":
        return _key_values(value)
    if key == "scope":
        return _scope(value)
    if key == "mode":
        if value not in MODES:
            raise BadRequestData(f"mode must be one of {', '.join(MODES)}")
        return value
    if key == "operations":
        return _operations(value)
    if key == "refreshRate":
        return _string(value, key, 64)
    if key == "management":
        return _management(value)
    raise AssertionError(key)


_PARSED = KNOWN - {"id", "type", "@context", "createdAt", "modifiedAt", "status", "timesSent", "timesFailed",
                   "lastSuccess", "lastFailure"}


def parse_members(body: Any, ctx: ActiveContext, *, allow_null: bool = False) -> Spec:
    """The members present in a body, validated and in internal form. Additional members are kept
    under `extra` by their expanded name. With allow_null (an update), null removes a member."""
    if not isinstance(body, dict):
        raise BadRequestData("a context source registration must be a JSON object")
    if "type" in body and body["type"] != TYPE:
        raise BadRequestData(f'the type of a context source registration must be "{TYPE}"')
    members: Spec = {}
    extra: dict[str, Any] = {}
    for key, value in body.items():
        if key in ("id", "type", "@context") or key in KNOWN - _PARSED:
            continue
        if value is None:
            if not allow_null or key in ("information", "endpoint"):
                raise BadRequestData(f"{key} must not be null")
            if key in _PARSED:
                members[key] = None
            else:
                extra[ctx.expand(check_name(key))] = None
            continue
        if key in _PARSED:
            members[key] = _parse_member(key, value, ctx)
        else:
            extra[ctx.expand(check_name(key, "member name"))] = value
    if extra:
        members["extra"] = extra
    return members


def check_whole(spec: Spec) -> None:
    """Rules across members (§5.2.9)."""
    if not spec.get("information"):
        raise BadRequestData("a context source registration needs information")
    if "endpoint" not in spec:
        raise BadRequestData("a context source registration needs an endpoint")
    mode = spec.get("mode", "inclusive")
    if mode in ("exclusive", "redirect"):
        for info in spec["information"]:
            if not info.get("entities"):
                raise BadRequestData(f"a {mode} registration must name entity types in every RegistrationInfo")
    if mode == "exclusive":
        for info in spec["information"]:
            if not info.get("propertyNames") and not info.get("relationshipNames"):
                raise BadRequestData("an exclusive registration must name the attributes it holds")


def parse_registration(body: Any, ctx: ActiveContext) -> Spec:
    spec = parse_members(body, ctx)
    raw_id = body.get("id")
    spec["id"] = check_entity_id(raw_id) if raw_id is not None else new_id()
    spec["type"] = TYPE
    spec.setdefault("mode", "inclusive")
    spec.setdefault("operations", list(DEFAULT_OPERATIONS))
    check_whole(spec)
    return spec


def apply_update(spec: Spec, body: Any, members: Spec) -> Spec:
    """A PATCH (§5.9.3): the given members replace the stored ones; null removes a member."""
    if not isinstance(body, dict):
        raise BadRequestData("a registration update must be a JSON object")
    if "id" in body and body["id"] != spec["id"]:
        raise BadRequestData("the id in the body differs from the id in the URL")
    if not members:
        raise BadRequestData("the fragment has no member a registration update can change")
    merged = dict(spec)
    for key, value in members.items():
        if key == "extra":
            extra = dict(merged.get("extra") or {})
            for name, item in value.items():
                if item is None:
                    extra.pop(name, None)
                else:
                    extra[name] = item
            merged["extra"] = extra
        elif value is None:
            merged.pop(key, None)
        else:
            merged[key] = value
    if merged.get("mode") != spec.get("mode") and "mode" in members:
        raise BadRequestData("the mode of a registration cannot be changed (§5.9.3); delete and register again")
    merged.setdefault("mode", "inclusive")
    check_whole(merged)
    return merged


# ---------------------------------------------------------------------- rendering


def _iso_or_none(value: datetime | None) -> str | None:
    value = as_utc_or_none(value)
    return clock.iso(value) if value is not None else None


def render_registration(spec: Spec, compact: Compact, *, created_at: datetime | None = None,
                        modified_at: datetime | None = None, sys_attrs: bool = False, secrets: bool = False,
                        information: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The API (and notification) representation, IRIs compacted with the caller's @context.

    contextSourceInfo values under credential-like keys (Authorization, API keys) are write-only:
    shown only with `secrets`, else masked."""
    out: dict[str, Any] = {"id": spec["id"], "type": TYPE}
    for key in ("registrationName", "description"):
        if key in spec:
            out[key] = spec[key]
    out["information"] = [_render_info(info, compact) for info in (information or spec["information"])]
    for key in ("tenant", "observationInterval", "managementInterval", *GEO_MEMBERS, "expiresAt", "endpoint",
                "scope", "mode", "operations", "refreshRate", "management"):
        if key in spec:
            out[key] = spec[key]
    if "contextSourceInfo" in spec:
        out["contextSourceInfo"] = [
            p if secrets or p["key"].lower() not in SECRET_KEYS else {"key": p["key"], "value": SECRET_MASK}
            for p in spec["contextSourceInfo"]]
    for iri, value in (spec.get("extra") or {}).items():
        out[compact(iri)] = value
    if sys_attrs:
        out["createdAt"] = _iso_or_none(created_at)
        out["modifiedAt"] = _iso_or_none(modified_at)
    return out


def _render_info(info: dict[str, Any], compact: Compact) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if "entities" in info:
        entities = []
        for e in info["entities"]:
            types = [compact(t) for t in e["type"]]
            item: dict[str, Any] = {k: v for k, v in e.items() if k != "type"}
            item["type"] = types[0] if len(types) == 1 else types
            entities.append(item)
        out["entities"] = entities
    for key in ("propertyNames", "relationshipNames"):
        if key in info:
            out[key] = [compact(n) for n in info[key]]
    return out


def is_uri_id(value: str) -> bool:
    return is_uri(value)
