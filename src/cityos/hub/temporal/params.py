"""The temporal query (ETSI GS CIM 009 §4.11, §6.3.x): parsed and checked once, before any database work.

Time windows are half-open, as in Stellio: ``before`` is t < timeAt, ``after`` is t >= timeAt and
``between`` is timeAt <= t < endTimeAt. Aggregation buckets are half-open too, so a bucket boundary
belongs to exactly one bucket.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import isodate

from cityos.core import clock
from cityos.core.errors import BadRequestData, InvalidRequest
from cityos.hub.model import check_name

TIMERELS = frozenset({"before", "after", "between"})
TIME_PROPERTIES = frozenset({"observedAt", "modifiedAt", "createdAt", "deletedAt"})
AGGR_METHODS = ("totalCount", "distinctCount", "sum", "avg", "min", "max", "stddev", "sumsq")
NORMALIZED, TEMPORAL_VALUES, AGGREGATED = "normalized", "temporalValues", "aggregatedValues"
_REPRESENTATIONS = {"normalized": NORMALIZED, "temporalValues": TEMPORAL_VALUES, "simplified": TEMPORAL_VALUES,
                    "keyValues": TEMPORAL_VALUES, "aggregatedValues": AGGREGATED}
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_POSITIVE_INT = re.compile(r"[1-9][0-9]{0,8}")


@dataclass
class TemporalQuery:
    timerel: str | None = None
    time_at: datetime | None = None
    end_time_at: datetime | None = None
    timeproperty: str = "observedAt"
    last_n: int | None = None
    representation: str = NORMALIZED
    sys_attrs: bool = False
    aggr_methods: list[str] = field(default_factory=list)
    # None: one bucket over the whole window.
    aggr_period: timedelta | None = None
    attrs: list[str] | None = None
    # Where buckets start when the window has no start: the earliest instance asked for (§4.5.19).
    aggr_origin: datetime | None = None

    @property
    def lower(self) -> datetime | None:
        """The inclusive lower bound of the window, if any."""
        return self.time_at if self.timerel in ("after", "between") else None

    @property
    def upper(self) -> datetime | None:
        """The exclusive upper bound of the window, if any."""
        if self.timerel == "before":
            return self.time_at
        return self.end_time_at if self.timerel == "between" else None

    @property
    def origin(self) -> datetime:
        """Where the first aggregation bucket starts: timeAt when the window has a start, else the earliest
        instance in the answer (set by the service), else the Unix epoch."""
        return self.lower or self.aggr_origin or EPOCH


def _list(raw: str | None) -> list[str]:
    return [item.strip() for item in (raw or "").split(",") if item.strip()]


def _datetime(raw: str, name: str) -> datetime:
    try:
        return clock.parse_iso(raw)
    except (ValueError, TypeError) as exc:
        raise BadRequestData(f"{name} must be an ISO 8601 DateTime, got {raw[:60]!r}") from exc


def parse_period(raw: str) -> timedelta:
    """aggrPeriodDuration: a fixed-length ISO 8601 duration of whole seconds (PT1H, P1D, P1W, PT15M)."""
    try:
        parsed = isodate.parse_duration(raw)
    except (isodate.ISO8601Error, ValueError, TypeError) as exc:
        raise BadRequestData(f"aggrPeriodDuration {raw[:40]!r} is not an ISO 8601 duration") from exc
    if not isinstance(parsed, timedelta):
        # Months and years have no fixed length, and buckets are computed by arithmetic in SQL.
        raise BadRequestData("aggrPeriodDuration may not use months or years; use days or weeks (e.g. P30D)")
    if parsed <= timedelta(0):
        raise BadRequestData("aggrPeriodDuration must be longer than zero")
    if parsed.microseconds or parsed.total_seconds() != int(parsed.total_seconds()):
        raise BadRequestData("aggrPeriodDuration must be a whole number of seconds")
    return parsed


def _representation(params: Mapping[str, str]) -> tuple[str, bool]:
    chosen: set[str] = set()
    sys_attrs = False
    for option in _list(params.get("options")):
        if option == "sysAttrs":
            sys_attrs = True
        elif option in _REPRESENTATIONS:
            chosen.add(_REPRESENTATIONS[option])
        else:
            raise InvalidRequest(f"unknown option {option!r}")
    explicit = params.get("format")
    if explicit:
        if explicit not in _REPRESENTATIONS:
            raise InvalidRequest(f"unknown format {explicit!r}")
        # format, when given, decides the representation over options (§6.3.7).
        chosen = {_REPRESENTATIONS[explicit]}
    if len(chosen) > 1:
        chosen.discard(NORMALIZED)  # "normalized" beside another representation is only the default restated
    if len(chosen) > 1:
        raise BadRequestData("temporalValues and aggregatedValues cannot be combined")
    return (chosen.pop() if chosen else NORMALIZED), sys_attrs


def _window(params: Mapping[str, str], tq: TemporalQuery) -> None:
    timerel = params.get("timerel")
    time_at = params.get("timeAt")
    end_time_at = params.get("endTimeAt")
    if timerel is None:
        if time_at is not None or end_time_at is not None:
            raise BadRequestData("timeAt and endTimeAt need timerel")
        return
    if timerel not in TIMERELS:
        raise BadRequestData(f"timerel must be before, after or between, not {timerel[:40]!r}")
    if time_at is None:
        raise BadRequestData(f"timerel={timerel} needs timeAt")
    tq.timerel, tq.time_at = timerel, _datetime(time_at, "timeAt")
    if timerel == "between":
        if end_time_at is None:
            raise BadRequestData("timerel=between needs endTimeAt")
        tq.end_time_at = _datetime(end_time_at, "endTimeAt")
        if tq.end_time_at <= tq.time_at:
            raise BadRequestData("endTimeAt must be later than timeAt")
    elif end_time_at is not None:
        raise BadRequestData("endTimeAt is only allowed with timerel=between")


def _aggregation(params: Mapping[str, str], tq: TemporalQuery) -> None:
    methods = _list(params.get("aggrMethods"))
    period = params.get("aggrPeriodDuration")
    if tq.representation != AGGREGATED:
        # options=aggregatedValues overruled by format (§6.3.7): its aggregation members go with it.
        overruled = "aggregatedValues" in _list(params.get("options"))
        if (methods or period is not None) and not overruled:
            raise BadRequestData("aggrMethods and aggrPeriodDuration need options=aggregatedValues")
        return
    if not methods:
        raise BadRequestData(f"options=aggregatedValues needs aggrMethods (any of {', '.join(AGGR_METHODS)})")
    unknown = [m for m in methods if m not in AGGR_METHODS]
    if unknown:
        raise BadRequestData(f"unknown aggrMethods {', '.join(unknown)[:80]}; known: {', '.join(AGGR_METHODS)}")
    tq.aggr_methods = list(dict.fromkeys(methods))
    tq.aggr_period = parse_period(period) if period is not None else None


def parse_temporal_query(params: Mapping[str, str], expand: Callable[[str], str]) -> TemporalQuery:
    tq = TemporalQuery()
    tq.representation, tq.sys_attrs = _representation(params)
    _window(params, tq)
    prop = params.get("timeproperty", params.get("timeProperty"))
    if prop is not None:
        if prop not in TIME_PROPERTIES:
            raise BadRequestData(f"timeproperty must be one of {', '.join(sorted(TIME_PROPERTIES))}")
        tq.timeproperty = prop
        if prop == "deletedAt" and tq.representation == AGGREGATED:
            raise BadRequestData("aggregatedValues are not computed over deletions (timeproperty=deletedAt)")
    last_n = params.get("lastN")
    if last_n is not None:
        if not _POSITIVE_INT.fullmatch(last_n):
            raise BadRequestData("lastN must be a positive integer")
        tq.last_n = int(last_n)
    _aggregation(params, tq)
    names = _list(params.get("attrs"))
    tq.attrs = [expand(check_name(name)) for name in names] or None
    return tq
