"""Live accident detection: detector readings arriving in the hub feed the accident detector.

Every `TrafficFlowObserved` change in the hub (an IoT traffic-flow detector's reading, or an
integrator's NGSI-LD write) is one station's interval. A station takes part when its entity says
where it stands on its road section: `refRoadSegment` (the section), `detectorPosition`
(`upstream` near the section's start, `downstream` near its stop line) and optionally `laneId`. The
two stations of a section (and lane) form the detector's pair; an interval of the pair is complete
once both stations have reported since the last one, and is then fed to `AccidentDetector` (as a pair
across all lanes when the stations name no lane).

When the stations name their lanes, the section's lane pairs also feed the lane-shift test
(`AccidentDetector.observe_lanes`): once every lane that has reported on the section has a new complete
interval, the lanes' intervals (in lane order) go to the detector together; a lane it declares blocked is
reported as that lane's pair, so an alarm from either test on one lane is one incident. A lane that stops
reporting holds the section's lane-shift test back (each pair's own tests go on); a lane that reports twice
before the others counts its latest interval only.

A `TrafficFlowObserved` that carries `stoppedVehicles` is a video or radar zone's reading of one lane (the
lane of `refRoadSegment` and `laneId`, or the entity itself when it names none): the vehicles standing in it,
each `{"distanceToStopLine": m, "stoppedFor": s}`, fed to `stalls.StallDetector` (an integrator's NGSI-LD write,
or an IoT `traffic-zone` device's reading: its `segment` and `lane` keys land as `refRoadSegment` and `laneId`,
the list checked against the profile on ingest). Its alarm names the same
place as the lane's loops (`<section>#<lane>`). Where a section's zones report, they decide: the loops' tests
there go on learning but raise nothing while the section has a zone reading less than `ZONE_FRESH_S` old (in
the SUMO bench the loops' tests on two-lane roads found nothing the zones missed and raised nearly all of the
false alarms: 33 a run against 1–2, bench/RESULTS.md 2026-12-06); once its zones fall silent the loops take
over again. A malformed list is logged and skipped whole.

A detection becomes an `ops.alarm.raised` event: the incident domain opens a `traffic.accident`
incident routed to the transport department (its routing table). The alarm id names the pair and
not the moment, so the incident's source key (`alarm:<id>`, unique while the incident is open) keeps
one incident per location and episode even when a restart forgets the detector's state or a replay
repeats a reading; after the incident is closed a new blockage opens a new one.

Readings are converted from the IoT profile's units: occupancy in percent (unitCode P1) or as a share,
speed in km/h (Smart Data Models' unit), `intensity` as the vehicles of the interval (the conservation
test counts them: a lane's vehicles upstream that never show downstream). A reading without occupancy or
speed is not a station's interval; an impossible one (occupancy over 100 %, a negative count) is logged
and skipped, never fed to the detector.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, TypeVar

from cityos.core import clock
from cityos.core.events import Event, EventBus
from cityos.hub.service import ENTITY_CHANGED
from cityos.traffic.accidents import AccidentDetector, Detection, ReadingError, StationReading, alarm_event
from cityos.traffic.stalls import StallDetector, StoppedVehicle

log = logging.getLogger("cityos.traffic.accidents")

ALARM_RAISED = "ops.alarm.raised"
POSITIONS = ("upstream", "downstream")
MAX_PAIRS = 100_000  # stations remembered per process (a bound, not a tuning knob)
ZONE_FRESH_S = 300.0  # a section whose zones reported within this leaves its alarms to them

Remembered = TypeVar("Remembered")


def remembered(states: dict[tuple[str, str], Remembered], key: tuple[str, str],
               new: Callable[[], Remembered]) -> Remembered:
    """The state kept for `key`, made with `new` when there is none; past MAX_PAIRS the oldest is forgotten."""
    state = states.get(key)
    if state is None:
        if len(states) >= MAX_PAIRS:
            states.pop(next(iter(states)))
        state = states[key] = new()
    return state


def short(iri: str) -> str:
    return iri.rsplit("/", 1)[-1].rsplit("#", 1)[-1]


def instance(attrs: dict[str, Any], name: str) -> dict[str, Any] | None:
    for iri, instances in attrs.items():
        if short(iri) == name and instances and isinstance(instances[0], dict):
            first: dict[str, Any] = instances[0]
            return first
    return None


def value(attrs: dict[str, Any], name: str) -> Any:
    found = instance(attrs, name)
    return None if found is None else found.get("value", found.get("object"))


def number(raw: Any) -> float | None:
    return float(raw) if isinstance(raw, int | float) and not isinstance(raw, bool) else None


def occupancy_share(found: dict[str, Any] | None) -> float | None:
    """The IoT profile sends percent (P1); Smart Data Models' own unit is a share in [0, 1]."""
    raw = number(found.get("value")) if found else None
    if raw is None or found is None:
        return None
    return raw / 100.0 if found.get("unitCode") == "P1" or raw > 1.0 else raw


