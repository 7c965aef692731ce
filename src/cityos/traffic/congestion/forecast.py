"""15-minute congestion forecast per road segment (拥堵 15 分钟预测), and diversion advice.

The forecast of a segment's speed `horizon` steps ahead is a linear model over features every segment shares:

- the last speeds (now and three earlier readings) and their change,
- the segment's historical average speed for the target slot and for the current slot (same time of
  day, weekday or weekend, from the training history), so the model knows the daily pattern and how
  far today is from it,
- the time of day of the target (sine and cosine),
- the weather: the city's rain intensity now (mm/h, as its gauges publish it in `WaterObserved`
  `precipitation`), as a saturating wetness 0…1, alone and times the target slot's average speed.

It keeps one set of coefficients per regime: the target's time (weekday peak, other weekday time, weekend)
times dry or wet now. Each set is fitted by least absolute deviations (iteratively reweighted least squares
from the ridge solution, the ridge penalty kept): what follows a lane blockage is two-valued (still blocked,
or cleared), and the mean of the two — what least squares gives — is a speed that neither happens, where the
median is the likelier one. A regime with too few training rows uses the fit of all rows.

A speed now below `HOLD_BELOW_PROFILE` of the slot's average is forecast to hold (persistence): that deep a
drop is a blockage far more often than noise, and a blockage lasts 15–90 minutes, where the regression,
having seen few of them, pulls the forecast back towards the average. (Fitting the
logarithm of speed instead was tried on the tuning month: better while an incident lasts, worse overall and
at peaks; see bench/RESULTS.md.)

Its two baselines are computed from the same history: persistence (the speed now) and the historical
average for the target's slot. The level forecast is the GB/T 33171 level of the forecast speed on the
segment's road class. A trained model carries a version (the training window and a digest of its
coefficients and feature spec) so that a forecast can say which model made it.

A model is its coefficients, the profiles and its training window: `to_params` writes them as plain JSON
(never a pickle: loading one runs code) together with the feature spec they were fitted on, and
`from_params` rebuilds the same model, which gives bit-identical forecasts (floats round-trip through JSON
exactly). A model fitted on other features than this code computes is refused (`ModelMismatch`).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cityos.traffic.congestion.tpi import level_of, segment_tpi

SLOT_S = 300  # readings every 5 minutes
LAGS = 4
RIDGE = 1.0
LAD_ITERATIONS = 10
LAD_FLOOR_KMH = 0.5     # residuals below 0.5 km/h weigh as 0.5 km/h: keeps the reweighting finite
MIN_REGIME_ROWS = 500   # fewer training rows than this in a regime: it uses the fit of all rows
HOLD_BELOW_PROFILE = 0.6  # a speed now under 60 % of the slot's average holds (tuned on seed 11, not the bench's)
UTC_OFFSET_H = 8.0  # the city's local time, for the daily pattern
RAIN_SCALE_MM_H = 10.0  # wetness 1 − e^(−rain/10): the first millimetres an hour slow traffic the most
WET_FROM = 0.1          # wetness from which the wet regime is used (about 1 mm/h)
FEATURES = ("intercept", *(f"speed_lag{k}" for k in range(LAGS)), "speed_change", "profile_target", "profile_now",
            "gap_to_profile", "target_time_sin", "target_time_cos", "rain_wetness", "rain_wetness_x_profile_target")
REGIMES = ("weekday_peak/dry", "weekday_peak/wet", "weekday/dry", "weekday/wet", "weekend/dry", "weekend/wet")
PEAK_HOURS = ((7, 10), (17, 20))

Rain = Callable[[float], float]  # epoch seconds → the city's rain intensity (mm/h) observed then


def no_rain(_ts: float) -> float:
    return 0.0


class ModelMismatch(ValueError):
    """Stored parameters that this code cannot use (another feature spec, or malformed)."""


def slot_of(ts: float, utc_offset_h: float = UTC_OFFSET_H) -> tuple[int, int]:
    """(weekend?, slot of the day) in the city's local time."""
    local = ts + utc_offset_h * 3600
    days, seconds = divmod(local, 86400)
    weekday = int((days + 3) % 7)  # 1970-01-01 was a Thursday
    return int(weekday >= 5), int(seconds // SLOT_S)


def wetness(rain_mm_h: float) -> float:
    return 1.0 - math.exp(-max(0.0, rain_mm_h) / RAIN_SCALE_MM_H)


def regime_of(target_ts: float, rain_mm_h: float) -> int:
    """The index in REGIMES of a forecast for `target_ts` made with `rain_mm_h` falling now."""
    weekend, slot = slot_of(target_ts)
    hour = slot * SLOT_S // 3600
    time = 2 if weekend else 0 if any(a <= hour < b for a, b in PEAK_HOURS) else 1
    return 2 * time + int(wetness(rain_mm_h) >= WET_FROM)


@dataclass
class Profiles:
    """Historical average speed per segment and (weekend, slot)."""

    sums: dict[tuple[str, int, int], float] = field(default_factory=dict)
    counts: dict[tuple[str, int, int], int] = field(default_factory=dict)

    def add(self, segment: str, ts: float, speed: float) -> None:
        key = (segment, *slot_of(ts))
        self.sums[key] = self.sums.get(key, 0.0) + speed
        self.counts[key] = self.counts.get(key, 0) + 1

    def mean(self, segment: str, ts: float, default: float) -> float:
        key = (segment, *slot_of(ts))
        count = self.counts.get(key, 0)
        return self.sums[key] / count if count else default


def features(series: Sequence[float], i: int, ts: float, horizon_s: float, profile_now: float,
             profile_target: float, rain_mm_h: float = 0.0) -> list[float]:
    lags = [series[i - k] for k in range(LAGS)]
    angle = 2 * math.pi * (((ts + horizon_s) + UTC_OFFSET_H * 3600) % 86400) / 86400
    wet = wetness(rain_mm_h)
    return [1.0, *lags, lags[0] - lags[1], profile_target, profile_now, lags[0] - profile_now, math.sin(angle),
            math.cos(angle), wet, wet * profile_target]


@dataclass
class ForecastModel:
    coefficients: list[list[float]]  # one list per regime (REGIMES), in FEATURES order
    horizon_steps: int
    profiles: Profiles
    trained_from: float
    trained_to: float
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def version(self) -> str:
        # The feature spec too: the same coefficients under another hold threshold or rain scale forecast otherwise.
        spec = json.dumps(feature_spec(self.horizon_steps), sort_keys=True).encode()
        digest = hashlib.sha256(np.asarray(self.coefficients).round(6).tobytes() + spec).hexdigest()[:12]
        return f"ridge-{int(self.trained_from)}-{int(self.trained_to)}-{digest}"

    def predict(self, segment: str, series: Sequence[float], i: int, ts: float, rain_mm_h: float = 0.0) -> float:
        """The speed `horizon_steps` after `series[i]` (observed at `ts`), with `rain_mm_h` falling at `ts`."""
        horizon_s = self.horizon_steps * SLOT_S
        profile_now = self.profiles.mean(segment, ts, series[i])
        if series[i] < HOLD_BELOW_PROFILE * profile_now:
            return series[i]
        x = features(series, i, ts, horizon_s, profile_now, self.profiles.mean(segment, ts + horizon_s, series[i]),
                     rain_mm_h)
        coefficients = self.coefficients[regime_of(ts + horizon_s, rain_mm_h)]
        return max(0.0, float(np.dot(coefficients, x)))

    def to_params(self) -> dict[str, Any]:
        """Everything `from_params` needs, as JSON-safe values (profiles as [weekend, slot, mean] per segment)."""
        profiles: dict[str, list[list[float]]] = {}
        for (segment, weekend, slot), total in sorted(self.profiles.sums.items()):
            profiles.setdefault(segment, []).append([weekend, slot, total / self.profiles.counts[(segment, weekend,
                                                                                                  slot)]])
        return {"kind": "ridge", "coefficients": [list(c) for c in self.coefficients], "profiles": profiles,
                "featureSpec": feature_spec(self.horizon_steps),
                "trainedFrom": self.trained_from, "trainedTo": self.trained_to, "metrics": dict(self.metrics)}

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> ForecastModel:
        try:
            spec = params["featureSpec"]
            horizon_steps = int(spec["horizonSteps"])
            if params.get("kind") != "ridge" or spec != feature_spec(horizon_steps):
                raise ModelMismatch("the model was fitted on other features than this code computes")
            coefficients = [[float(c) for c in regime] for regime in params["coefficients"]]
            if len(coefficients) != len(REGIMES) or any(len(c) != len(FEATURES) for c in coefficients):
                raise ModelMismatch(f"coefficients are not {len(REGIMES)} regimes of {len(FEATURES)} features")
            profiles = Profiles()
            for segment, entries in params["profiles"].items():
                for weekend, slot, mean in entries:
                    # One reading of sum `mean`: `Profiles.mean` gives back the same float.
                    profiles.sums[(str(segment), int(weekend), int(slot))] = float(mean)
                    profiles.counts[(str(segment), int(weekend), int(slot))] = 1
            return cls(coefficients, horizon_steps, profiles, float(params["trainedFrom"]),
                       float(params["trainedTo"]), {str(k): float(v) for k, v in params.get("metrics", {}).items()})
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            if isinstance(exc, ModelMismatch):
                raise
            raise ModelMismatch(f"malformed model parameters: {exc}") from exc


def feature_spec(horizon_steps: int) -> dict[str, Any]:
    """What the coefficients multiply, so that a stored model is only used with the same features."""
    return {"features": list(FEATURES), "regimes": list(REGIMES), "lags": LAGS, "slotSeconds": SLOT_S,
            "horizonSteps": horizon_steps, "utcOffsetHours": UTC_OFFSET_H, "ridge": RIDGE, "loss": "absolute",
            "rainScaleMmH": RAIN_SCALE_MM_H, "wetFrom": WET_FROM,
            "holdBelowProfile": HOLD_BELOW_PROFILE,
            "peakHours": [list(p) for p in PEAK_HOURS]}


def fit_least_absolute(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Ridge-penalised least absolute deviations, by reweighting the least-squares fit (intercept not shrunk)."""
    penalty = RIDGE * np.eye(x.shape[1])
    penalty[0, 0] = 0.0
    coefficients = np.linalg.solve(x.T @ x + penalty, x.T @ y)
    for _ in range(LAD_ITERATIONS):
        weights = 1.0 / np.maximum(np.abs(y - x @ coefficients), LAD_FLOOR_KMH)
        weighted = x * weights[:, None]
        coefficients = np.linalg.solve(weighted.T @ x + penalty, weighted.T @ y)
    return coefficients


def train(history: Mapping[str, tuple[Sequence[float], Sequence[float]]], horizon_steps: int = 3,
          rain: Rain = no_rain) -> ForecastModel:
    """Fit on {segment: (timestamps, speeds)} sampled every SLOT_S seconds, with `rain(ts)` the city's rain
    intensity (mm/h) observed at `ts`."""
    profiles = Profiles()
    first, last = math.inf, -math.inf
    for segment, (times, speeds) in history.items():
        for ts, speed in zip(times, speeds, strict=True):
            profiles.add(segment, ts, speed)
        if times:
            first, last = min(first, times[0]), max(last, times[-1])
    rows, targets, regimes = [], [], []
    horizon_s = horizon_steps * SLOT_S
    for segment, (times, speeds) in history.items():
        for i in range(LAGS - 1, len(speeds) - horizon_steps):
            ts = times[i]
            rain_now = rain(ts)
            rows.append(features(speeds, i, ts, horizon_s, profiles.mean(segment, ts, speeds[i]),
                                 profiles.mean(segment, ts + horizon_s, speeds[i]), rain_now))
            targets.append(speeds[i + horizon_steps])
            regimes.append(regime_of(ts + horizon_s, rain_now))
    if not rows:
        raise ValueError("not enough history to train a forecast")
    x, y, regime = np.asarray(rows), np.asarray(targets), np.asarray(regimes)
    pooled = fit_least_absolute(x, y)
    coefficients = []
    for r in range(len(REGIMES)):
        mask = regime == r
        coefficients.append(fit_least_absolute(x[mask], y[mask]) if mask.sum() >= MIN_REGIME_ROWS else pooled)
    # In-sample errors (km/h) of the model and of persistence (the speed now), for the record.
    fitted = np.maximum(0.0, np.einsum("ij,ij->i", x, np.asarray(coefficients)[regime]))
    metrics = {"maeKmh": round(float(np.mean(np.abs(fitted - y))), 4),
               "persistenceMaeKmh": round(float(np.mean(np.abs(x[:, 1] - y))), 4), "rows": float(len(y)),
               "wetRows": float(np.isin(regime, [1, 3, 5]).sum())}
    return ForecastModel([[float(c) for c in regime_coefficients] for regime_coefficients in coefficients],
                         horizon_steps, profiles, first, last, metrics)


def level_at(speed_kmh: float, road_class: str) -> int:
    return level_of(segment_tpi(min(200.0, max(0.0, speed_kmh)), road_class))


# ---------------------------------------------------------------------- diversion advice

MODERATE = 3  # 中度拥堵


def diversions(graph: Mapping[str, Mapping[str, tuple[str, float]]], levels: Mapping[str, int],
               origin: str, destination: str, avoid_from: int = MODERATE, alternatives: int = 2
               ) -> list[dict[str, object]]:
    """Routes from `origin` to `destination` avoiding segments forecast at `avoid_from` or worse.

    `graph` is {node: {next node: (segment id, travel minutes at free flow)}}; a forecast level
    multiplies a segment's time (1, 1.2, 1.5, 2, 3 from 畅通 to 严重拥堵), and segments at or over
    `avoid_from` are left out. Returns up to `alternatives` routes with their segments and minutes.
    """
    import networkx as nx

    factor = (1.0, 1.2, 1.5, 2.0, 3.0)
    g = nx.DiGraph()
    for node, nexts in graph.items():
        for nxt, (segment, minutes) in nexts.items():
            level = levels.get(segment, 0)
            if level < avoid_from:
                g.add_edge(node, nxt, segment=segment, weight=minutes * factor[min(4, max(0, level))])
    if origin not in g or destination not in g:
        return []
    out: list[dict[str, object]] = []
    try:
        for path in nx.shortest_simple_paths(g, origin, destination, weight="weight"):
            segments = [g[a][b]["segment"] for a, b in itertools.pairwise(path)]
            minutes = sum(g[a][b]["weight"] for a, b in itertools.pairwise(path))
            out.append({"nodes": path, "segments": segments, "minutes": round(minutes, 1)})
            if len(out) >= alternatives:
                break
    except nx.NetworkXNoPath:
        return []
    return out
