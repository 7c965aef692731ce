"""The 15-minute forecast as a service (拥堵预测): trained on the index history, retrained on a schedule,
versioned; forecasts per segment, district and the city; diversion advice on the road grid.

The history stores each segment's index (TPI), not its speed; inside one road class's bands the index is
a strictly decreasing piecewise-linear function of speed, so the speed series is recovered exactly,
except that any speed at or above twice the free-flow bound reads as that bound (index 0): a clipped
speed is still 畅通, so levels are unaffected.

Models live in the process (one per tenant, with the versions trained before it listed); a restart
retrains at the first scheduled round. Without a model (too little history) a forecast is persistence
(the speed now) and says so in its `model`.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from shapely.geometry import mapping
from shapely.ops import linemerge
from sqlalchemy import distinct, func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from cityos.core import clock
from cityos.core.errors import BadRequestData, Conflict, ResourceNotFound
from cityos.core.tasks import in_daemon_thread
from cityos.security.policy import Principal
from cityos.traffic.congestion.forecast import LAGS, MODERATE, SLOT_S, ForecastModel, diversions, level_at, train
from cityos.traffic.congestion.grid import city_sections, road_graph
from cityos.traffic.congestion.models import history, segments
from cityos.traffic.congestion.service import check, indexed
from cityos.traffic.congestion.tpi import SPEED_BANDS, SegmentIndex, segment_tpi, weighted_tpi

log = logging.getLogger("cityos.traffic.congestion")

HORIZON_STEPS = 3              # 3 × 5 min = 15 min
TRAIN_DAYS = 14
MIN_SAMPLES = LAGS + HORIZON_STEPS + 1
RETRAIN_SECONDS = 3600.0
KEPT_VERSIONS = 10


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

    def describe(self) -> dict[str, Any]:
        return {"version": self.model.version, "kind": "ridge", "trainedAt": clock.iso(self.trained_at),
                "trainedFrom": clock.iso(datetime.fromtimestamp(self.model.trained_from, clock.now().tzinfo)),
                "trainedTo": clock.iso(datetime.fromtimestamp(self.model.trained_to, clock.now().tzinfo)),
                "segments": self.segments, "samples": self.samples, "horizonMinutes": HORIZON_STEPS * SLOT_S // 60}


PERSISTENCE = {"version": "persistence", "kind": "persistence", "trainedAt": None,
               "note": "尚无训练模型，按当前车速外推 no model trained yet: the speed now is the forecast"}


def fit(rows: Iterable[Any], classes: dict[str, str]
        ) -> tuple[ForecastModel, dict[str, tuple[list[float], list[float]]]] | None:
    """The model from history rows (segment, at, index); None when no segment has enough readings."""
    points: dict[str, list[tuple[int, float]]] = {}
    for key, at, tpi in rows:
        if key in classes:
            points.setdefault(key, []).append((slot(at), speed_of(tpi, classes[key])))
    series = {key: regular(p) for key, p in points.items()}
    series = {key: s for key, s in series.items() if len(s[0]) >= MIN_SAMPLES}
    if not series:
        return None
    return train(series, horizon_steps=HORIZON_STEPS), series


class ForecastService:
    def __init__(self, engine: AsyncEngine, city_seed: int) -> None:
        self.engine = engine
        self.city_seed = city_seed
        self.models: dict[str, Trained] = {}
        self.versions: dict[str, list[dict[str, Any]]] = {}

    # ------------------------------------------------------------------ training

    async def retrain(self, principal: Principal | None, tenant: str, days: object = TRAIN_DAYS) -> dict[str, Any]:
        check(principal, "congestion.train", tenant)
        if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= 90:
            raise BadRequestData("days must be an integer between 1 and 90")
        trained = await self._train(tenant, days)
        if trained is None:
            raise Conflict(f"not enough history to train: each segment needs {MIN_SAMPLES} readings "
                           f"{SLOT_S // 60} minutes apart")
        return {**trained.describe(), "previous": self.versions.get(tenant, [])[:-1]}

    async def retrain_all(self) -> int:
        """The scheduled round: retrain every tenant that has segment history; returns how many trained."""
        async with self.engine.connect() as conn:
            tenants = (await conn.execute(select(distinct(history.c.tenant))
                                          .where(history.c.scope == "segment"))).scalars().all()
        done = 0
        for tenant in tenants:
            if await self._train(tenant, TRAIN_DAYS) is not None:
                done += 1
        return done

    async def _train(self, tenant: str, days: int) -> Trained | None:
        since = clock.now() - timedelta(days=days)
        async with self.engine.connect() as conn:
            classes = dict((await conn.execute(select(segments.c.id, segments.c.road_class)
                                               .where(segments.c.tenant == tenant))).all())
            rows = (await conn.execute(select(history.c.key, history.c.at, history.c.tpi).where(
                history.c.tenant == tenant, history.c.scope == "segment", history.c.at >= since))).all()
        # Fitting two weeks of a city's segments takes seconds of CPU: off the event loop, in a thread that
        # a stopping process does not wait for.
        fitted = await in_daemon_thread(fit, rows, classes)
        if fitted is None:
            return None
        model, series = fitted
        trained = Trained(model, clock.now(), len(series), sum(len(t) for t, _ in series.values()))
        self.models[tenant] = trained
        kept = self.versions.setdefault(tenant, [])
        kept.append(trained.describe())
        del kept[:-KEPT_VERSIONS]
        log.info("congestion forecast for %s retrained: %s", tenant, model.version)
        return trained

    def model_of(self, tenant: str) -> dict[str, Any]:
        trained = self.models.get(tenant)
        return trained.describe() if trained is not None else dict(PERSISTENCE)

    # ------------------------------------------------------------------ forecasting

    async def _segment_forecasts(self, tenant: str, ids: set[str] | None = None) -> dict[str, dict[str, Any]]:
        """Forecast of every measured segment (or of `ids`): speed and index now and in 15 minutes."""
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
        points: dict[str, list[tuple[int, float]]] = {}
        by_id = {r.id: r for r in rows}
        for key, at, tpi in recent:
            if key in by_id:
                points.setdefault(key, []).append((slot(at), speed_of(tpi, by_id[key].road_class)))
        trained = self.models.get(tenant)
        out: dict[str, dict[str, Any]] = {}
        for row in rows:
            now_speed = float(row.speed_kmh)
            _times, values = regular(points.get(row.id, []))
            if trained is not None and values:
                values = [values[0]] * max(0, LAGS - len(values)) + values
                values[-1] = now_speed  # the exact latest speed, not its clipped inverse
                ahead = trained.model.predict(row.id, values, len(values) - 1, float(slot(row.observed_at) * SLOT_S))
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
        forecasts = await self._segment_forecasts(tenant, {segment} if segment else None)
        if district:
            forecasts = {k: f for k, f in forecasts.items() if f["row"].district == district}
        scope, key = ("segment", segment) if segment else ("district", district) if district else ("city", "")
        now = max((clock.as_utc(f["row"].observed_at) for f in forecasts.values()), default=None)
        return {"scope": scope, "key": key, "horizonMinutes": HORIZON_STEPS * SLOT_S // 60,
                "observedAt": clock.iso(now) if now else None,
                "forecastFor": clock.iso(now + timedelta(seconds=HORIZON_STEPS * SLOT_S)) if now else None,
                "segments": len(forecasts), "current": aggregate(forecasts.values(), ahead=False),
                "forecast": aggregate(forecasts.values(), ahead=True), "model": self.model_of(tenant)}

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
        forecasts = await self._segment_forecasts(tenant)
        mine = forecasts.get(segment)
        base: dict[str, Any] = {"segment": segment, "name": row.name, "model": self.model_of(tenant),
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