@dataclass(frozen=True)
class StationInterval:
    pair: str
    position: str
    reading: StationReading
    at: datetime
    entity_id: str
    location: dict[str, Any] | None
    all_lanes: bool = False  # no laneId: the station counts every lane of its road section
    segment: str = ""
    lane: str | None = None


def station_interval(entity_id: str, types: list[str], attrs: dict[str, Any]) -> StationInterval | None:
    """One station's interval from its entity, or None when it is not a positioned detector station."""
    if not any(short(t) == "TrafficFlowObserved" for t in types):
        return None
    position, segment = value(attrs, "detectorPosition"), value(attrs, "refRoadSegment")
    if position not in POSITIONS or not isinstance(segment, str):
        return None
    occupancy = instance(attrs, "occupancy")
    share = occupancy_share(occupancy)
    speed = number(value(attrs, "averageVehicleSpeed"))
    if share is None or speed is None:
        return None
    vehicles = number(value(attrs, "intensity"))
    lane = value(attrs, "laneId")
    one_lane = isinstance(lane, int | str) and not isinstance(lane, bool)
    pair = f"{short(segment)}#{lane}" if one_lane else short(segment)
    at = observed(occupancy, attrs)
    location = value(attrs, "location")
    # A negative count is kept as sent: the detector refuses the reading (clamping it to 0 would read as
    # "no vehicle passed", which is evidence of a blockage).
    reading = StationReading(occupancy=share, speed=speed / 3.6,
                             vehicles=round(vehicles) if vehicles is not None and math.isfinite(vehicles) else 0)
    return StationInterval(pair[:160], str(position), reading, at, entity_id,
                           location if isinstance(location, dict) else None, all_lanes=not one_lane,
                           segment=short(segment)[:120], lane=str(lane)[:30] if one_lane else None)


def observed(found: dict[str, Any] | None, attrs: dict[str, Any]) -> datetime:
    stamp = (found or {}).get("observedAt") or value(attrs, "dateObserved")
    try:
        return clock.as_utc(datetime.fromisoformat(str(stamp).replace("Z", "+00:00"))) if stamp else clock.now()
    except ValueError:
        return clock.now()


@dataclass(frozen=True)
class ZoneInterval:
    zone: str
    segment: str | None  # the road section it watches (None: the entity names none)
    stopped: list[StoppedVehicle]
    at: datetime
    entity_id: str
    location: dict[str, Any] | None


def stopped_vehicle(raw: Any) -> StoppedVehicle:
    if not isinstance(raw, dict):
        raise ReadingError("each standing vehicle is an object with distanceToStopLine and stoppedFor")
    fields = {short(key): item for key, item in raw.items()}  # plain or expanded keys alike
    distance, stood = number(fields.get("distanceToStopLine")), number(fields.get("stoppedFor"))
    if distance is None or stood is None:
        raise ReadingError("distanceToStopLine and stoppedFor must be numbers")
    return StoppedVehicle(distance, stood)


