"""CityOS's adaptive controller: stop-line gap-out, approach and entry detectors, maximum red.

Two phases on a cross: phase 0 serves the north lane, phase 1 the east lane (one link each).
"""

from __future__ import annotations

from typing import Any

import pytest

from cityos.traffic.controllers.adaptive import MAX_RED_S, CityOSAdaptive
from cityos.traffic.signals import ApproachReading, Controller, LaneReading, Movement, Phase, SignalPlan, View

PLAN = SignalPlan(phases=(Phase("Gr", 5, 60, 0, 20), Phase("rG", 5, 60, 0, 20)), yellow=3, all_red=2,
                  conflicts=frozenset({(0, 1)}))
MOVEMENTS = ((Movement(0, "north", "south", True),), (Movement(1, "east", "west", True),))


def view(now: float, phase: int, north: LaneReading, east: LaneReading,
         approaches: dict[str, ApproachReading] | None = None) -> View:
    lanes = {"north": north, "east": east, "south": LaneReading(), "west": LaneReading()}
    return View(now, phase, 10.0, lanes, MOVEMENTS, approaches or {})


def test_green_gaps_out_when_its_stop_line_is_clear() -> None:
    """Ten vehicles far up the green lane do not hold green against a waiting queue once the stop line is clear."""
    north = LaneReading(vehicles=10, length=300)  # all still moving, far upstream
    east = LaneReading(vehicles=3, halting=3, waiting=30, length=100)
    whole_lane = CityOSAdaptive(PLAN).decide(view(0, 0, north, east))
    assert whole_lane == 0  # without a stop-line detector the whole lane's vehicles keep green
    approaches = {"north": ApproachReading(stopline=0, vehicles=10),
                  "east": ApproachReading(stopline=3, vehicles=3, halting=3, waiting=30)}
    assert CityOSAdaptive(PLAN).decide(view(0, 0, north, east, approaches)) == 1
    approaches["north"] = ApproachReading(stopline=2, vehicles=10)  # still discharging at the stop line
    assert CityOSAdaptive(PLAN).decide(view(0, 0, north, east, approaches)) == 0


def test_entry_backlog_and_feeding_lanes_count_as_demand() -> None:
    """A short entry lane shows one vehicle; the queue behind it, seen by the approach and entry detectors, wins."""
    north = LaneReading(vehicles=6, halting=0, length=200)
    east = LaneReading(vehicles=1, halting=1, length=8)
    lane_only = {"north": ApproachReading(stopline=3, vehicles=6),
                 "east": ApproachReading(stopline=1, vehicles=1, halting=1)}
    assert CityOSAdaptive(PLAN).decide(view(0, 0, north, east, lane_only)) == 0
    with_backlog = {"north": ApproachReading(stopline=3, vehicles=6),
                    "east": ApproachReading(stopline=1, vehicles=4, halting=4, backlog=12)}
    assert CityOSAdaptive(PLAN).decide(view(0, 0, north, east, with_backlog)) == 1


def test_a_waiting_movement_is_served_after_the_maximum_red() -> None:
    controller = CityOSAdaptive(PLAN)
    busy = LaneReading(vehicles=20, halting=5, length=300)  # phase 0 always has far more demand
    one = LaneReading(vehicles=1, halting=1, waiting=1, length=100)
    answers = {t: controller.decide(view(float(t), 0, busy, one)) for t in range(0, int(MAX_RED_S) + 1)}
    assert all(answer == 0 for t, answer in answers.items() if t < MAX_RED_S)
    assert answers[int(MAX_RED_S)] == 1


def test_maximum_red_needs_a_waiting_vehicle_and_restarts_with_green() -> None:
    controller = CityOSAdaptive(PLAN)
    busy = LaneReading(vehicles=20, halting=5, length=300)
    moving = LaneReading(vehicles=1, halting=0, length=100)  # arriving, not waiting: no forced green
    assert controller.decide(view(0, 0, busy, moving)) == 0
    assert controller.decide(view(MAX_RED_S + 5, 0, busy, moving)) == 0
    controller.decide(view(MAX_RED_S + 6, 1, busy, moving))  # the east movement shows green: its red restarts
    waiting = LaneReading(vehicles=1, halting=1, length=100)
    assert controller.decide(view(MAX_RED_S + 10, 0, busy, waiting)) == 0
    assert controller.decide(view(2 * MAX_RED_S + 6, 0, busy, waiting)) == 1


