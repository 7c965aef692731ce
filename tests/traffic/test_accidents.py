"""Accident detection: the comparative tests on detector pairs, and a detection opening a traffic incident."""

from __future__ import annotations

import datetime as dt
from typing import Any

import httpx
import pytest

from auth_tokens import Auth
from cityos.traffic.accidents import AccidentDetector, ReadingError, StationReading, alarm_event

FREE = StationReading(occupancy=0.05, speed=14.0, vehicles=4)
QUEUE = StationReading(occupancy=0.7, speed=1.0, vehicles=2)
EMPTY = StationReading(occupancy=0.0, speed=0.0, vehicles=0)
RED_QUEUE_DOWN = StationReading(occupancy=0.6, speed=0.5, vehicles=1)  # a red light holds the stop-line loop


def feed(detector: AccidentDetector, pairs: list[tuple[StationReading, StationReading]]) -> list[float]:
    hits = []
    for k, (up, down) in enumerate(pairs):
        if detector.observe("lane-a#0", up, down, 30.0 * k) is not None:
            hits.append(30.0 * k)
    return hits


def test_a_queue_upstream_of_an_empty_lane_is_an_accident_after_persistence() -> None:
    detector = AccidentDetector()
    hits = feed(detector, [(FREE, FREE), (FREE, FREE), (QUEUE, EMPTY), (QUEUE, EMPTY), (QUEUE, EMPTY)])
    assert hits == [90.0]  # declared once, on the second interval meeting the tests
    assert detector.active() == {"lane-a#0": 90.0}
    feed(detector, [(FREE, FREE)])  # traffic flows again: cleared
    assert detector.active() == {}


def test_signal_queues_and_single_intervals_raise_nothing() -> None:
    detector = AccidentDetector()
    # red light: the stop-line loop is covered first; a long red covers both loops; one odd interval
    pattern = [(FREE, RED_QUEUE_DOWN), (QUEUE, RED_QUEUE_DOWN), (FREE, FREE), (QUEUE, EMPTY), (FREE, FREE)] * 5
    assert feed(detector, pattern) == []


def test_flow_through_upstream_and_none_downstream_is_a_blocked_lane() -> None:
    detector = AccidentDetector()
    passing = StationReading(occupancy=0.08, speed=12.0, vehicles=4)
    hits = feed(detector, [(passing, FREE), (passing, EMPTY), (passing, EMPTY), (passing, EMPTY), (passing, EMPTY)])
    assert hits == [120.0]  # four intervals with nothing downstream while vehicles passed upstream


@pytest.mark.parametrize("reading", [
    StationReading(occupancy=1.5, speed=3.0), StationReading(occupancy=0.2, speed=-1.0),
    StationReading(occupancy=float("nan"), speed=3.0), StationReading(occupancy=0.2, speed=300.0),
    StationReading(occupancy=0.2, speed=3.0, vehicles=-2)])
def test_impossible_readings_are_refused_and_leave_no_state(reading: StationReading) -> None:
    detector = AccidentDetector()
    with pytest.raises(ReadingError):
        detector.observe("lane-a#0", reading, EMPTY, 0.0)
    assert detector.states == {}


async def test_a_detection_opens_a_traffic_incident_for_the_transport_department(
        app: Any, client: httpx.AsyncClient, auth: Auth) -> None:
    detector = AccidentDetector()
    detection = None
    for k in range(3):
        detection = detector.observe("J2_2--J3_2_0#4", QUEUE, EMPTY, 30.0 * k) or detection
    assert detection is not None
    when = dt.datetime(2026, 3, 2, 0, 12, tzinfo=dt.UTC)
    event = alarm_event("", detection, when, location={"type": "Point", "coordinates": [110.33, 20.02]},
                        entity_id="urn:ngsi-ld:TrafficFlowObserved:J2_2--J3_2_0")
    await app.state.bus.publish("ops.alarm.raised", event)
    await app.state.bus.publish("ops.alarm.raised", event)  # a replay opens no second incident
    listed = (await client.get("/api/ops/incidents", headers=auth.headers("operator"))).json()
    assert listed["total"] == 1
    incident = listed["items"][0]
    assert (incident["category"], incident["department"], incident["source"]) == \
        ("traffic.accident", "transport", "alarm")
    assert incident["entityId"] == "urn:ngsi-ld:TrafficFlowObserved:J2_2--J3_2_0"