def zone_interval(entity_id: str, types: list[str], attrs: dict[str, Any]) -> ZoneInterval | None:
    """A video or radar zone's reading of one lane, None when the entity carries none, ReadingError when it is
    malformed (the detector checks the numbers' ranges)."""
    if not any(short(t) == "TrafficFlowObserved" for t in types):
        return None
    found = instance(attrs, "stoppedVehicles")
    if found is None:
        return None
    raw = found.get("value")
    if not isinstance(raw, list):
        raise ReadingError("stoppedVehicles must be a list")
    segment, lane = value(attrs, "refRoadSegment"), value(attrs, "laneId")
    one_lane = isinstance(lane, int | str) and not isinstance(lane, bool)
    zone = f"{short(segment)}#{lane}" if isinstance(segment, str) and one_lane else short(entity_id)
    location = value(attrs, "location")
    return ZoneInterval(zone[:160], short(segment)[:120] if isinstance(segment, str) else None,
                        [stopped_vehicle(item) for item in raw], observed(found, attrs), entity_id,
                        location if isinstance(location, dict) else None)


@dataclass
class PairReadings:
    latest: dict[str, StationInterval] = field(default_factory=dict)
    observed_until: datetime | None = None  # the later stamp of the last interval fed to the detector


@dataclass
class SegmentLanes:
    """A road section's lane pairs, for the lane-shift test: each lane's last complete interval."""

    lanes: set[str] = field(default_factory=set)  # every lane that has reported on this section
    fresh: dict[str, tuple[StationInterval, StationInterval]] = field(default_factory=dict)  # since the last feed


