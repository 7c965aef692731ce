"""Subscription documents (ETSI GS CIM 009 v1.8.1 §5.2.12): parsing, validation and rendering.

A subscription is kept in an internal form: the API members, with entity types and attribute
names expanded to IRIs by the @context of the request that set them, so that a later request with
another @context cannot change what an existing subscription means. The q expression keeps its
text plus the IRIs of the names it uses (`qTerms`) for the same reason.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from cityos.core import clock
from cityos.core.clock import as_utc_or_none
from cityos.core.errors import BadRequestData
from cityos.hub import geoquery, typesel
from cityos.hub.jsonld import ActiveContext
from cityos.hub.linked import JOINS, MAX_JOIN_LEVEL
from cityos.hub.model import NULL_URI, check_entity_id, check_name, is_uri
from cityos.hub.projection import projection_of
from cityos.hub.qlang import RESERVED_SUB_ATTRIBUTES, QExpr, parse_q, q_paths

Spec = dict[str, Any]
Compact = Callable[[str], str]

TRIGGERS = ("entityCreated", "entityUpdated", "entityDeleted", "attributeCreated", "attributeUpdated",
            "attributeDeleted")
# v1.8.1 §5.2.12: "If not present, the default is the combination attributeCreated and attributeUpdated".
DEFAULT_TRIGGERS = ["attributeCreated", "attributeUpdated"]
FORMATS = {"normalized": "normalized", "keyValues": "keyValues", "simplified": "keyValues", "concise": "concise"}
ACCEPTS = ("application/json", "application/ld+json")
SCHEMES = ("http", "https", "mqtt", "mqtts")
MAX_LIST = 100


def new_id() -> str:
    import uuid

    return f"urn:ngsi-ld:Subscription:{uuid.uuid4()}"


# ---------------------------------------------------------------------- member parsers


def _list_of(value: Any, what: str) -> list[Any]:
    if not isinstance(value, list) or not value:
        raise BadRequestData(f"{what} must be a non-empty array")
    if len(value) > MAX_LIST:
        raise BadRequestData(f"{what} may have at most {MAX_LIST} members")
    return value


def _string(value: Any, what: str, max_length: int = 1024) -> str:
    if not isinstance(value, str) or not value or len(value) > max_length:
        raise BadRequestData(f"{what} must be a non-empty string of at most {max_length} characters")
    return value


def _entities(value: Any, ctx: ActiveContext) -> list[dict[str, str]]:
    selectors = []
    for item in _list_of(value, "entities"):
        if not isinstance(item, dict):
            raise BadRequestData("each member of entities must be an EntitySelector object")
        if "type" not in item:
            raise BadRequestData("an EntitySelector needs a type")
        selector = {"type": _type_of(item["type"], ctx)}
        if "id" in item:
            selector["id"] = check_entity_id(item["id"])
        if "idPattern" in item:
            selector["idPattern"] = _pattern(item["idPattern"])
        selectors.append(selector)
    return selectors


def _type_of(value: Any, ctx: ActiveContext) -> str:
    """An EntitySelector's type: a name, or an entity type selection (v1.8.1 §4.17, e.g. `(Building|Tower)`)
    kept with its names expanded."""
    text = _string(value, "entities.type", 1024)
    if not typesel.is_selection(text):
        return ctx.expand(check_name(text, "entity type"))
    typesel.parse_type_selection(text, ctx.expand)  # refuses a malformed selection with 400
    return typesel.map_names(text, lambda name: ctx.expand(check_name(name, "entity type")))


def selector_types(selector: dict[str, str]) -> typesel.Selection:
    """The stored type of an EntitySelector as a selection (a plain IRI is a selection of one)."""
    text = selector["type"]
    if not typesel.is_selection(text):
        return [frozenset({text})]  # an IRI as stored, whatever characters its @context gave it
    return typesel.parse_type_selection(text, _identity_name)


def _identity_name(name: str) -> str:
    return name


def compact_type(text: str, compact: Compact) -> str:
    return typesel.map_names(text, compact) if typesel.is_selection(text) else compact(text)


def _pattern(value: Any) -> str:
    text = _string(value, "idPattern", 256)
    try:
        re.compile(text)
    except re.error as exc:
        raise BadRequestData(f"idPattern is not a valid regular expression: {exc}") from exc
    return text


def _attr_names(value: Any, ctx: ActiveContext, what: str) -> list[str]:
    return sorted({ctx.expand(check_name(_string(name, what, 256))) for name in _list_of(value, what)})


def _triggers(value: Any, _ctx: ActiveContext) -> list[str]:
    items = _list_of(value, "notificationTrigger")
    unknown = [t for t in items if t not in TRIGGERS]
    if unknown:
        raise BadRequestData(f"unknown notificationTrigger {str(unknown[0])[:60]!r}; expected {', '.join(TRIGGERS)}")
    return [t for t in TRIGGERS if t in items]


def _q_names(expr: QExpr) -> set[str]:
    """The attribute and sub-attribute names of a q expression (the terms its @context must expand)."""
    names: set[str] = set()
    for path in q_paths(expr):
        names.add(path.attr)
        names.update(n for n in path.sub_path if n not in RESERVED_SUB_ATTRIBUTES)
    return names


def _q(value: Any, ctx: ActiveContext) -> dict[str, Any]:
    text = _string(value, "q", 4096)
    expr = parse_q(text)
    return {"text": text, "terms": {name: ctx.expand(name) for name in sorted(_q_names(expr))}}


def _geo_q(value: Any, ctx: ActiveContext) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise BadRequestData("geoQ must be an object with georel, geometry and coordinates")
    for key in ("georel", "geometry", "coordinates"):
        if key not in value:
            raise BadRequestData(f"geoQ needs {key}")
    coordinates = value["coordinates"]
    query = geoquery.parse_geoquery(value["georel"], value["geometry"], coordinates, value.get("geoproperty"),
                                    ctx.expand)
    assert query is not None
    return {"georel": value["georel"], "geometry": query.geometry["type"], "coordinates": query.geometry["coordinates"],
            "geoproperty": query.geoproperty}


def _positive(value: Any, what: str, allow_zero: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0 or (value == 0 and not allow_zero):
        raise BadRequestData(f"{what} must be a {'non-negative' if allow_zero else 'positive'} number of seconds")
    if value > 10 * 365 * 86400:
        raise BadRequestData(f"{what} is too large")
    return value  # kept as given: 5 stays 5, not 5.0


def _expires(value: Any, _ctx: ActiveContext) -> str:
    try:
        when = clock.parse_iso(value)
    except (ValueError, TypeError) as exc:
        raise BadRequestData("expiresAt must be an ISO 8601 DateTime") from exc
    if when <= clock.now():
        raise BadRequestData("expiresAt is in the past")
    return clock.iso(when)


def _bool(value: Any, what: str) -> bool:
    if not isinstance(value, bool):
        raise BadRequestData(f"{what} must be true or false")
    return value


def _key_values(value: Any, what: str) -> list[dict[str, str]]:
    pairs = []
    for item in _list_of(value, what):
        if not isinstance(item, dict) or set(item) != {"key", "value"}:
            raise BadRequestData(f"each member of {what} must be an object with key and value")
        pairs.append({"key": _string(item["key"], f"{what}.key", 256),
                      "value": _string(item["value"], f"{what}.value")})
    return pairs


def check_endpoint_uri(uri: Any) -> str:
    text = _string(uri, "notification.endpoint.uri", 2048)
    parts = urlsplit(text)
    if parts.scheme not in SCHEMES or not parts.hostname:
        raise BadRequestData(f"notification.endpoint.uri must be an http, https, mqtt or mqtts URL, not {text[:80]!r}")
    try:
        parts.port  # noqa: B018 - urlsplit checks the port lazily
    except ValueError as exc:
        raise BadRequestData(f"notification.endpoint.uri has an invalid port: {text[:80]!r}") from exc
    if parts.scheme.startswith("mqtt") and not parts.path.strip("/"):
        raise BadRequestData("an MQTT endpoint needs a topic: mqtt://host:port/topic")
    return text


def _endpoint(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise BadRequestData("notification.endpoint must be an object")
    endpoint: dict[str, Any] = {"uri": check_endpoint_uri(value.get("uri")), "accept": value.get("accept", ACCEPTS[0])}
    if endpoint["accept"] not in ACCEPTS:
        raise BadRequestData(f"notification.endpoint.accept must be one of {', '.join(ACCEPTS)}")
    for key in ("receiverInfo", "notifierInfo"):
        if key in value:
            endpoint[key] = _key_values(value[key], f"notification.endpoint.{key}")
    qos = next((p["value"] for p in endpoint.get("notifierInfo", []) if p["key"] == "MQTT-QoS"), "0")
    if qos not in ("0", "1", "2"):  # the three MQTT levels (v1.8.1 §5.2.22 notifierInfo MQTT-QoS)
        raise BadRequestData("notifierInfo MQTT-QoS must be 0, 1 or 2")
    return endpoint


def _notification(value: Any, ctx: ActiveContext) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise BadRequestData("notification must be an object")
    if "endpoint" not in value:
        raise BadRequestData("notification needs an endpoint")
    params: dict[str, Any] = {"endpoint": _endpoint(value["endpoint"])}
    fmt = value.get("format", "normalized")
    if fmt not in FORMATS:
        raise BadRequestData(f"notification.format must be one of {', '.join(FORMATS)}")
    params["format"] = FORMATS[fmt]
    if "attributes" in value:
        params["attributes"] = _attr_names(value["attributes"], ctx, "notification.attributes")
    # v1.8.1 §4.21 projection of the notified entities: pick/omit exclude each other and attributes.
    if "pick" in value and "omit" in value:
        raise BadRequestData("notification.pick and notification.omit cannot be used together")
    for key in ("pick", "omit"):
        if key in value:
            if "attributes" in value:
                raise BadRequestData(f"notification.{key} cannot be used together with notification.attributes")
            names = value[key] if isinstance(value[key], list) else str(value[key]).split(",")
            if not names or not all(isinstance(n, str) and n for n in names):
                raise BadRequestData(f"notification.{key} must be a list of member names")
            pick, omit = projection_of({key: ",".join(names)}, ctx.expand)
            params[key] = sorted(pick if pick is not None else omit)
    for key in ("showChanges", "sysAttrs"):
        if key in value:
            params[key] = _bool(value[key], f"notification.{key}")
    params.update(_join(value))
    return params


def _join(value: dict[str, Any]) -> dict[str, Any]:
    """notification.join and joinLevel (v1.8.1 §5.2.14, §4.5.23): the linked entities notified with the
    entities, inline or flat, and how many hops; "@none" (or no join) notifies the entities alone."""
    out: dict[str, Any] = {}
    if "join" in value:
        if value["join"] not in (*JOINS, "@none"):
            raise BadRequestData("notification.join must be inline, flat or @none")
        out["join"] = value["join"]
    if "joinLevel" in value:
        level = value["joinLevel"]
        if isinstance(level, bool) or not isinstance(level, int) or not 1 <= level <= MAX_JOIN_LEVEL:
            raise BadRequestData(f"notification.joinLevel must be an integer from 1 to {MAX_JOIN_LEVEL}")
        out["joinLevel"] = level
    return out


def _context_member(value: Any, _ctx: ActiveContext) -> str:
    if not is_uri(value) or not str(value).startswith(("http://", "https://")):
        raise BadRequestData("jsonldContext must be an http(s) URL of an @context")
    return str(value)


def _dataset_ids(value: Any, _ctx: ActiveContext) -> str | list[str]:
    """datasetId (v1.8.1 §5.2.12): the instances notified, by datasetId ("@none": the default one)."""
    items = value if isinstance(value, list) else [value]
    if not items or len(items) > 100:
        raise BadRequestData("datasetId must be a URI or an array of 1 to 100 URIs")
    for item in items:
        if not isinstance(item, str) or not (item == "@none" or is_uri(item)):
            raise BadRequestData("each datasetId must be a URI (or @none)")
    return value if isinstance(value, list) else str(value)


def dataset_filter(spec: Spec) -> frozenset[str] | None:
    value = spec.get("datasetId")
    if value is None:
        return None
    return frozenset(value if isinstance(value, list) else [value])


_PARSERS: dict[str, Callable[[Any, ActiveContext], Any]] = {
    "subscriptionName": lambda v, _c: _string(v, "subscriptionName"),
    "description": lambda v, _c: _string(v, "description", 4096),
    "entities": _entities,
    "watchedAttributes": lambda v, c: _attr_names(v, c, "watchedAttributes"),
    "notificationTrigger": _triggers,
    "q": _q,
    "geoQ": _geo_q,
    "notification": _notification,
    "throttling": lambda v, _c: _positive(v, "throttling", allow_zero=True),
    "timeInterval": lambda v, _c: _positive(v, "timeInterval", allow_zero=False),
    "expiresAt": _expires,
    "isActive": lambda v, _c: _bool(v, "isActive"),
    "jsonldContext": _context_member,
    "lang": lambda v, _c: _string(v, "lang", 64),
    "datasetId": _dataset_ids,
}


# ---------------------------------------------------------------------- documents


def parse_members(body: Any, ctx: ActiveContext, *, allow_null: bool = False) -> Spec:
    """The members present in a body, each validated and in internal form (unknown members are ignored).

    With allow_null (an update), a member given as null is returned as None: the update removes it.
    """
    if not isinstance(body, dict):
        raise BadRequestData("a subscription must be a JSON object")
    if "type" in body and body["type"] != "Subscription":
        raise BadRequestData('the type of a subscription must be "Subscription"')
    members: Spec = {}
    for key, parser in _PARSERS.items():
        if key not in body:
            continue
        if body[key] is None or body[key] == NULL_URI:
            if not allow_null:
                raise BadRequestData(f"{key} must not be null")
            members[key] = None
            continue
        members[key] = parser(body[key], ctx)
    return members


def parse_subscription(body: Any, ctx: ActiveContext) -> Spec:
    """A whole subscription (create)."""
    spec = parse_members(body, ctx)
    raw_id = body.get("id")
    spec["id"] = check_entity_id(raw_id) if raw_id is not None else new_id()
    spec["type"] = "Subscription"
    # isActive stays absent unless given (it defaults to true wherever it is read): the
    # representation returns what the subscriber wrote.
    check_whole(spec)
    return spec


def apply_update(spec: Spec, body: Any, members: Spec) -> Spec:
    """A PATCH: the given top-level members replace the stored ones (null removes), then the whole is checked."""
    if not isinstance(body, dict):
        raise BadRequestData("a subscription update must be a JSON object")
    if "id" in body and body["id"] != spec["id"]:
        raise BadRequestData("the id in the body differs from the id in the URL")
    if not members:
        raise BadRequestData("the fragment has no member a subscription update can change")
    merged = {**spec, **{k: v for k, v in members.items() if v is not None}}
    for key in [k for k, v in members.items() if v is None]:
        if key == "notification":
            raise BadRequestData("notification cannot be removed")
        merged.pop(key, None)
    check_whole(merged)
    return merged


def check_whole(spec: Spec) -> None:
    """Rules that span members (§5.2.12)."""
    if "notification" not in spec:
        raise BadRequestData("a subscription needs a notification member")
    if not spec.get("entities") and not spec.get("watchedAttributes"):
        raise BadRequestData("a subscription needs entities or watchedAttributes (or both)")
    if "timeInterval" in spec and "watchedAttributes" in spec:
        raise BadRequestData("timeInterval and watchedAttributes cannot be used together")
    if "timeInterval" in spec and "throttling" in spec:
        raise BadRequestData("timeInterval and throttling cannot be used together")
    if "timeInterval" in spec and not spec.get("entities"):
        raise BadRequestData("a periodic (timeInterval) subscription needs entities")


def triggers_of(spec: Spec) -> list[str]:
    triggers: list[str] = spec.get("notificationTrigger") or DEFAULT_TRIGGERS
    return triggers


SECRET_MASK = "***"  # noqa: S105 - the mask shown in place of a secret, not a secret
SECRET_MEMBERS = ("receiverInfo", "notifierInfo")


def status_of(spec: Spec, expires_at: datetime | None, now: datetime, suspended: bool = False) -> str:
    if expires_at is not None and expires_at <= now:
        return "expired"
    if suspended:
        return "suspended"  # its owner is gone or disabled: it sends nothing (isActive is left as it was)
    return "active" if spec.get("isActive", True) else "paused"


# ---------------------------------------------------------------------- rendering


def _iso_or_none(value: datetime | None) -> str | None:
    value = as_utc_or_none(value)
    return clock.iso(value) if value is not None else None


def render_subscription(spec: Spec, row: Any, compact: Compact, now: datetime, *, suspended: bool = False,
                        secrets: bool = False) -> dict[str, Any]:
    """The API representation: IRIs compacted with the caller's @context, status members filled in.

    receiverInfo and notifierInfo may carry credentials for the endpoint (an API key header): their
    values are write-only, shown only with `secrets` (to the subscription's owner), else masked."""
    out: dict[str, Any] = {"id": spec["id"], "type": "Subscription"}
    for key in ("subscriptionName", "description"):
        if key in spec:
            out[key] = spec[key]
    if "entities" in spec:
        out["entities"] = [{**s, "type": compact_type(s["type"], compact)} for s in spec["entities"]]
    if "watchedAttributes" in spec:
        out["watchedAttributes"] = [compact(a) for a in spec["watchedAttributes"]]
    out["notificationTrigger"] = triggers_of(spec)
    if "q" in spec:
        out["q"] = spec["q"]["text"]
    if "geoQ" in spec:
        out["geoQ"] = {**spec["geoQ"], "geoproperty": compact(spec["geoQ"]["geoproperty"])}
    for key in ("timeInterval", "throttling", "expiresAt", "jsonldContext", "lang", "datasetId"):
        if key in spec:
            out[key] = spec[key]
    if "isActive" in spec:
        out["isActive"] = spec["isActive"]
    out["notification"] = _render_notification(spec["notification"], row, compact, secrets)
    out["status"] = status_of(spec, as_utc_or_none(row.expires_at), now, suspended)
    # System attributes; the API keeps them only for options=sysAttrs (see subscriptions.api).
    out["createdAt"] = _iso_or_none(row.created_at)
    out["modifiedAt"] = _iso_or_none(row.modified_at)
    return out


def _render_notification(params: dict[str, Any], row: Any, compact: Compact, secrets: bool) -> dict[str, Any]:
    out: dict[str, Any] = {k: v for k, v in params.items() if k not in ("attributes", "pick", "omit")}
    endpoint = params.get("endpoint")
    if not secrets and isinstance(endpoint, dict) and any(k in endpoint for k in SECRET_MEMBERS):
        out["endpoint"] = {k: ([{"key": p["key"], "value": SECRET_MASK} for p in v] if k in SECRET_MEMBERS else v)
                           for k, v in endpoint.items()}
    for key in ("attributes", "pick", "omit"):
        if key in params:
            out[key] = [compact(a) for a in params[key]]
    if row.last_notification is not None:
        # "failed" when the last attempt failed (§5.2.15), not only once the sender parks the queue.
        failure, success = as_utc_or_none(row.last_failure), as_utc_or_none(row.last_success)
        last_failed = failure is not None and (success is None or failure >= success)
        out["status"] = "failed" if row.status == "failed" or last_failed else "ok"
    # "Provided by the system" once a notification was attempted (§5.2.14): a subscription that has never
    # notified shows neither counter, as it shows no lastNotification.
    if row.last_notification is not None:
        out["timesSent"] = int(row.times_sent)
        out["timesFailed"] = int(row.times_failed)
    for key, value in (("lastNotification", row.last_notification), ("lastSuccess", row.last_success),
                       ("lastFailure", row.last_failure)):
        if value is not None:
            out[key] = _iso_or_none(value)
    if row.last_error_reason:
        out["lastErrorReason"] = row.last_error_reason
    return out
