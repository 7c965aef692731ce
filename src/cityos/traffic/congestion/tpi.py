"""Traffic performance index (交通运行指数, TPI 0–10) after GB/T 33171-2016 — pure functions.

A segment's level comes from its mean travel speed against its road class's speed bands (the
standard's table for 快速路 / 主干路 / 次干路 / 支路); within a band the index is interpolated linearly,
each level spanning two index points: [0, 2) 畅通, [2, 4) 基本畅通, [4, 6) 轻度拥堵, [6, 8) 中度拥堵,
[8, 10] 严重拥堵. A district's or the city's index is the mean of its segments' indices weighted by
vehicle-kilometres (length × flow), so a busy congested arterial weighs more than an empty side street.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass

LEVELS = ("畅通", "基本畅通", "轻度拥堵", "中度拥堵", "严重拥堵")
LEVELS_EN = ("free flow", "basically free", "light congestion", "moderate congestion", "severe congestion")

# km/h lower bounds of 畅通, 基本畅通, 轻度拥堵, 中度拥堵 (below the last: 严重拥堵).
SPEED_BANDS: dict[str, tuple[float, float, float, float]] = {
    "expressway": (65.0, 50.0, 35.0, 20.0),   # 快速路
    "arterial": (40.0, 30.0, 20.0, 15.0),     # 主干路
    "secondary": (35.0, 25.0, 15.0, 10.0),    # 次干路
    "branch": (35.0, 25.0, 15.0, 10.0),       # 支路
}
MAX_SPEED_KMH = 200.0


def segment_tpi(speed_kmh: float, road_class: str) -> float:
    """The index (0–10) of a segment at `speed_kmh`; non-increasing in speed."""
    if road_class not in SPEED_BANDS:
        raise ValueError(f"road class must be one of {', '.join(SPEED_BANDS)}")
    if not 0.0 <= speed_kmh <= MAX_SPEED_KMH:
        raise ValueError(f"speed must be between 0 and {MAX_SPEED_KMH:g} km/h")
    free, basic, light, moderate = SPEED_BANDS[road_class]
    # Interpolation knots: speed → index. Free flow reaches 0 at twice the free-flow bound.
    knots = [(2 * free, 0.0), (free, 2.0), (basic, 4.0), (light, 6.0), (moderate, 8.0), (0.0, 10.0)]
    if speed_kmh >= knots[0][0]:
        return 0.0
    for (high_speed, low_index), (low_speed, high_index) in itertools.pairwise(knots):
        if speed_kmh >= low_speed:
            share = (high_speed - speed_kmh) / (high_speed - low_speed)
            return round(low_index + share * (high_index - low_index), 2)
    return 10.0


def level_of(index: float) -> int:
    """0..4 for 畅通..严重拥堵."""
    if not 0.0 <= index <= 10.0:
        raise ValueError("the index is between 0 and 10")
    return min(4, int(index // 2))


@dataclass(frozen=True)
class SegmentIndex:
    segment_id: str
    district: str
    tpi: float
    vkt: float  # vehicle-kilometres: weight in the aggregates


def weighted_tpi(segments: Iterable[SegmentIndex]) -> float | None:
    """The VKT-weighted index of some segments (None without any); unweighted if no segment has flow."""
    items = list(segments)
    if not items:
        return None
    weight = sum(s.vkt for s in items)
    if weight <= 0:
        return round(sum(s.tpi for s in items) / len(items), 2)
    return round(sum(s.tpi * s.vkt for s in items) / weight, 2)
