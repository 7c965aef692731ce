"""Environment indices for stations in the hub: the logic, no HTTP.

`EnvironmentService.recompute(tenant, entity_id)` reads a station's entity and its history from
the hub, computes its indices and writes them back onto the entity (only the values that
changed), and runs the built-in rules. The worker (`worker.py`) decides WHEN to call it.

Inputs (what the IoT profiles and the simulator write), and configuration read from the entity:

- AirQualityObserved: pm25, pm10, no2, so2, o3 (µg/m³), co (mg/m³); district, location;
- WaterQualityObserved: pH, O2 (DO), COD, NH4 (NH3-N), totalPhosphorus and, when present,
  permanganateIndex, BOD5, totalNitrogen (mg/L); `waterTargetClass` (I…V, default III,
  CITYOS_ENV_WATER_TARGET) and `waterBodyType` (river, lake), on the station or on the entity
  its `refWaterBody` Relationship points to (the river);
- NoiseLevelObserved: LAeq, LAmax (dB(A)); `noiseZoneClass` (0, 1, 2, 3, 4a, 4b; default 2,
  CITYOS_ENV_NOISE_ZONE). Day and night are local time (CITYOS_ENV_TIMEZONE, Asia/Shanghai).

Outputs written to the station entity (Properties, observedAt = time of computation):

- air (HJ 633-2012): `aqi` (hourly AQI), `aqiLevel` (1-6), `aqiCategory` (优 … 严重污染),
  `aqiColor`, `primaryPollutant` (list; empty when AQI ≤ 50), `iaqi` (table → IAQI), `aqi24h`,
  `aqi24hLevel`, `aqi24hCategory`, `primaryPollutant24h` (24 h: the last 24 clock hours),
  `aqiUsEpa`, `aqiUsEpaCategory` (US EPA, 2024 PM2.5 breakpoints);
- water (GB 3838-2002): `waterQualityClass` (I … V, 劣V), `waterQualityLevel` (1-6),
  `waterQualityLimiting` (parameters), `waterQualityTarget`, `waterQualityCompliant`;
- noise (GB 3096-2008): `noisePeriod` (day, night), `noiseZone`, `noiseLimit`, `noiseLeq1h`,
  `noiseLeqPeriod` (Leq of the period so far), `noiseExceedance` (dB over the limit, 0 within),
  `noiseLAmaxExceedance` (night), `noiseCompliant`.

Averages come from the hub's temporal store: hourly means by the temporal aggregation (clock
hours), the 24 h and 8 h values from those hourly means with the validity rules of GB 3095-2012
(an 8-h mean needs 6 hourly values, a 24-h mean 20; configurable). The hourly AQI uses the
current clock hour's mean (the previous hour's until the current one has a reading).

District AQI (for the cockpit map) is published as `AirQualityIndex` entities
(`urn:ngsi-ld:AirQualityIndex:district-<name>`): `district`, `aqi` (= aqiMean), `aqiMean`,
`aqiMax`, `aqiLevel`, `aqiCategory`, `aqiColor`, `stationCount`, `worstStation` (Relationship),
`location` (the stations' centroid) and `refDistrict` when a District entity has that name.

Rules: AQI category 中度污染 or worse, water worse than its target class, noise over its zone
limit each publish `ops.incident.requested` once per episode (see `models.episodes`).
"""

from __future__ import annotations

import logging
import math
import urllib.parse
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from cityos.config import env_int
from cityos.core import clock
from cityos.core.errors import BadRequestData, ResourceNotFound
from cityos.core.events import EventBus
from cityos.hub.jsonld import ActiveContext
from cityos.hub.service import HubService
from cityos.hub.store import EntityQuery, EntityRecord
from cityos.hub.temporal.params import AGGREGATED, TemporalQuery
from cityos.hub.temporal.service import TemporalService
from cityos.ops.environment import aqi_cn, aqi_us, noise, water
from cityos.ops.environment.models import episodes

