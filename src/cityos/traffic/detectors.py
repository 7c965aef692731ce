"""Detector readings from the hub (车辆检测器读数): `TrafficFlowObserved` entities as the controllers' inputs.

A detector of lane L is the hub entity `urn:ngsi-ld:TrafficFlowObserved:<L>` (what an IoT `traffic-flow` device
named L produces); an advance detector is one of its own, named in the signal's plan (`plan.advance`). Used by
the control loop (`cityos.traffic.control_loop`) and by emergency pre-emption's clear-ahead lead
(`TrafficService.preempt`), so both read a detector the same way.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cityos.core.clock import as_utc
from cityos.traffic.accident_watch import instance, number, occupancy_share, short
from cityos.traffic.signals import ApproachReading, LaneReading, PlanError, check_reading

DETECTOR_TYPE = "TrafficFlowObserved"
DETECTOR_LENGTH_M = 100.0  # the lane-area detector a reading stands for
VEHICLE_LENGTH_M = 5.0  # a passenger car: turns occupancy into vehicles when the entity gives no length
HALTING_KMH = 5.0


def detector_entity(lane: str) -> str:
    return f"urn:ngsi-ld:{DETECTOR_TYPE}:{lane}"


def stale_seconds(interval: float) -> float:
    """`CITYOS_TRAFFIC_DETECTOR_STALE_SECONDS`: a reading older than this is not used (default 30 s)."""
    try:
        seconds = float(os.environ.get("CITYOS_TRAFFIC_DETECTOR_STALE_SECONDS", "30") or 30)
    except ValueError:
        seconds = 30.0
    return max(seconds, 2 * interval) if math.isfinite(seconds) and seconds > 0 else 30.0


@dataclass(frozen=True)
class DetectorReading:
    reading: LaneReading
    observed: datetime
    intensity: float


def detector_reading(attrs: dict[str, Any], length: float = DETECTOR_LENGTH_M) -> DetectorReading | None:
    """A detector entity's latest reading, or None when it has none or an impossible one. `length`: the metres
    of lane the detector covers (an advance detector's distance from the stop line)."""
    occupancy = instance(attrs, "occupancy")
    share = occupancy_share(occupancy)
    speed_attr = instance(attrs, "averageVehicleSpeed")
    speed = number(speed_attr.get("value")) if speed_attr else None
    observed = (occupancy or {}).get("observedAt")
    if share is None or speed is None or not observed:
        return None
    try:
        at = as_utc(datetime.fromisoformat(str(observed).replace("Z", "+00:00")))
    except ValueError:
        return None
    length_attr = instance(attrs, "averageVehicleLength")
    vehicle_length = number(length_attr.get("value")) if length_attr else None
    if vehicle_length is None or not 1.0 <= vehicle_length <= 30.0:
        vehicle_length = VEHICLE_LENGTH_M
    intensity_attr = instance(attrs, "intensity")
    intensity = number(intensity_attr.get("value")) if intensity_attr else None
    vehicles = share * length / vehicle_length
    try:
        reading = check_reading(LaneReading(
            vehicles=vehicles, halting=vehicles if speed < HALTING_KMH else 0.0, mean_speed=speed / 3.6,
            occupancy=share, length=length))
    except PlanError:
        return None
    return DetectorReading(reading, at, max(0.0, intensity or 0.0))


def approach_readings(in_lanes: tuple[str, ...], lanes: dict[str, LaneReading],
                      advance: dict[str, LaneReading]) -> dict[str, ApproachReading]:
    """Per incoming lane with a reading: its approach as the controller sees it in process. The stop-line
    detector gives the vehicles at the stop line, the halting and the waiting; a lane's advance detector, where
    it has a reading, the vehicles arriving (it covers the stop-line detector's zone too, so the approach's
    vehicles and halting are the larger of the two)."""
    out: dict[str, ApproachReading] = {}
    for lane in in_lanes:
        stop = lanes.get(lane)
        if stop is None:
            continue
        ahead = advance.get(lane)
        out[lane] = ApproachReading(
            stopline=stop.vehicles, vehicles=max(stop.vehicles, ahead.vehicles) if ahead else stop.vehicles,
            halting=max(stop.halting, ahead.halting) if ahead else stop.halting, waiting=stop.waiting,
            arriving=ahead.vehicles if ahead else None)
    return out


def fresh_reading(found: dict[str, Any], detector: str, now: datetime, stale_after: float,
                  length: float = DETECTOR_LENGTH_M) -> DetectorReading | None:
    """`detector`'s reading among the hub's `found` entities (by id), when it is a detector's and not older
    than `stale_after` seconds."""
    record = found.get(detector_entity(detector))
    if record is None or not any(short(t) == DETECTOR_TYPE for t in record.types):
        return None
    latest = detector_reading(record.attrs, length)
    if latest is None or (now - latest.observed).total_seconds() > stale_after:
        return None
    return latest