@dataclass
class AccidentWatch:
    """The `hub.entity.changed` consumer that runs the detector on live readings (one per process)."""

    bus: EventBus
    # Called with (tenant, the alarm event) after each detection: the police are told beside the incident
    # the transport department gets (an incident has one department; an accident concerns both).
    alert: Callable[[str, dict[str, Any]], Awaitable[Any]] | None = None
    detector: AccidentDetector = field(default_factory=AccidentDetector)
    pairs: dict[tuple[str, str], PairReadings] = field(default_factory=dict)
    segments: dict[tuple[str, str], SegmentLanes] = field(default_factory=dict)
    stalls: StallDetector = field(default_factory=StallDetector)
    zones_seen: dict[tuple[str, str], datetime] = field(default_factory=dict)  # each zone's latest reading fed
    zoned: dict[tuple[str, str], datetime] = field(default_factory=dict)  # each watched section's latest zone reading
    detections: int = 0
    left_to_zones: int = 0  # loops' detections not raised: their section's zones decide

    def subscribe(self) -> Any:
        return self.bus.subscribe(ENTITY_CHANGED, self.on_change, group="traffic-accidents")

    async def on_change(self, event: Event) -> None:
        change = event.payload.get("change")
        after = getattr(change, "after", None)
        if after is None:
            return
        tenant = str(event.payload.get("tenant") or "")
        station = station_interval(after.id, list(after.types), after.attrs)
        if station is not None:
            await self.offer(tenant, station)
        try:
            zone = zone_interval(after.id, list(after.types), after.attrs)
        except ReadingError as exc:
            log.warning("zone %s: malformed standing vehicles skipped: %s", after.id, exc)
            return
        if zone is not None:
            await self.offer_zone(tenant, zone)

    async def offer_zone(self, tenant: str, zone: ZoneInterval) -> Detection | None:
        """Take one zone's reading (a newer one than the last fed) to the stalled-vehicle test."""
        key = (tenant, zone.zone)
        last = self.zones_seen.get(key)
        if last is not None and zone.at <= last:
            return None  # a replay or an older reading
        try:
            detection = self.stalls.observe(f"{tenant}/{zone.zone}", zone.stopped, zone.at.timestamp())
        except ReadingError as exc:
            log.warning("zone %s: impossible reading skipped: %s", zone.zone, exc)
            return None
        remembered(self.zones_seen, key, lambda: zone.at)  # bounded like the pairs, then moved on
        self.zones_seen[key] = zone.at
        if zone.segment is not None:
            section = (tenant, zone.segment)
            latest = remembered(self.zoned, section, lambda: zone.at)
            self.zoned[section] = max(latest, zone.at)
        if detection is None:
            return None
        detection = replace(detection, pair=zone.zone)
        await self.raise_alarm(tenant, detection, zone.at, zone.location, zone.entity_id)
        return detection

    async def offer(self, tenant: str, station: StationInterval) -> Detection | None:
        """Take one station's interval; feed the pair's interval once both stations have reported."""
        readings = remembered(self.pairs, (tenant, station.pair), PairReadings)
        if readings.observed_until is not None and station.at <= readings.observed_until:
            return None  # a replay or an older reading: that interval was fed already
        readings.latest[station.position] = station
        up, down = readings.latest.get("upstream"), readings.latest.get("downstream")
        if up is None or down is None:
            return None
        readings.observed_until = max(up.at, down.at)
        readings.latest.clear()
        try:
            detection = self.detector.observe(f"{tenant}/{station.pair}", up.reading, down.reading,
                                              readings.observed_until.timestamp(), all_lanes=station.all_lanes)
        except ReadingError as exc:
            log.warning("detector pair %s: impossible reading skipped: %s", station.pair, exc)
            return None
        shifted = await self.lane_shift(tenant, up, down, readings.observed_until)
        if detection is None:
            return shifted
        detection = replace(detection, pair=station.pair)
        if self.zones_decide(tenant, station.segment, readings.observed_until):
            return None
        await self.raise_alarm(tenant, detection, readings.observed_until, up.location or down.location,
                               up.entity_id)
        return detection

    async def lane_shift(self, tenant: str, up: StationInterval, down: StationInterval,
                         until: datetime) -> Detection | None:
        """Once every lane of the section has a new interval, the section read lane by lane: a lane whose
        share of the downstream vehicles fell (traffic moved to the next lane to pass it) is a blockage."""
        if up.lane is None or down.lane is None:
            return None
        section = remembered(self.segments, (tenant, up.segment), SegmentLanes)
        section.lanes.add(up.lane)
        section.fresh[up.lane] = (up, down)
        if len(section.lanes) < 2 or set(section.fresh) != section.lanes:
            return None
        order = sorted(section.lanes)
        intervals = [section.fresh[lane] for lane in order]
        section.fresh.clear()
        blocked = self.detector.observe_lanes(f"{tenant}/{up.segment}", [u.reading for u, _ in intervals],
                                              [d.reading for _, d in intervals], until.timestamp())
        found = None
        for index in blocked:
            lane_up, lane_down = intervals[index]
            occdf = lane_up.reading.occupancy - lane_down.reading.occupancy
            shifted = Detection(lane_up.pair, until.timestamp(), round(occdf, 3),
                                round(occdf / lane_up.reading.occupancy, 3) if lane_up.reading.occupancy > 0 else 0.0,
                                round(lane_down.reading.occupancy, 3), test="lane-shift")
            if self.zones_decide(tenant, up.segment, until):
                continue
            found = shifted
            await self.raise_alarm(tenant, found, until, lane_up.location or lane_down.location, lane_up.entity_id)
        return found

    def zones_decide(self, tenant: str, segment: str, when: datetime) -> bool:
        """Whether the section's zones reported recently enough that a loops' detection there is theirs to make."""
        latest = self.zoned.get((tenant, segment))
        if latest is None or (when - latest).total_seconds() > ZONE_FRESH_S:
            return False
        self.left_to_zones += 1
        return True

    async def raise_alarm(self, tenant: str, detection: Detection, when: datetime,
                          location: dict[str, Any] | None, entity_id: str) -> None:
        self.detections += 1
        event = alarm_event(tenant, detection, when, location=location, entity_id=entity_id)
        await self.bus.publish(ALARM_RAISED, event)
        if self.alert is not None:
            try:
                await self.alert(tenant, event)
            except Exception:  # the incident is open whatever happens to the extra alert
                log.exception("alerting on the accident at %s failed", detection.pair)