log = logging.getLogger("cityos.ops.environment")

TOPIC_INCIDENT = "ops.incident.requested"
AIR, WATER, NOISE = "AirQualityObserved", "WaterQualityObserved", "NoiseLevelObserved"
DISTRICT_INDEX = "AirQualityIndex"
CATEGORY = {AIR: "environment.air", WATER: "environment.water", NOISE: "environment.noise"}

AIR_INPUTS = ("pm25", "pm10", "no2", "so2", "o3", "co")
# hub attribute → GB 3838-2002 parameter
WATER_INPUTS = {"pH": "pH", "O2": "DO", "COD": "COD", "NH4": "NH3N", "totalPhosphorus": "TP",
                "permanganateIndex": "CODMn", "BOD5": "BOD5", "totalNitrogen": "TN"}
NOISE_INPUTS = ("LAeq", "LAmax")

AIR_OUTPUTS = ("aqi", "aqiLevel", "aqiCategory", "aqiColor", "primaryPollutant", "iaqi", "aqi24h", "aqi24hLevel",
               "aqi24hCategory", "primaryPollutant24h", "aqiUsEpa", "aqiUsEpaCategory")
WATER_OUTPUTS = ("waterQualityClass", "waterQualityLevel", "waterQualityLimiting", "waterQualityTarget",
                 "waterQualityCompliant")
NOISE_OUTPUTS = ("noisePeriod", "noiseZone", "noiseLimit", "noiseLeq1h", "noiseLeqPeriod", "noiseExceedance",
                 "noiseLAmaxExceedance", "noiseCompliant")
OUTPUTS = (*AIR_OUTPUTS, *WATER_OUTPUTS, *NOISE_OUTPUTS)

HOUR = timedelta(hours=1)


def _env_str(name: str, default: str) -> str:
    import os

    return os.environ.get(name) or default


@dataclass(frozen=True)
class EnvironmentSettings:
    interval_seconds: int = field(default_factory=lambda: env_int("CITYOS_ENV_INTERVAL", 60))
    queue_size: int = field(default_factory=lambda: env_int("CITYOS_ENV_QUEUE", 10_000))
    timezone: str = field(default_factory=lambda: _env_str("CITYOS_ENV_TIMEZONE", "Asia/Shanghai"))
    water_target: str = field(default_factory=lambda: _env_str("CITYOS_ENV_WATER_TARGET", "III"))
    noise_zone: str = field(default_factory=lambda: _env_str("CITYOS_ENV_NOISE_ZONE", "2"))
    min_hours_8h: int = field(default_factory=lambda: env_int("CITYOS_ENV_MIN_HOURS_8H", 6))
    min_hours_24h: int = field(default_factory=lambda: env_int("CITYOS_ENV_MIN_HOURS_24H", 20))
    alert_aqi_level: int = 4  # 中度污染
    # Which entities are monitoring stations: "devices" (those fed by a registered device, i.e. with a
    # refDevice relationship, the default) or "all" (also entities integrators write directly).
    stations: str = field(default_factory=lambda: _env_str("CITYOS_ENV_STATIONS", "devices"))

    def zone(self) -> Any:
        try:
            return ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            from datetime import timezone

            return timezone(timedelta(hours=8), "CST")


def value_of(record: EntityRecord, iri: str) -> Any:
    instances = record.attrs.get(iri) or []
    if not instances:
        return None
    inst = instances[0]
    return inst.get("object") if inst.get("type") == "Relationship" else inst.get("value")


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value) if value >= 0 else None


def _mean(values: Iterable[float]) -> float | None:
    items = list(values)
    return sum(items) / len(items) if items else None


def _hour_floor(moment: datetime) -> datetime:
    return moment.replace(minute=0, second=0, microsecond=0)


@dataclass
class Recomputed:
    entity_id: str
    kind: str
    values: dict[str, Any] = field(default_factory=dict)  # what was computed (compact names)
    written: list[str] = field(default_factory=list)  # which of them changed on the entity
    incident: dict[str, Any] | None = None  # the incident requested by this run, if any