def test_approach_detectors_in_sumo_see_the_queue_behind_short_lanes() -> None:
    """In SUMO (ingolstadt7: entry lanes of 1–9 m), the approach covers feeding lanes and the entry backlog."""
    pytest.importorskip("libsumo")
    from cityos.traffic.sumo import APPROACH_M, approach_specs, resco_scenario, run_scenario

    scenario = resco_scenario("ingolstadt7", horizon=300)
    specs = approach_specs(scenario.net)
    assert specs and all(0 < share <= 1 for s in specs.values() for _lane, share in s.upstream)
    assert any(s.upstream for s in specs.values()) and any(s.entry_edges for s in specs.values())
    seen: list[tuple[LaneReading, ApproachReading]] = []

    class Recorder(Controller):
        interval = 1.0

        def __init__(self, inner: Controller) -> None:
            self.inner = inner

        def decide(self, v: View) -> int:
            seen.extend((v.lanes[lane], a) for lane, a in v.approaches.items() if lane in v.lanes)
            return self.inner.decide(v)

    def factory(x: Any) -> Controller:
        return Recorder(CityOSAdaptive(x.plan))

    result = run_scenario(scenario, "cityos", factory, seed=1)
    assert result.controller_failures == 0 and result.arrived > 0
    assert seen and all(a.vehicles >= r.vehicles - 1e-9 for r, a in seen)
    # the stop-line detector also counts a vehicle whose tail still covers it while its front left the lane
    assert all(a.stopline <= r.vehicles + 2 for r, a in seen) and any(a.stopline > 0 for _r, a in seen)
    assert any(a.vehicles > r.vehicles for r, a in seen)  # vehicles on the feeding lanes are counted
    assert APPROACH_M > 0


def test_on_a_long_link_only_vehicles_near_the_stop_line_call_for_green() -> None:
    """Twelve vehicles on a 2 km east link, all far from the stop line, neither take green nor cut a platoon."""
    north = LaneReading(vehicles=4, length=2000)
    east = LaneReading(vehicles=12, length=2000)
    gapped_out = {"north": ApproachReading(stopline=0, vehicles=4, arriving=0)}
    whole_lane = {**gapped_out, "east": ApproachReading(stopline=0, vehicles=12)}  # no advance detector
    assert CityOSAdaptive(PLAN).decide(view(0, 0, north, east, whole_lane)) == 1  # a green for nobody near
    far = {**gapped_out, "east": ApproachReading(stopline=0, vehicles=12, arriving=0)}
    assert CityOSAdaptive(PLAN).decide(view(0, 0, north, east, far)) == 0  # rests in green instead
    coming = {**gapped_out, "east": ApproachReading(stopline=0, vehicles=12, arriving=2)}
    assert CityOSAdaptive(PLAN).decide(view(0, 0, north, east, coming)) == 1  # served as they come near

    platoon = {"north": ApproachReading(stopline=3, vehicles=4, arriving=4)}  # north still discharging
    spread = {**platoon, "east": ApproachReading(stopline=0, vehicles=30)}
    assert CityOSAdaptive(PLAN).decide(view(0, 0, north, east, spread)) == 1  # whole lane: cuts the platoon
    spread["east"] = ApproachReading(stopline=0, vehicles=30, arriving=3)
    assert CityOSAdaptive(PLAN).decide(view(0, 0, north, east, spread)) == 0


def test_a_queue_reaching_beyond_the_advance_detector_counts_whole() -> None:
    assert ApproachReading(vehicles=40, halting=30, arriving=12, backlog=2).near == 32
    assert ApproachReading(vehicles=40, halting=3, arriving=12).near == 12
    assert ApproachReading(vehicles=40, halting=3, backlog=1).near == 41  # no advance detector: the approach


def test_advance_detectors_in_sumo_cover_the_end_of_long_lanes(tmp_path: Any) -> None:
    """On the city grid (links of 1-4 km) every signalised lane has an advance detector that sees a part of it."""
    pytest.importorskip("libsumo")
    from cityos.traffic.citynet import city_scenario
    from cityos.traffic.sumo import approach_specs, run_scenario

    scenario = city_scenario(tmp_path, horizon=300)
    specs = approach_specs(scenario.net)
    assert specs and all(s.advance_detector is not None for s in specs.values())
    seen: list[tuple[LaneReading, ApproachReading]] = []

    class Recorder(CityOSAdaptive):
        def decide(self, v: View) -> int:
            seen.extend((v.lanes[lane], a) for lane, a in v.approaches.items() if lane in v.lanes)
            return super().decide(v)

    result = run_scenario(scenario, "cityos", lambda x: Recorder(x.plan), seed=1)
    assert result.controller_failures == 0
    arriving = [(r, a, a.arriving) for r, a in seen if a.arriving is not None]
    assert len(arriving) == len(seen)
    assert all(near <= r.vehicles + 1 for r, _a, near in arriving)  # part of the lane (+ a tail on the edge)
    assert any(0 < near < r.vehicles for r, _a, near in arriving)  # sees some vehicles, not all of the lane
