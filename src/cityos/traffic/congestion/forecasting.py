"""The 15-minute forecast as a service (拥堵预测): trained on the index history, retrained on a schedule,
versioned; forecasts per segment, district and the city; diversion advice on the road grid.

The history stores each segment's index (TPI), not its speed; inside one road class's bands the index is
a strictly decreasing piecewise-linear function of speed, so the speed series is recovered exactly,
except that any speed at or above twice the free-flow bound reads as that bound (index 0): a clipped
speed is still 畅通, so levels are unaffected.

Trained versions are rows of `cong_forecast_models` (the last `KEPT_VERSIONS` per tenant), their
parameters JSON (`ForecastModel.to_params`): every API worker forecasts with the tenant's newest version,
loaded once per version and kept while it is the newest, and a restart forecasts with it at once. Every
worker's hourly round skips a tenant whose newest version is younger than the round. Without a model (too
little history) a forecast is persistence (the speed now) and says so in its `model`.

The weather feature is the city's rain intensity: the mean `precipitation` (mm/h) of the tenant's
`WaterObserved` gauges per 5-minute slot, read from the hub's attribute history (the hub is the city's shared
state; read-only here). A slot without a reading holds the last one before it; a tenant without gauges
reads as dry, and the model's wet regimes are then fitted on no rows and fall back to the pooled fit.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import itertools
import logging
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from shapely.geometry import mapping
from shapely.ops import linemerge
from sqlalchemy import delete, func, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from cityos.core import clock
from cityos.core.db import write_transaction
from cityos.core.errors import BadRequestData, Conflict, ResourceNotFound
from cityos.core.tasks import in_daemon_thread
from cityos.hub.jsonld import DEFAULT_VOCAB
from cityos.hub.temporal.instances import instances_of_type
from cityos.security.policy import Principal
from cityos.traffic.congestion.forecast import (
    LAGS,
    MODERATE,
    SLOT_S,
    ForecastModel,
    ModelMismatch,
    diversions,
    level_at,
    train,
)
from cityos.traffic.congestion.grid import city_sections, road_graph
from cityos.traffic.congestion.models import forecast_models, history, segments
from cityos.traffic.congestion.service import check, indexed
from cityos.traffic.congestion.tpi import SPEED_BANDS, SegmentIndex, segment_tpi, weighted_tpi

log = logging.getLogger("cityos.traffic.congestion")

HORIZON_STEPS = 3              # 3 × 5 min = 15 min
TRAIN_DAYS = 14
MIN_SAMPLES = LAGS + HORIZON_STEPS + 1
RETRAIN_SECONDS = 3600.0
KEPT_VERSIONS = 10
RAIN_GAUGE_TYPE = "WaterObserved"   # the river gauges' entities (the IoT profile `water-level`)
RAIN_ATTRIBUTE = "precipitation"    # mm/h
RAIN_HOLD_SLOTS = 12                # a gauge reading stands for the hour after it at most


def speed_of(tpi: float, road_class: str) -> float:
    """The speed (km/h) whose index is `tpi` on `road_class` (the inverse of `segment_tpi` below 2× free flow)."""
    free, basic, light, moderate = SPEED_BANDS[road_class]
    knots = [(2 * free, 0.0), (free, 2.0), (basic, 4.0), (light, 6.0), (moderate, 8.0), (0.0, 10.0)]
    tpi = min(10.0, max(0.0, tpi))
    for (high_speed, low_index), (low_speed, high_index) in itertools.pairwise(knots):
        if tpi <= high_index:
            return round(high_speed - (tpi - low_index) / (high_index - low_index) * (high_speed - low_speed), 2)
    return 0.0


def slot(at: datetime) -> int:
    return int(clock.as_utc(at).timestamp() // SLOT_S)


def regular(points: Iterable[tuple[int, float]]) -> tuple[list[float], list[float]]:
    """(times, values) every slot from the first to the last, a missing slot holding the value before it."""
    by_slot = dict(sorted(points))
    if not by_slot:
        return [], []
    times, values, last = [], [], 0.0
    for s in range(min(by_slot), max(by_slot) + 1):
        last = by_slot.get(s, last)
        times.append(float(s * SLOT_S))
        values.append(last)
    return times, values


@dataclass
class Trained:
    model: ForecastModel
    trained_at: datetime
    segments: int
    samples: int
    number: int = 0  # the version's number in `cong_forecast_models` (0 before it is stored)

    def describe(self) -> dict[str, Any]:
        return describe(self.model.version, self.trained_at, epoch(self.model.trained_from),
                        epoch(self.model.trained_to), self.segments, self.samples)


def epoch(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, clock.now().tzinfo)


def describe(version: str, trained_at: datetime, trained_from: datetime, trained_to: datetime, segment_count: int,
             samples: int) -> dict[str, Any]:
    return {"version": version, "kind": "ridge", "trainedAt": clock.iso(trained_at),
            "trainedFrom": clock.iso(trained_from), "trainedTo": clock.iso(trained_to),
            "segments": segment_count, "samples": samples, "horizonMinutes": HORIZON_STEPS * SLOT_S // 60}


def describe_row(row: Any) -> dict[str, Any]:
    return describe(row.version, clock.as_utc(row.created_at), clock.as_utc(row.trained_from),
                    clock.as_utc(row.trained_to), row.segments, row.samples)


PERSISTENCE = {"version": "persistence", "kind": "persistence", "trainedAt": None,
               "note": "尚无训练模型，按当前车速外推 no model trained yet: the speed now is the forecast"}


class RainBySlot:
    """The city's rain intensity (mm/h) per slot: the mean of the gauges' readings in the slot, or of the last
    slot with readings within `RAIN_HOLD_SLOTS` before it; 0 without (gauges silent that long say nothing)."""

    def __init__(self, readings: Iterable[tuple[datetime, float]]) -> None:
        sums: dict[int, list[float]] = {}
        for at, value in readings:
            sums.setdefault(slot(at), []).append(value)
        self.slots = sorted(sums)
        self.means = [sum(sums[s]) / len(sums[s]) for s in self.slots]

    def __call__(self, ts: float) -> float:
        at = int(ts // SLOT_S)
        index = bisect.bisect_right(self.slots, at) - 1
        return self.means[index] if index >= 0 and at - self.slots[index] <= RAIN_HOLD_SLOTS else 0.0


async def rain_readings(conn: AsyncConnection, tenant: str, since: datetime,
                        expand: Callable[[str], str]) -> list[tuple[datetime, float]]:
    """The gauges' precipitation readings since `since` (numbers only; deleted instances left out)."""
    rows = await instances_of_type(conn, tenant, expand(RAIN_GAUGE_TYPE), [expand(RAIN_ATTRIBUTE)], since=since)
    out = []
    for _entity, _attr, ts, instance in rows:
        value = instance.get("value") if isinstance(instance, dict) else None
        if isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value <= 500:
            out.append((clock.as_utc(ts), float(value)))
    return out