class EnvironmentService:
    def __init__(self, hub: HubService, temporal: TemporalService, bus: EventBus, ctx: ActiveContext,
                 settings: EnvironmentSettings | None = None) -> None:
        self.hub = hub
        self.temporal = temporal
        self.bus = bus
        self.ctx = ctx
        self.settings = settings or EnvironmentSettings()
        self.tz = self.settings.zone()
        self.target_default = water.class_level(self.settings.water_target)
        self.zone_default = noise.zone_class(self.settings.noise_zone)
        self.type_iris = {self.iri(t): t for t in (AIR, WATER, NOISE)}
        self.output_iris = frozenset(self.iri(a) for a in OUTPUTS)
        self.ref_device_iri = self.iri("refDevice")

    def iri(self, term: str) -> str:
        return self.ctx.expand(term)

    # ------------------------------------------------------------------ reading the hub

    async def _record(self, tenant: str, entity_id: str) -> EntityRecord:
        return await self.hub.retrieve(tenant, entity_id)

    def kind_of(self, record: EntityRecord) -> str | None:
        for t in record.types:
            if t in self.type_iris:
                return self.type_iris[t]
        return None

    async def _hourly_means(self, tenant: str, entity_id: str, attrs: Iterable[str],
                            now: datetime) -> dict[str, dict[datetime, float]]:
        """attr → {hour start → mean} over the last 24 clock hours (the current one included)."""
        hour = _hour_floor(now)
        names = list(attrs)
        tq = TemporalQuery(timerel="between", time_at=hour - 23 * HOUR, end_time_at=hour + HOUR,
                           representation=AGGREGATED, aggr_methods=["avg"], aggr_period=HOUR,
                           attrs=[self.iri(a) for a in names])
        result = await self.temporal.retrieve(tenant, entity_id, tq)
        back = {self.iri(a): a for a in names}
        means: dict[str, dict[datetime, float]] = {a: {} for a in names}
        for head in result.entities:
            for attr, series in head.buckets.items():
                name = back.get(attr)
                if name is None:
                    continue
                for bucket in (row for one in series for row in one.rows()):
                    avg = _finite(bucket.values.get("avg"))
                    if avg is not None:
                        means[name][clock.as_utc(bucket.start)] = avg
        return means

    async def _instances(self, tenant: str, entity_id: str, attrs: list[str],
                         since: datetime) -> dict[str, list[tuple[datetime, float]]]:
        """(observedAt, value) of each attribute since `since`, all of them (paged past the instance cap)."""
        out: dict[str, list[tuple[datetime, float]]] = {a: [] for a in attrs}
        back = {self.iri(a): a for a in attrs}
        lower = since
        for _page in range(100):
            tq = TemporalQuery(timerel="after", time_at=lower, attrs=list(back))
            result = await self.temporal.retrieve(tenant, entity_id, tq)
            for head in result.entities:
                for attr, rows in head.instances.items():
                    name = back.get(attr)
                    for row in rows:
                        v = _finite(row.instance.get("value"))
                        if name is not None and not row.deleted and v is not None:
                            out[name].append((clock.as_utc(row.time), v))
            if result.range is None:
                break
            lower = result.range.end + timedelta(milliseconds=1)
        return out

    # ------------------------------------------------------------------ the computations

    def air_from_means(self, means: Mapping[str, Mapping[datetime, float]], now: datetime) -> dict[str, Any]:
        """The air outputs from hourly means (pure; see the module docstring for the rules)."""
        hour = _hour_floor(now)
        s = self.settings

        def latest(name: str) -> float | None:
            series = means.get(name, {})
            return series.get(hour, series.get(hour - HOUR))

        def window(name: str, hours: int, end: datetime, minimum: int) -> float | None:
            series = means.get(name, {})
            got = [series[h] for h in (end - i * HOUR for i in range(hours)) if h in series]
            return _mean(got) if len(got) >= minimum else None

        def max_window(name: str, hours: int) -> float | None:
            ends = [hour - i * HOUR for i in range(24 - hours + 1)]
            found = [w for w in (window(name, hours, e, s.min_hours_8h) for e in ends) if w is not None]
            return max(found) if found else None

        o3_series = means.get("o3", {})
        o3_1h_max = max((v for h, v in o3_series.items() if h > hour - 24 * HOUR), default=None)
        hourly = aqi_cn.hourly(so2=latest("so2"), no2=latest("no2"), co=latest("co"), o3=latest("o3"),
                               o3_8h=window("o3", 8, hour, s.min_hours_8h), pm10=latest("pm10"),
                               pm25=latest("pm25"), so2_24h=window("so2", 24, hour, s.min_hours_24h))
        daily = aqi_cn.daily(so2=window("so2", 24, hour, s.min_hours_24h),
                             no2=window("no2", 24, hour, s.min_hours_24h),
                             co=window("co", 24, hour, s.min_hours_24h),
                             pm10=window("pm10", 24, hour, s.min_hours_24h),
                             pm25=window("pm25", 24, hour, s.min_hours_24h),
                             o3_1h_max=o3_1h_max if window("o3", 24, hour, s.min_hours_24h) is not None else None,
                             o3_8h_max=max_window("o3", 8))
        us = aqi_us.from_metric(pm25_24h=window("pm25", 24, hour, s.min_hours_24h),
                                pm10_24h=window("pm10", 24, hour, s.min_hours_24h),
                                o3_8h=window("o3", 8, hour, s.min_hours_8h), o3_1h=latest("o3"),
                                co_8h=window("co", 8, hour, s.min_hours_8h), so2_1h=latest("so2"),
                                so2_24h=window("so2", 24, hour, s.min_hours_24h), no2_1h=latest("no2"))
        out: dict[str, Any] = {}
        if hourly.aqi is not None and hourly.category is not None:
            out.update(aqi=hourly.aqi, aqiLevel=hourly.category.level, aqiCategory=hourly.category.name,
                       aqiColor=hourly.category.color, primaryPollutant=hourly.primary, iaqi=hourly.iaqi)
        if daily.aqi is not None and daily.category is not None:
            out.update(aqi24h=daily.aqi, aqi24hLevel=daily.category.level, aqi24hCategory=daily.category.name,
                       primaryPollutant24h=daily.primary)
        if us.aqi is not None and us.category is not None:
            out.update(aqiUsEpa=us.aqi, aqiUsEpaCategory=us.category.name)
        return out

    def water_from_values(self, values: Mapping[str, Any], target: int, body: str) -> dict[str, Any]:
        sample: dict[str, float] = {}
        for attr, param in WATER_INPUTS.items():
            v = _finite(values.get(attr))
            if v is not None:
                sample[param] = v
        result = water.classify(sample, body)
        if result.level is None:
            return {}
        return {"waterQualityClass": result.name, "waterQualityLevel": result.level,
                "waterQualityLimiting": result.limiting, "waterQualityTarget": water.class_name(target),
                "waterQualityCompliant": result.meets(target)}

    def noise_from_samples(self, samples: Mapping[str, list[tuple[datetime, float]]], zone: str,
                           now: datetime) -> dict[str, Any]:
        period_start, period = self.noise_period(now)
        hour = _hour_floor(now)
        leqs = [v for t, v in samples.get("LAeq", []) if t >= period_start]
        if not leqs:
            return {}
        period_leq = noise.leq(leqs)
        hour_leq = noise.leq(v for t, v in samples.get("LAeq", []) if t >= hour)
        lamax = max((v for t, v in samples.get("LAmax", []) if t >= period_start), default=None)
        assert period_leq is not None
        result = noise.assess(zone, period, period_leq, lamax)
        out: dict[str, Any] = {"noisePeriod": period, "noiseZone": result.zone, "noiseLimit": result.limit,
                               "noiseLeqPeriod": round(period_leq, 1), "noiseExceedance": result.exceedance,
                               "noiseCompliant": result.compliant}
        if hour_leq is not None:
            out["noiseLeq1h"] = round(hour_leq, 1)
        if result.lamax_exceedance is not None:
            out["noiseLAmaxExceedance"] = result.lamax_exceedance
        return out

    def noise_period(self, now: datetime) -> tuple[datetime, str]:
        """(start in UTC, "day" | "night") of the GB 3096 period that `now` falls in, in local time."""
        local = now.astimezone(self.tz)
        period = noise.period_of(local)
        if period == "day":
            start = local.replace(hour=noise.DAY_START_HOUR, minute=0, second=0, microsecond=0)
        else:
            start = local.replace(hour=noise.NIGHT_START_HOUR, minute=0, second=0, microsecond=0)
            if local.hour < noise.NIGHT_START_HOUR:
                start -= timedelta(days=1)
        return start.astimezone(UTC), period

    # ------------------------------------------------------------------ recompute one station

    def reference_time(self, record: EntityRecord, kind: str) -> datetime:
        """The moment the indices describe: the station's newest observation, never after the clock.

        Event time, not arrival time: a gateway's backfill or a replayed day gets the AQI of the hour
        its readings belong to, and a station that went quiet keeps describing its last hour.
        """
        now = clock.now()
        inputs = AIR_INPUTS if kind == AIR else WATER_INPUTS if kind == WATER else NOISE_INPUTS
        newest: datetime | None = None
        for attr in inputs:
            for instance in record.attrs.get(self.iri(attr)) or ():
                observed = instance.get("observedAt")
                if isinstance(observed, str):
                    try:
                        moment = clock.parse_iso(observed)
                    except ValueError:
                        continue
                    if newest is None or moment > newest:
                        newest = moment
        return now if newest is None or newest > now else newest

    async def recompute(self, tenant: str, entity_id: str) -> Recomputed:
        record = await self._record(tenant, entity_id)
        kind = self.kind_of(record)
        if kind is None:
            raise BadRequestData(f"{entity_id} is not an {AIR}, {WATER} or {NOISE} entity")
        now = self.reference_time(record, kind)
        out = Recomputed(entity_id, kind)
        condition: bool | None = None
        title = description = ""
        if kind == AIR:
            means = await self._hourly_means(tenant, entity_id, AIR_INPUTS, now)
            out.values = self.air_from_means(means, now)
            if "aqi" in out.values:
                condition = out.values["aqiLevel"] >= self.settings.alert_aqi_level
                title = f"Air pollution: AQI {out.values['aqi']} ({out.values['aqiCategory']})"
                description = (f"Station {entity_id}: hourly AQI {out.values['aqi']}, "
                               f"{out.values['aqiCategory']}; primary pollutant "
                               f"{', '.join(out.values['primaryPollutant']) or '-'} (HJ 633-2012).")
        elif kind == WATER:
            target, body = await self._water_config(tenant, record)
            values = {attr: value_of(record, self.iri(attr)) for attr in WATER_INPUTS}
            out.values = self.water_from_values(values, target, body)
            if out.values:
                condition = not out.values["waterQualityCompliant"]
                title = (f"Water quality class {out.values['waterQualityClass']} "
                         f"worse than target {out.values['waterQualityTarget']}")
                description = (f"Station {entity_id} ({body}): class {out.values['waterQualityClass']} "
                               f"(GB 3838-2002), limited by {', '.join(out.values['waterQualityLimiting'])}; "
                               f"target class {out.values['waterQualityTarget']}.")
        else:
            zone = self._noise_zone(record)
            since, _period = self.noise_period(now)
            samples = await self._instances(tenant, entity_id, list(NOISE_INPUTS), min(since, _hour_floor(now)))
            out.values = self.noise_from_samples(samples, zone, now)
            if out.values:
                condition = not out.values["noiseCompliant"]
                title = (f"Noise over the zone {out.values['noiseZone']} {out.values['noisePeriod']} limit by "
                         f"{out.values['noiseExceedance']} dB")
                if not out.values["noiseExceedance"] and out.values.get("noiseLAmaxExceedance"):
                    title = (f"Night noise peak (LAmax) over the zone {out.values['noiseZone']} limit + 15 dB by "
                             f"{out.values['noiseLAmaxExceedance']} dB")
                description = (f"Station {entity_id}: {out.values['noisePeriod']} Leq "
                               f"{out.values['noiseLeqPeriod']} dB(A) against {out.values['noiseLimit']} dB(A) "
                               f"(GB 3096-2008 zone class {out.values['noiseZone']})"
                               + (f"; night LAmax over the limit + 15 dB by {out.values['noiseLAmaxExceedance']} dB"
                                  if out.values.get("noiseLAmaxExceedance") else "") + ".")
        out.written = await self._write_back(tenant, record, out.values, now)
        if condition is not None:
            out.incident = await self._rule(tenant, record, kind, condition, title, description, now)
        return out

    async def _water_config(self, tenant: str, record: EntityRecord) -> tuple[int, str]:
        target_raw = value_of(record, self.iri("waterTargetClass"))
        body_raw = value_of(record, self.iri("waterBodyType"))
        ref = value_of(record, self.iri("refWaterBody"))
        if (target_raw is None or body_raw is None) and isinstance(ref, str):
            try:
                river = await self._record(tenant, ref)
            except ResourceNotFound:
                river = None
            if river is not None:
                target_raw = target_raw if target_raw is not None else value_of(river, self.iri("waterTargetClass"))
                body_raw = body_raw if body_raw is not None else value_of(river, self.iri("waterBodyType"))
        try:
            target = water.class_level(target_raw) if target_raw is not None else self.target_default
        except ValueError:
            log.warning("%s: waterTargetClass %r is not a class; using %s", record.id, target_raw,
                        water.class_name(self.target_default))
            target = self.target_default
        target = min(target, 5)
        body = body_raw if body_raw in water.WATER_BODIES else "river"
        return target, str(body)

    def _noise_zone(self, record: EntityRecord) -> str:
        raw = value_of(record, self.iri("noiseZoneClass"))
        if raw is None:
            return self.zone_default
        try:
            return noise.zone_class(raw)
        except ValueError:
            log.warning("%s: noiseZoneClass %r is not a zone class; using %s", record.id, raw, self.zone_default)
            return self.zone_default

    async def _write_back(self, tenant: str, record: EntityRecord, values: Mapping[str, Any],
                          now: datetime) -> list[str]:
        changed = {k: v for k, v in values.items() if value_of(record, self.iri(k)) != v}
        if not changed:
            return []
        stamp = clock.iso(now)
        body = {k: {"type": "Property", "value": v, "observedAt": stamp} for k, v in changed.items()}
        try:
            await self.hub.merge_entity(tenant, record.id, body, self.ctx)
        except ResourceNotFound:
            return []  # deleted meanwhile
        return sorted(changed)

    # ------------------------------------------------------------------ rules and episodes

    async def _rule(self, tenant: str, record: EntityRecord, kind: str, condition: bool, title: str,
                    description: str, now: datetime) -> dict[str, Any] | None:
        category = CATEGORY[kind]
        key = {"tenant": tenant, "entity_id": record.id, "category": category}
        dedup = f"{category}:{record.id}:{clock.iso(now)}"
        opened = False
        async with self.hub.store.read() as conn:  # most runs change nothing: no write transaction for them
            seen = (await conn.execute(select(episodes.c.active).where(
                episodes.c.tenant == tenant, episodes.c.entity_id == record.id,
                episodes.c.category == category))).first()
        if (bool(seen.active) if seen is not None else False) == condition:
            return None
        async with self.hub.store.write() as conn:
            row = (await conn.execute(select(episodes.c.active).where(
                episodes.c.tenant == tenant, episodes.c.entity_id == record.id,
                episodes.c.category == category))).first()
            if condition and row is None:
                stmt = (pg_insert if conn.dialect.name == "postgresql" else sqlite_insert)(episodes)
                result = await conn.execute(stmt.values(**key, active=1, dedup_key=dedup, since=now, updated_at=now)
                                            .on_conflict_do_nothing())
                opened = bool(result.rowcount)  # 0: another worker opened it first
            elif condition and row is not None and not row.active:
                result = await conn.execute(update(episodes).where(
                    episodes.c.tenant == tenant, episodes.c.entity_id == record.id,
                    episodes.c.category == category, episodes.c.active == 0)
                    .values(active=1, dedup_key=dedup, since=now, updated_at=now))
                opened = bool(result.rowcount)
            elif not condition and row is not None and row.active:
                await conn.execute(update(episodes).where(
                    episodes.c.tenant == tenant, episodes.c.entity_id == record.id,
                    episodes.c.category == category).values(active=0, updated_at=now))
        if not opened:
            return None
        location = value_of(record, self.iri("location"))
        event = {"tenant": tenant, "source": "environment", "category": category, "level": "general",
                 "title": title, "description": description,
                 "location": location if isinstance(location, dict) and location.get("type") == "Point" else None,
                 "entityId": record.id, "dedupKey": dedup, "district": value_of(record, self.iri("district"))}
        await self.bus.publish(TOPIC_INCIDENT, event)
        return event

    async def episodes_of(self, tenant: str, entity_id: str) -> list[dict[str, Any]]:
        async with self.hub.store.read() as conn:
            rows = await conn.execute(select(episodes).where(episodes.c.tenant == tenant,
                                                             episodes.c.entity_id == entity_id))
            return [{"category": r.category, "active": bool(r.active), "dedupKey": r.dedup_key,
                     "since": clock.iso(clock.as_utc(r.since))} for r in rows]

    # ------------------------------------------------------------------ districts

    async def entities_of(self, tenant: str, type_name: str) -> list[EntityRecord]:
        found: list[EntityRecord] = []
        offset = 0
        while True:
            page, _ = await self.hub.query(tenant, EntityQuery(types=[self.iri(type_name)], limit=1000,
                                                               offset=offset))
            found.extend(page)
            if len(page) < 1000:
                return found
            offset += 1000

    async def publish_districts(self, tenant: str) -> list[dict[str, Any]]:
        """Recompute the district AQIs from the stations' hourly AQIs and publish the changed ones."""
        stations = await self.entities_of(tenant, AIR)
        groups: dict[str, list[EntityRecord]] = {}
        for record in stations:
            district = value_of(record, self.iri("district"))
            aqi = value_of(record, self.iri("aqi"))
            if isinstance(district, str) and district and isinstance(aqi, int):
                groups.setdefault(district, []).append(record)
        if not groups:
            return []
        refs = await self._district_entities(tenant)
        current = {r.id: r for r in await self.entities_of(tenant, DISTRICT_INDEX)}
        bodies: list[dict[str, Any]] = []
        summaries: list[dict[str, Any]] = []
        stamp = clock.iso(clock.now())
        for district, members in sorted(groups.items()):
            aqis = [int(value_of(r, self.iri("aqi"))) for r in members]
            worst = max(members, key=lambda r: int(value_of(r, self.iri("aqi"))))
            mean = math.ceil(round(sum(aqis) / len(aqis), 9))
            cat = aqi_cn.category(mean)
            points = [loc["coordinates"] for r in members
                      if isinstance(loc := value_of(r, self.iri("location")), dict) and loc.get("type") == "Point"]
            summary: dict[str, Any] = {
                "id": district_index_id(district), "district": district, "aqi": mean, "aqiMean": mean,
                "aqiMax": max(aqis), "aqiLevel": cat.level, "aqiCategory": cat.name, "aqiColor": cat.color,
                "stationCount": len(members), "worstStation": worst.id}
            summaries.append(summary)
            existing = current.get(summary["id"])
            if existing is not None and all(value_of(existing, self.iri(k)) == summary[k]
                                            for k in ("aqi", "aqiMax", "stationCount", "worstStation")):
                continue
            body: dict[str, Any] = {"id": summary["id"], "type": DISTRICT_INDEX,
                                    "district": {"type": "Property", "value": district}}
            for k in ("aqi", "aqiMean", "aqiMax", "aqiLevel", "aqiCategory", "aqiColor", "stationCount"):
                body[k] = {"type": "Property", "value": summary[k], "observedAt": stamp}
            body["worstStation"] = {"type": "Relationship", "object": worst.id}
            if points:
                body["location"] = {"type": "GeoProperty", "value": {"type": "Point", "coordinates": [
                    round(sum(p[0] for p in points) / len(points), 6),
                    round(sum(p[1] for p in points) / len(points), 6)]}}
            if district in refs:
                body["refDistrict"] = {"type": "Relationship", "object": refs[district]}
            bodies.append(body)
        if bodies:
            result = await self.hub.batch_write(tenant, bodies, self.ctx, "upsert", {"update"})
            for error in result.errors:
                log.warning("district AQI not published: %s", error)
        return summaries

    async def _district_entities(self, tenant: str) -> dict[str, str]:
        """District name → District entity id (the simulator's `District` entities)."""
        refs: dict[str, str] = {}
        for record in await self.entities_of(tenant, "District"):
            name = value_of(record, self.iri("name"))
            if isinstance(name, str):
                refs[name] = record.id
        return refs

    # ------------------------------------------------------------------ reads for the API

    def station_view(self, record: EntityRecord, kind: str) -> dict[str, Any]:
        names = {AIR: (*AIR_INPUTS, *AIR_OUTPUTS), WATER: (*WATER_INPUTS, *WATER_OUTPUTS,
                                                           "waterTargetClass", "waterBodyType"),
                 NOISE: (*NOISE_INPUTS, *NOISE_OUTPUTS, "noiseZoneClass")}[kind]
        view: dict[str, Any] = {"id": record.id, "type": kind,
                                "district": value_of(record, self.iri("district")),
                                "location": value_of(record, self.iri("location"))}
        for name in names:
            value = value_of(record, self.iri(name))
            if value is not None:
                view[name] = value
        return view

    async def stations(self, tenant: str, kind: str, district: str | None = None) -> list[dict[str, Any]]:
        records = await self.entities_of(tenant, kind)
        views = [self.station_view(r, kind) for r in records]
        if district is not None:
            views = [v for v in views if v["district"] == district]
        return sorted(views, key=lambda v: v["id"])

    async def station(self, tenant: str, entity_id: str) -> dict[str, Any]:
        try:
            record = await self._record(tenant, entity_id)
        except ResourceNotFound:
            raise ResourceNotFound(f"station {entity_id} not found") from None
        kind = self.kind_of(record)
        if kind is None:
            raise ResourceNotFound(f"{entity_id} is not an environment station")
        view = self.station_view(record, kind)
        view["episodes"] = await self.episodes_of(tenant, entity_id)
        return view

    async def districts(self, tenant: str, district: str | None = None) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for record in await self.entities_of(tenant, DISTRICT_INDEX):
            item = {k: value_of(record, self.iri(k)) for k in ("district", "aqi", "aqiMean", "aqiMax", "aqiLevel",
                                                                "aqiCategory", "aqiColor", "stationCount",
                                                                "worstStation")}
            if district is None or item["district"] == district:
                out.append({"id": record.id, **item})
        return sorted(out, key=lambda d: str(d["district"]))


def district_index_id(district: str) -> str:
    return f"urn:ngsi-ld:{DISTRICT_INDEX}:district-{urllib.parse.quote(district, safe='')}"
