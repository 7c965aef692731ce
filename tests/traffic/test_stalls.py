"""Stalled-vehicle detection from video or radar zones: a vehicle that heads its own standstill, clear of the
stop line, for longer than a queue's vehicle stands, is declared once; queues at a red light, the rear of a
discharging queue and impossible readings are not."""

from __future__ import annotations

import datetime as dt
import math

import pytest

from cityos.traffic.accidents import ReadingError, alarm_event
from cityos.traffic.stalls import MAX_STOPPED, StallDetector, StallThresholds, StoppedVehicle, stalled_heads


def queue(front_m: float, vehicles: int, stood_s: float) -> list[StoppedVehicle]:
    """A standstill of `vehicles` 7.5 m apart whose head stands `front_m` before the stop line."""
    return [StoppedVehicle(front_m + 7.5 * k, stood_s) for k in range(vehicles)]


def feed(detector: StallDetector, readings: list[list[StoppedVehicle]], zone: str = "edge-a#0") -> list[float]:
    return [30.0 * k for k, stopped in enumerate(readings) if detector.observe(zone, stopped, 30.0 * k)]


def test_a_vehicle_standing_mid_lane_with_the_lane_ahead_clear_is_declared_once() -> None:
    detector = StallDetector()
    stalled = [queue(600.0, 1, stood) for stood in (10.0, 40.0, 70.0, 100.0, 130.0, 160.0, 190.0)]
    # Stood 100 s at the fourth reading (the first over 90 s), confirmed by the fifth: declared once.
    assert feed(detector, [[], *stalled]) == [150.0]
    assert detector.active() == {"edge-a#0": 150.0}
    detection = StallDetector().observe("z", queue(600.0, 3, 95.0), 0.0)
    assert detection is None  # one reading is not enough
    feed(detector, [[]])  # gone (towed away): cleared, the next one is a new episode
    assert detector.active() == {}


def test_vehicles_queued_behind_the_stalled_one_do_not_hide_it() -> None:
    detector = StallDetector()
    behind = [[*queue(600.0, 1, stood), *queue(615.0, 4, stood - 20)] for stood in (95.0, 125.0)]
    assert feed(detector, behind) == [30.0]


def test_queues_at_the_stop_line_never_alarm_however_long_they_stand() -> None:
    detector = StallDetector()
    # An oversaturated approach: the queue's head stands at the line for minutes, its vehicles too.
    assert feed(detector, [queue(1.0, 40, 30.0 * k) for k in range(1, 12)]) == []
    # A vehicle waiting at the lane's end to change lanes stands 20 m before the line: still the line's business.
    assert feed(detector, [queue(20.0, 1, 30.0 * k) for k in range(1, 12)], zone="edge-b#1") == []


def test_the_rear_of_a_discharging_queue_is_not_a_stalled_vehicle() -> None:
    detector = StallDetector()
    # Green: the head has left; the rear (300 m back) has stood 100 s and heads what is left for a moment, then
    # the start-up wave reaches it and it moves (a new queue forms at the line at the next red).
    readings = [queue(1.0, 45, 70.0), queue(300.0, 6, 100.0), queue(1.0, 12, 20.0), queue(300.0, 5, 95.0)]
    assert feed(detector, readings) == []


def test_short_stops_and_gaps_below_the_queue_gap_are_not_heads() -> None:
    t = StallThresholds()
    assert stalled_heads(queue(500.0, 1, t.stalled_s - 1), t) == []
    # 15 m behind a standing vehicle (under the 20 m gap) is a queue's member, not a head.
    pair = [StoppedVehicle(100.0, 5.0), StoppedVehicle(115.0, 200.0)]
    assert stalled_heads(pair, t) == []
    apart = [StoppedVehicle(100.0, 5.0), StoppedVehicle(130.0, 200.0)]
    assert stalled_heads(apart, t) == [apart[1]]


@pytest.mark.parametrize("stopped", [
    [StoppedVehicle(-5.0, 100.0)],
    [StoppedVehicle(math.nan, 100.0)],
    [StoppedVehicle(100.0, math.inf)],
    [StoppedVehicle(100.0, -1.0)],
    [StoppedVehicle(100.0, 200_000.0)],
    [StoppedVehicle("100", 100.0)],  # type: ignore[arg-type]
    [StoppedVehicle(True, 100.0)],  # type: ignore[arg-type]
    [StoppedVehicle(100.0 + k, 1.0) for k in range(MAX_STOPPED + 1)],
])
def test_impossible_readings_are_refused_whole_and_leave_no_state(stopped: list[StoppedVehicle]) -> None:
    detector = StallDetector()
    feed(detector, [queue(600.0, 1, 100.0)])  # a candidate seen once
    with pytest.raises(ReadingError):
        detector.observe("edge-a#0", [*queue(600.0, 1, 130.0), *stopped], 30.0)
    assert detector.zones["edge-a#0"].heads == [(600.0, 1)]  # the refused reading changed nothing
    assert detector.observe("edge-a#0", queue(600.0, 1, 160.0), 60.0) is not None  # and the zone goes on


def test_the_alarm_says_where_the_vehicle_stands_in_the_city_zone() -> None:
    detection = StallDetector().observe("z", queue(600.0, 1, 100.0), 0.0)
    assert detection is None
    detector = StallDetector()
    feed(detector, [queue(612.4, 1, 100.0)], zone="seg#1")
    found = detector.observe("seg#1", queue(612.4, 1, 130.0), 30.0)
    assert found is not None and (found.test, found.distance_m, found.stood_s) == ("stalled-vehicle", 612.4, 130.0)
    event = alarm_event("t1", found, dt.datetime(2026, 3, 2, 0, 0, tzinfo=dt.UTC))
    message = event["alarm"]["message"]
    assert "08:00:00" in message and "130 s" in message and "612 m" in message  # UTC+8
    assert event["alarm"]["id"] == "traffic-accident:seg#1"  # the same place as the lane's loops
