"""Emergency vehicle pre-emption: route → phases, and a real SUMO run with and without it (grid 4×4)."""

from __future__ import annotations

from typing import Any

import pytest
from test_traffic_safety import audit

from cityos.traffic.controllers import make_controller
from cityos.traffic.preemption import (
    Dispatch,
    GreenWave,
    RouteSignal,
    SumoGreenWaves,
    merge_requests,
    phase_serving,
    route_signals,
)
from cityos.traffic.signals import Movement
from cityos.traffic.sumo import Intersection, plans_from_net, resco_scenario, run_scenario

NS = (Movement(0, "n_0", "s_0", True), Movement(1, "s_0", "n2_0", True))
EW = (Movement(2, "w_0", "e_0", True), Movement(3, "n_0", "e_0", False))


def test_phase_serving_prefers_protected_links() -> None:
    assert phase_serving((NS, EW), "n", "s") == 0
    assert phase_serving((NS, EW), "w", "e") == 1
    assert phase_serving((NS, EW), "n", "e") == 1  # only the permissive turn serves it
    assert phase_serving((NS, EW), "e", "w") is None


def test_route_signals_in_driving_order_with_distances() -> None:
    movements = {"J1": (NS, EW), "J2": ((Movement(0, "s_0", "x_0", True),), (Movement(1, "y_0", "z_0", True),))}
    signals = route_signals(["w", "e", "q"], {"w": 120.0, "e": 80.0}, movements)
    assert signals == [RouteSignal("J1", 1, 0, 120.0)]
    signals = route_signals(["n", "s", "x"], {"n": 100.0, "s": 50.0}, movements)
    assert signals == [RouteSignal("J1", 0, 0, 100.0), RouteSignal("J2", 0, 1, 150.0)]


def test_green_wave_asks_only_within_the_lead_and_releases_passed_signals() -> None:
    wave = GreenWave("ev", [RouteSignal("A", 1, 0, 100.0), RouteSignal("B", 0, 2, 600.0)], lead_s=20.0)
    assert wave.requests(0, 0.0, 10.0) == {"A": (1, 10.0)}  # B is 60 s away
    assert wave.requests(0, 0.0, 0.0) == {"A": (1, 10.0)}  # stuck in a queue: the approach speed floor
    assert wave.requests(1, 450.0, 15.0) == {"B": (0, 10.0)}  # A passed: its controller is back
    assert wave.requests(3, 700.0, 15.0) == {}


def test_the_first_vehicle_to_arrive_wins_a_shared_signal() -> None:
    assert merge_requests([{"A": (1, 12.0)}, {"A": (0, 5.0), "B": (2, 3.0)}]) == {"A": 0, "B": 2}


def test_preemption_shortens_emergency_trips_in_sumo_and_keeps_signals_safe() -> None:
    pytest.importorskip("libsumo")
    scenario = resco_scenario("grid4x4", 600)
    plans = plans_from_net(scenario.net)
    plan = [Dispatch("ev0", 120, "A2A1", "C0B0"), Dispatch("ev1", 200, "D2D1", "D3C3")]

    def factory(x: Intersection) -> Any:
        return make_controller("fixed", x.plan)

    results = {}
    for enabled in (False, True):
        seen: dict[str, list[str]] = {}

        def record(sim: Any, now: float, seen: dict[str, list[str]] = seen) -> None:
            for tls in sim.trafficlight.getIDList():
                seen.setdefault(tls, []).append(sim.trafficlight.getRedYellowGreenState(tls))

        hook = SumoGreenWaves(scenario.net, plan, enabled=enabled)
        result = run_scenario(scenario, "fixed", factory, seed=2, on_step=record, before_tick=hook)
        for tls, states in seen.items():
            audit(states, plans[tls])  # pre-emption went through the safety layer: min green, clearances
        trips = {t["id"]: t for t in result.extra["emergency_trips"]}
        assert set(trips) == {"ev0", "ev1"} and all(t["arrival"] > 0 for t in trips.values())
        results[enabled] = (trips, hook, result)
    off, on = results[False][0], results[True][0]
    assert results[True][1].preempted > 0 and results[False][1].preempted == 0
    assert sum(t["duration"] for t in on.values()) < 0.8 * sum(t["duration"] for t in off.values())
    assert sum(t["waiting"] for t in on.values()) < sum(t["waiting"] for t in off.values())
    assert results[True][2].vehicles == results[False][2].vehicles  # the same other traffic in both runs
