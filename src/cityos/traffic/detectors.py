"""Detector readings from the hub (车辆检测器读数): `TrafficFlowObserved` entities as the controllers' inputs.

A detector of lane L is the hub entity `urn:ngsi-ld:TrafficFlowObserved:<D>` (what an IoT `traffic-flow` device
named D produces), D = `cityos.traffic.naming.lane_detector(L)`: L itself where it is a device name. A stop-line
or an advance detector is one of its own, named in the signal's plan (`plan.stopline`, `plan.advance`). A
reading's vehicles come from its occupancy over the detector's length, its standing vehicles from the queue it
measures (`queueLength`) or its mean speed. Used by
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
STANDING_GAP_M = 2.5  # the gap between standing vehicles: a queue of n cars is n × (length + gap) metres
HALTING_KMH = 5.0


def detector_entity(device: str) -> str:
    """The hub entity of the `traffic-flow` device named `device` (a lane's: `naming.lane_detector(lane)`)."""
    return f"urn:ngsi-ld:{DETECTOR_TYPE}:{device}"


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
            vehicles=vehicles, halting=halting_of(attrs, str(observed), vehicles, speed, vehicle_length),
            mean_speed=speed / 3.6, occupancy=share, length=length))
    except PlanError:
        return None
    return DetectorReading(reading, at, max(0.0, intensity or 0.0))


QUEUE_UNITS = {None: 1.0, "MTR": 1.0, "KMT": 1000.0}  # metres per unit; another unit is not understood


def halting_of(attrs: dict[str, Any], observed: str, vehicles: float, speed: float, vehicle_length: float) -> float:
    """The standing vehicles of a reading: from the queue a radar or camera detector measures (`queueLength`,
    metres, 排队长度) where it reports one with the occupancy observed at `observed` (an older queue, left by
    a reading whose queue was refused or a detector that stopped measuring it, says nothing of now), else all
    of them when the zone's mean speed is a crawl."""
    found = instance(attrs, "queueLength") or {}
    queue = number(found.get("value"))
    per_unit = QUEUE_UNITS.get(found.get("unitCode"))
    if queue is not None and per_unit is not None and found.get("observedAt") == observed \
            and math.isfinite(queue) and queue >= 0:
        return min(vehicles, queue * per_unit / (vehicle_length + STANDING_GAP_M))
    return vehicles if speed < HALTING_KMH else 0.0


@dataclass(frozen=True)
class LaneZones:
    """An incoming lane's own zone detectors named in its signal's plan, each (device, metres from the stop line
    it reaches up) or None: the advance detector (`plan.advance`) and the stop-line detector (`plan.stopline`)."""

    advance: tuple[str, float] | None = None
    stopline: tuple[str, float] | None = None

    def devices(self) -> tuple[str, ...]:
        return tuple(zone[0] for zone in (self.stopline, self.advance) if zone is not None)


@dataclass
class ZoneReadings:
    """The fresh readings of some lanes' zone detectors, by the incoming lane each watches, and how many of the
    detectors named had none."""

    advance: dict[str, LaneReading]
    stopline: dict[str, LaneReading]
    missing: int = 0


def zone_readings(found: dict[str, Any], zones: dict[str, LaneZones], now: datetime,
                  stale_after: float) -> ZoneReadings:
    out = ZoneReadings({}, {})
    for lane, named in zones.items():
        for zone, into in ((named.advance, out.advance), (named.stopline, out.stopline)):
            if zone is None:
                continue
            latest = fresh_reading(found, zone[0], now, stale_after, zone[1])
            if latest is None:
                out.missing += 1
            else:
                into[lane] = latest.reading
    return out


def approach_readings(in_lanes: tuple[str, ...], lanes: dict[str, LaneReading], advance: dict[str, LaneReading],
                      stopline: dict[str, LaneReading] | None = None) -> dict[str, ApproachReading]:
    """Per incoming lane with a reading of its own detector: its approach as the controller sees it in process.
    The stop-line detector, where the lane has a fresh one, gives the vehicles at the stop line (else the lane's
    detector stands for it); the lane's detector gives the waiting (hub readings carry none: the control loop
    estimates it, `QueueWait`); a lane's advance detector, where it has a reading, the vehicles arriving. The
    zones overlap (each reaches up from the stop line), so the approach's vehicles and halting are the largest
    of them."""
    out: dict[str, ApproachReading] = {}
    for lane in in_lanes:
        own = lanes.get(lane)
        if own is None:
            continue
        gap = (stopline or {}).get(lane)
        ahead = advance.get(lane)
        seen = [r for r in (own, gap, ahead) if r is not None]
        out[lane] = ApproachReading(
            stopline=(gap or own).vehicles, vehicles=max(r.vehicles for r in seen),
            halting=max(r.halting for r in seen), waiting=own.waiting, arriving=ahead.vehicles if ahead else None)
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


@dataclass
class QueueWait:
    """The waiting seconds accumulated by an approach's standing queue, estimated from its halting counts.

    Detectors report how many vehicles stand, not how long each has stood (SUMO's `waiting` in process). Every
    second a vehicle stands adds a second; when the queue shrinks, the vehicles that left take their share of
    the total with them (first in, first out would take more: the longest waiters leave first, so this keeps a
    little more than the truth and errs towards serving a long queue); an empty queue has waited nothing.
    """

    at: float | None = None  # when it was last updated (POSIX seconds)
    halting: float = 0.0
    seconds: float = 0.0
    # A longer gap between updates (the lane's readings went stale, its signal ran a green wave) starts again:
    # what stood then says nothing of how long what stands now has waited.
    gap_s: float = 30.0

    def update(self, at: float, halting: float) -> float:
        if self.at is not None and at <= self.at:
            return self.seconds  # a moment already counted
        if self.at is None or at - self.at > self.gap_s:
            self.seconds = 0.0
        else:
            if halting < self.halting:
                self.seconds *= halting / self.halting
            self.seconds += min(halting, self.halting) * (at - self.at)
        if halting <= 0:
            self.seconds = 0.0
        self.at, self.halting = at, halting
        return self.seconds
