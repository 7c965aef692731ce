"""Which registrations match a query, a csource subscription or a distributed operation (§5.10.2, §5.11.7).

A registration matches when one of its RegistrationInfo elements matches the entity part (types,
ids, idPattern) and the attribute part of the filter together; a RegistrationInfo without entities
stands for every entity, one without propertyNames and relationshipNames for every attribute.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from cityos.core import clock
from cityos.core.errors import BadRequestData
from cityos.hub import geoquery
from cityos.hub.qlang import QExpr, evaluate_q, parse_q
from cityos.hub.registrations.spec import Spec

TIMERELS = ("before", "after", "between")
TIME_PROPERTIES = ("observedAt", "createdAt", "modifiedAt")


@dataclass
class Selector:
    """One entity selector: types (any of), and an id or idPattern."""

    types: frozenset[str] | None = None
    ids: frozenset[str] | None = None
    pattern: re.Pattern[str] | None = None


@dataclass
class TemporalQ:
    timerel: str
    time_at: datetime
    end_time_at: datetime | None
    timeproperty: str = "observedAt"


@dataclass
class Filter:
    selectors: list[Selector] = field(default_factory=list)  # any of them; none: every entity
    attrs: frozenset[str] | None = None
    q: QExpr | None = None
    csf: QExpr | None = None
    geo: geoquery.GeoQuery | None = None
    temporal: TemporalQ | None = None
    expand: Any = None  # term → IRI for q and csf

    def infos(self, spec: Spec) -> list[dict[str, Any]]:
        """The RegistrationInfo elements that match the entity and attribute parts."""
        return [info for info in spec.get("information") or [] if self._info_matches(info)]

    def _info_matches(self, info: dict[str, Any]) -> bool:
        if self.attrs:
            names = set(info.get("propertyNames") or []) | set(info.get("relationshipNames") or [])
            if names and not names & self.attrs:
                return False
        entities = info.get("entities")
        if not self.selectors or not entities:
            return True
        return any(_entity_matches(e, s) for e in entities for s in self.selectors)

    def matches(self, spec: Spec, created_at: datetime | None = None, modified_at: datetime | None = None,
                now: datetime | None = None) -> bool:
        if not self.infos(spec):
            return False
        props = properties_of(spec)
        expand = self.expand or (lambda n: n)
        if self.q is not None and not evaluate_q(self.q, props, expand):
            return False
        if self.csf is not None and not evaluate_q(self.csf, props, expand):
            return False
        if self.geo is not None:
            geometry = spec.get(self.geo.geoproperty)
            if not isinstance(geometry, dict) or not geoquery.evaluate_geo(self.geo, geometry):
                return False
        return _temporal_matches(spec, self.temporal, created_at, modified_at, now or clock.now())


def _entity_matches(entity: dict[str, Any], selector: Selector) -> bool:
    if selector.types is not None and not set(entity["type"]) & selector.types:
        return False
    if selector.ids is not None:
        if "id" in entity:
            return entity["id"] in selector.ids
        if "idPattern" in entity:
            return any(re.search(entity["idPattern"], i) is not None for i in selector.ids)
        return True
    if selector.pattern is not None and "id" in entity:
        return selector.pattern.search(entity["id"]) is not None
    return True


def properties_of(spec: Spec) -> dict[str, list[dict[str, Any]]]:
    """A registration's additional members (and a few of its own) as Properties, for q and csf."""
    props: dict[str, list[dict[str, Any]]] = {}
    for key in ("registrationName", "description", "endpoint", "mode", "tenant"):
        if key in spec:
            props[key] = [{"type": "Property", "value": spec[key]}]
    for iri, value in (spec.get("extra") or {}).items():
        inner = value.get("value") if isinstance(value, dict) and "value" in value else value
        props[iri] = [{"type": "Property", "value": inner}]
    return props


def _interval(spec: Spec, key: str, created_at: datetime | None,
              modified_at: datetime | None, timeproperty: str) -> tuple[datetime, datetime | None] | None:
    interval = spec.get(key)
    if isinstance(interval, dict):
        end = interval.get("endAt")
        return clock.parse_iso(interval["startAt"]), clock.parse_iso(end) if end else None
    if key == "managementInterval":
        stamp = created_at if timeproperty == "createdAt" else modified_at
        if stamp is not None:
            return stamp, stamp
    return None


def _temporal_matches(spec: Spec, temporal: TemporalQ | None, created_at: datetime | None,
                      modified_at: datetime | None, now: datetime) -> bool:
    if temporal is None:
        # Without a temporal query only sources of latest information count (§5.10.2): a registration
        # whose observation interval ended in the past holds history only.
        interval = spec.get("observationInterval")
        end = interval.get("endAt") if isinstance(interval, dict) else None
        return end is None or clock.parse_iso(end) >= now
    key = "observationInterval" if temporal.timeproperty == "observedAt" else "managementInterval"
    found = _interval(spec, key, created_at, modified_at, temporal.timeproperty)
    if found is None:
        return False
    start, end = found
    if temporal.timerel == "before":
        return start < temporal.time_at
    if temporal.timerel == "after":
        return end is None or end > temporal.time_at
    assert temporal.end_time_at is not None
    return start < temporal.end_time_at and (end is None or end > temporal.time_at)


def parse_temporal(timerel: Any, time_at: Any, end_time_at: Any, timeproperty: Any) -> TemporalQ | None:
    if timerel is None and time_at is None and end_time_at is None:
        return None
    if timerel not in TIMERELS:
        raise BadRequestData(f"timerel must be one of {', '.join(TIMERELS)}")
    if time_at is None:
        raise BadRequestData("timerel needs timeAt")
    prop = timeproperty or "observedAt"
    if prop not in TIME_PROPERTIES:
        raise BadRequestData(f"timeproperty must be one of {', '.join(TIME_PROPERTIES)}")
    try:
        start = clock.parse_iso(time_at)
        end = clock.parse_iso(end_time_at) if end_time_at is not None else None
    except (ValueError, TypeError) as exc:
        raise BadRequestData("timeAt and endTimeAt must be ISO 8601 DateTimes") from exc
    if timerel == "between" and end is None:
        raise BadRequestData("timerel=between needs endTimeAt")
    return TemporalQ(timerel, start, end, prop)


def parse_expr(text: Any, what: str) -> QExpr | None:
    if text is None:
        return None
    if not isinstance(text, str) or not text:
        raise BadRequestData(f"{what} must be a non-empty string")
    try:
        return parse_q(text)
    except BadRequestData as exc:
        raise BadRequestData(f"{what}: {exc.detail}") from exc