def core_term(term: str) -> str:
    """A term the NGSI-LD core context does not define: it expands into the default vocabulary."""
    return DEFAULT_VOCAB + term


def fit(rows: Iterable[Any], classes: dict[str, str], rain: RainBySlot | None = None
        ) -> tuple[ForecastModel, dict[str, tuple[list[float], list[float]]]] | None:
    """The model from history rows (segment, at, index) and the rain by slot; None when no segment has enough
    readings."""
    points: dict[str, list[tuple[int, float]]] = {}
    for key, at, tpi in rows:
        if key in classes:
            points.setdefault(key, []).append((slot(at), speed_of(tpi, classes[key])))
    series = {key: regular(p) for key, p in points.items()}
    series = {key: s for key, s in series.items() if len(s[0]) >= MIN_SAMPLES}
    if not series:
        return None
    return train(series, HORIZON_STEPS, rain if rain is not None else RainBySlot(())), series


class ForecastService:
    def __init__(self, engine: AsyncEngine, city_seed: int, write_lock: asyncio.Lock | None = None,
                 expand: Callable[[str], str] = core_term) -> None:
        self.engine = engine
        self.city_seed = city_seed
        self.expand = expand  # term → IRI, for the hub's history of the rain gauges
        self._lock = write_lock or asyncio.Lock()
        # Per tenant: the newest stored version's identity (number, version, trained at) and its model (None
        # when this code cannot use it), loaded from the table once per version.
        self._loaded: dict[str, tuple[tuple[int, str, datetime], Trained | None]] = {}

    @contextlib.asynccontextmanager
    async def _write(self) -> AsyncIterator[AsyncConnection]:
        async with write_transaction(self.engine, self._lock) as conn:
            yield conn

    # ------------------------------------------------------------------ training

    async def retrain(self, principal: Principal | None, tenant: str, days: object = TRAIN_DAYS) -> dict[str, Any]:
        check(principal, "congestion.train", tenant)
        if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= 90:
            raise BadRequestData("days must be an integer between 1 and 90")
        trained = await self._train(tenant, days)
        if trained is None:
            raise Conflict(f"not enough history to train: each segment needs {MIN_SAMPLES} readings "
                           f"{SLOT_S // 60} minutes apart")
        async with self.engine.connect() as conn:
            older = (await conn.execute(select(forecast_models.c.version, forecast_models.c.created_at,
                                               forecast_models.c.trained_from, forecast_models.c.trained_to,
                                               forecast_models.c.segments, forecast_models.c.samples)
                                        .where(forecast_models.c.tenant == tenant,
                                               forecast_models.c.number < trained.number)
                                        .order_by(forecast_models.c.number))).all()
        return {**trained.describe(), "previous": [describe_row(r) for r in older]}

    async def retrain_all(self) -> int:
        """The scheduled round: retrain every tenant that has segment history and no version trained within
        the round (another worker's, or an operator's); returns how many trained."""
        fresh = clock.now() - timedelta(seconds=RETRAIN_SECONDS * 0.9)
        async with self.engine.connect() as conn:
            tenants = (await conn.execute(select(history.c.tenant).distinct()
                                          .where(history.c.scope == "segment"))).scalars().all()
            recent = set((await conn.execute(select(forecast_models.c.tenant).distinct()
                                             .where(forecast_models.c.created_at >= fresh))).scalars().all())
        done = 0
        for tenant in tenants:
            if tenant not in recent and await self._train(tenant, TRAIN_DAYS) is not None:
                done += 1
        return done

    async def _train(self, tenant: str, days: int) -> Trained | None:
        since = clock.now() - timedelta(days=days)
        async with self.engine.connect() as conn:
            classes = dict((await conn.execute(select(segments.c.id, segments.c.road_class)
                                               .where(segments.c.tenant == tenant))).all())
            rows = (await conn.execute(select(history.c.key, history.c.at, history.c.tpi).where(
                history.c.tenant == tenant, history.c.scope == "segment", history.c.at >= since))).all()
            rain = RainBySlot(await rain_readings(conn, tenant, since, self.expand))
        # Fitting two weeks of a city's segments takes seconds of CPU: off the event loop, in a thread that
        # a stopping process does not wait for.
        fitted = await in_daemon_thread(fit, rows, classes, rain)
        if fitted is None:
            return None
        model, series = fitted
        trained = Trained(model, clock.now(), len(series), sum(len(t) for t, _ in series.values()))
        params = await asyncio.to_thread(model.to_params)
        for attempt in range(3):  # another worker storing a version at the same moment takes the number first
            try:
                trained.number = await self._store(tenant, trained, params)
                break
            except IntegrityError:
                if attempt == 2:
                    raise
        log.info("congestion forecast for %s retrained: %s (version %d)", tenant, model.version, trained.number)
        return trained

    async def _store(self, tenant: str, trained: Trained, params: dict[str, Any]) -> int:
        """Insert the version as the tenant's next number and drop the ones beyond `KEPT_VERSIONS`."""
        table = forecast_models
        async with self._write() as conn:
            newest = (await conn.execute(select(func.max(table.c.number))
                                         .where(table.c.tenant == tenant))).scalar_one_or_none() or 0
            number = int(newest) + 1
            await conn.execute(insert(table).values(
                tenant=tenant, number=number, version=trained.model.version, created_at=trained.trained_at,
                trained_from=epoch(trained.model.trained_from), trained_to=epoch(trained.model.trained_to),
                segments=trained.segments, samples=trained.samples, metrics=trained.model.metrics, params=params))
            await conn.execute(delete(table).where(table.c.tenant == tenant,
                                                   table.c.number <= number - KEPT_VERSIONS))
        return number

    async def latest(self, tenant: str) -> Trained | None:
        """The tenant's newest stored version (None without one, or when this code cannot use it)."""
        table = forecast_models
        async with self.engine.connect() as conn:
            head = (await conn.execute(select(table.c.number, table.c.version, table.c.created_at)
                                       .where(table.c.tenant == tenant)
                                       .order_by(table.c.number.desc()).limit(1))).first()
            if head is None:
                self._loaded.pop(tenant, None)
                return None
            identity = (int(head.number), str(head.version), clock.as_utc(head.created_at))
            cached = self._loaded.get(tenant)
            if cached is not None and cached[0] == identity:
                return cached[1]
            row = (await conn.execute(select(table).where(table.c.tenant == tenant,
                                                          table.c.number == head.number))).first()
        if row is None:  # pruned between the two reads: the next call reads the newer head
            return None
        trained: Trained | None = None
        try:
            model = await asyncio.to_thread(ForecastModel.from_params, row.params)
            trained = Trained(model, clock.as_utc(row.created_at), row.segments, row.samples, int(row.number))
        except ModelMismatch as exc:  # said once per version; forecasts are persistence until the next one
            log.warning("congestion forecast version %d of %r not usable: %s", row.number, tenant, exc)
        self._loaded[tenant] = (identity, trained)
        return trained

    @staticmethod
    def model_of(trained: Trained | None) -> dict[str, Any]:
        return trained.describe() if trained is not None else dict(PERSISTENCE)

    # ------------------------------------------------------------------ forecasting

    async def _segment_forecasts(self, tenant: str, trained: Trained | None,
                                 ids: set[str] | None = None) -> dict[str, dict[str, Any]]:
        """Forecast of every measured segment (or of `ids`) by `trained` (persistence without it): speed and
        index now and in 15 minutes."""
        async with self.engine.connect() as conn:
            query = select(segments).where(segments.c.tenant == tenant, segments.c.tpi.is_not(None))
            if ids is not None:
                query = query.where(segments.c.id.in_(sorted(ids)))
            rows = (await conn.execute(query)).all()
            if not rows:
                return {}
            latest = max(clock.as_utc(r.observed_at) for r in rows)
            since = latest - timedelta(seconds=(LAGS + 2) * SLOT_S)
            recent = (await conn.execute(select(history.c.key, history.c.at, history.c.tpi).where(
                history.c.tenant == tenant, history.c.scope == "segment", history.c.at >= since))).all()
            # The last hour's gauge readings: the newest one is the rain now.
            rain = RainBySlot(await rain_readings(conn, tenant, latest - timedelta(hours=1), self.expand))
        points: dict[str, list[tuple[int, float]]] = {}
        by_id = {r.id: r for r in rows}
        for key, at, tpi in recent:
            if key in by_id:
                points.setdefault(key, []).append((slot(at), speed_of(tpi, by_id[key].road_class)))
        out: dict[str, dict[str, Any]] = {}
        for row in rows:
            now_speed = float(row.speed_kmh)
            _times, values = regular(points.get(row.id, []))
            if trained is not None and values:
                values = [values[0]] * max(0, LAGS - len(values)) + values
                values[-1] = now_speed  # the exact latest speed, not its clipped inverse
                at = float(slot(row.observed_at) * SLOT_S)
                ahead = trained.model.predict(row.id, values, len(values) - 1, at, rain(at))
            else:
                ahead = now_speed
            ahead = round(min(200.0, max(0.0, ahead)), 1)
            out[row.id] = {"row": row, "speed": now_speed, "tpi": float(row.tpi),
                           "aheadSpeed": ahead, "aheadTpi": segment_tpi(ahead, row.road_class),
                           "vkt": row.length_m / 1000 * (row.flow_vph or 0.0)}
        return out

    async def forecast(self, principal: Principal | None, tenant: str, segment: str | None = None,
                       district: str | None = None) -> dict[str, Any]:
        check(principal, "congestion.forecast", tenant)
        if segment and district:
            raise BadRequestData("give segment or district, not both")
        async with self.engine.connect() as conn:
            if segment:
                known = (await conn.execute(select(segments.c.id).where(
                    segments.c.tenant == tenant, segments.c.id == segment))).first()
                if known is None:
                    raise ResourceNotFound(f"no segment {segment!r}")
            if district:
                count = (await conn.execute(select(func.count()).select_from(segments).where(
                    segments.c.tenant == tenant, segments.c.district == district))).scalar_one()
                if not count:
                    raise ResourceNotFound(f"no district {district!r}")
        trained = await self.latest(tenant)
        forecasts = await self._segment_forecasts(tenant, trained, {segment} if segment else None)
        if district:
            forecasts = {k: f for k, f in forecasts.items() if f["row"].district == district}
        scope, key = ("segment", segment) if segment else ("district", district) if district else ("city", "")
        now = max((clock.as_utc(f["row"].observed_at) for f in forecasts.values()), default=None)
        return {"scope": scope, "key": key, "horizonMinutes": HORIZON_STEPS * SLOT_S // 60,
                "observedAt": clock.iso(now) if now else None,
                "forecastFor": clock.iso(now + timedelta(seconds=HORIZON_STEPS * SLOT_S)) if now else None,
                "segments": len(forecasts), "current": aggregate(forecasts.values(), ahead=False),
                "forecast": aggregate(forecasts.values(), ahead=True), "model": self.model_of(trained)}

    async def diversion(self, principal: Principal | None, tenant: str, segment: str) -> dict[str, Any]:
        """For a segment forecast at 中度拥堵 or worse: routes between its two ends around every segment
        forecast that congested, on the city's road grid (up to two)."""
        check(principal, "congestion.forecast", tenant)
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(segments).where(segments.c.tenant == tenant,
                                                             segments.c.id == segment))).first()
        if row is None:
            raise ResourceNotFound(f"no segment {segment!r}")
        grid = {s.id: s for s in city_sections(self.city_seed)}
        trained = await self.latest(tenant)
        forecasts = await self._segment_forecasts(tenant, trained)
        mine = forecasts.get(segment)
        base: dict[str, Any] = {"segment": segment, "name": row.name, "model": self.model_of(trained),
                                "forecast": aggregate([mine], ahead=True) if mine else indexed(None)}
        level = level_at(mine["aheadSpeed"], row.road_class) if mine else None
        if level is None or level < MODERATE:
            return {**base, "needed": False, "routes": [],
                    "note": "预测未达中度拥堵，无需绕行 not forecast at moderate congestion or worse"}
        if segment not in grid:
            return {**base, "needed": True, "routes": [],
                    "note": "该路段不在路网图中 the segment is not on the city's road graph"}
        levels = {k: level_at(f["aheadSpeed"], f["row"].road_class) for k, f in forecasts.items()}
        section = grid[segment]
        routes = diversions(road_graph(grid), levels, section.start, section.end)
        for route in routes:
            ids = [str(s) for s in route["segments"]]  # type: ignore[attr-defined]
            route["geometry"] = mapping(linemerge([grid[s].line for s in ids]))
            names: list[str] = []
            for s in ids:
                road = grid[s].name.rsplit(" ", 1)[0]
                if not names or names[-1] != road:
                    names.append(road)
            route["via"] = names
        return {**base, "needed": True, "routes": routes, "freeFlowMinutes": round(section.minutes, 1),
                "note": "" if routes else "路网中无可行绕行路线 no way round on the network"}


def aggregate(items: Iterable[dict[str, Any]], ahead: bool) -> dict[str, Any]:
    """VKT-weighted index (as the city's and a district's) and mean speed of some segments' forecasts."""
    listed = list(items)
    tpi = weighted_tpi(SegmentIndex(f["row"].id, f["row"].district, f["aheadTpi" if ahead else "tpi"], f["vkt"])
                       for f in listed)
    weight = sum(f["vkt"] for f in listed)
    speeds = [f["aheadSpeed" if ahead else "speed"] for f in listed]
    if not listed:
        speed = None
    elif weight > 0:
        speed = round(sum(f["aheadSpeed" if ahead else "speed"] * f["vkt"] for f in listed) / weight, 1)
    else:
        speed = round(sum(speeds) / len(speeds), 1)
    return {**indexed(tpi), "speedKmh": speed}
