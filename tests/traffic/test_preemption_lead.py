"""The platform's pre-emption (`POST /api/traffic/preemptions`, also what a dispatched fire incident sends) times
each signal by the benchmark's clear-ahead lead: its route phase's clearances from where the signal stands plus
the discharge of the queue its detectors count on the lanes that phase serves. Without a fresh reading it keeps
the fixed 25 s lead. On both backends."""

from __future__ import annotations

import datetime as dt
from typing import Any

import httpx
import pytest

from cityos.traffic.preemption import (
    CLEAR_MARGIN_S,
    LEAD_S,
    MIN_LEAD_S,
    SATURATION_HEADWAY_S,
    STARTUP_LOST_S,
)
from detector_readings import write_reading

T0 = dt.datetime(2026, 3, 3, 9, 0, tzinfo=dt.UTC)
LINKS = [{"in": "n_in", "out": "s_out"}, {"in": "s_in", "out": "n_out"},
         {"in": "e_in", "out": "w_out"}, {"in": "w_in", "out": "e_out"}]
CLEARANCE_S = 3 + 2  # yellow + all-red


def plan(prefix: str, advance: bool = False) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "phases": [{"state": "GGrr", "minGreen": 5, "maxGreen": 60, "fixedGreen": 30},
                   {"state": "rrGG", "minGreen": 5, "maxGreen": 60, "fixedGreen": 30}],
        "yellow": 3, "allRed": 2, "conflicts": [[0, 2], [0, 3], [1, 2], [1, 3]],
        "links": [{"in": f"{prefix}-{link['in']}", "out": f"{prefix}-{link['out']}"} for link in LINKS]}
    if advance:
        doc["advance"] = [{"lane": f"{prefix}-e_in", "detector": f"{prefix}-e_in-advance", "distance": 250}]
    return doc


async def preempt(client: httpx.AsyncClient, vehicle: str, signal: str, distance: float,
                  phase: int = 1) -> dict[str, Any]:
    """An ambulance at 10 m/s `distance` metres before `signal`'s stop line, asking for east-west (phase 1)."""
    answer = await client.post("/api/traffic/preemptions", json={
        "vehicle": vehicle, "speed": 10, "signals": [{"signal": signal, "phase": phase, "distance": distance}]})
    assert answer.status_code == 200, answer.text
    (entry,) = answer.json()["signals"]
    return dict(entry)


def discharge(vehicles: float) -> float:
    return STARTUP_LOST_S + vehicles * SATURATION_HEADWAY_S


async def test_the_lead_is_clear_ahead_from_the_detectors_else_fixed(client: httpx.AsyncClient,
                                                                      moving_clock: list[dt.datetime]) -> None:
    for signal, advance in (("unread", False), ("queued", False), ("empty", False), ("stale", False),
                            ("broken", False), ("advance", True), ("held", False)):
        made = await client.post("/api/traffic/signals", json={"id": signal, "controller": "fixed",
                                                               "plan": plan(signal, advance)})
        assert made.status_code == 201, made.text
    moving_clock[0] = T0 + dt.timedelta(seconds=40)  # every signal green north-south for 40 s (minimum served)
    now = moving_clock[0]
    await write_reading(client, "stale-e_in", now - dt.timedelta(seconds=120), 50.0)  # two minutes old
    moving_clock[0] = now = now + dt.timedelta(seconds=1)
    await write_reading(client, "queued-e_in", now, 50.0)   # 10 vehicles queued on the 100 m detector
    await write_reading(client, "queued-w_in", now, 20.0)   # 4 on the other lane: the fuller lane counts
    await write_reading(client, "empty-e_in", now, 0.0, speed=50.0)
    await write_reading(client, "empty-w_in", now, 0.0, speed=50.0)
    await write_reading(client, "broken-e_in", now, 250.0)  # an impossible occupancy: not a reading
    await write_reading(client, "advance-e_in", now, 0.0, speed=50.0)
    await write_reading(client, "advance-e_in-advance", now, 24.0, speed=30.0)  # 12 vehicles over the last 250 m
    await write_reading(client, "held-e_in", now, 25.0)     # 5 vehicles; the route's phase 0 is already green
    await write_reading(client, "held-n_in", now, 25.0)

    # No reading, a stale one, an impossible one: the fixed lead (eta 24 s ≤ 25 s: asked now).
    for signal in ("unread", "stale", "broken"):
        entry = await preempt(client, f"amb-{signal}", signal, 240)
        assert (entry["leadBasis"], entry["lead"], entry["outcome"]) == ("fixed", LEAD_S, "applied"), entry

    # A queue of 10: the phase comes up through yellow and all-red (minimum green served), then 10 discharge.
    queued = CLEARANCE_S + discharge(10) + CLEAR_MARGIN_S
    entry = await preempt(client, "amb-queued", "queued", 10 * (queued - 1))  # beyond 25 s, within the lead
    assert entry["leadBasis"] == "clear-ahead" and entry["lead"] == pytest.approx(queued)
    assert entry["eta"] > LEAD_S and entry["outcome"] == "applied", entry

    # Nobody queued: the detection-range floor, shorter than the fixed lead; 22 s away is not asked yet.
    entry = await preempt(client, "amb-empty", "empty", 220)
    assert (entry["leadBasis"], entry["lead"], entry["outcome"]) == ("clear-ahead", MIN_LEAD_S, "later"), entry
    assert (await client.get("/api/traffic/signals/empty")).json()["phase"] == 0

    # The advance detector sees 12 vehicles coming where the stop-line detector sees none: they count.
    entry = await preempt(client, "amb-advance", "advance", 300)
    assert entry["leadBasis"] == "clear-ahead"
    assert entry["lead"] == pytest.approx(CLEARANCE_S + discharge(12) + CLEAR_MARGIN_S)
    assert entry["outcome"] == "applied"

    # The route's phase is already green: counted as if about to be lost (clearance, the other phase's
    # minimum green, clearance back), so it is held; the fuller lane of the phase is north (5 vehicles).
    entry = await preempt(client, "amb-held", "held", 150, phase=0)
    assert entry["leadBasis"] == "clear-ahead"
    assert entry["lead"] == pytest.approx(2 * CLEARANCE_S + 5 + discharge(5) + CLEAR_MARGIN_S)
    assert entry["outcome"] == "held"  # 15 s away, within the 32 s lead: asked, and the green stays
    assert "earlyCycle" not in entry  # green 41 s + 15 s: within its 60 s maximum


async def test_a_green_its_maximum_would_end_before_the_arrival_is_cycled_early(client: httpx.AsyncClient,
                                                                              moving_clock: list[dt.datetime]) -> None:
    """North-south green for 45 s, the ambulance 20 s away asking for it: held, the 60 s maximum green would end it
    5 s before the arrival. It is ended now for east-west (5 s minimum) and comes back in 3 + 2 + 5 + 3 + 2 = 15 s."""
    for signal in ("long", "short"):
        made = await client.post("/api/traffic/signals", json={"id": signal, "controller": "fixed",
                                                               "plan": plan(signal)})
        assert made.status_code == 201, made.text
    moving_clock[0] = T0 + dt.timedelta(seconds=45)
    entry = await preempt(client, "amb-long", "long", 200, phase=0)
    assert (entry["phase"], entry["earlyCycle"], entry["outcome"]) == (1, True, "applied"), entry
    assert (await client.get("/api/traffic/signals/long")).json()["phase"] == 1
    # 12 s away: no time to come back through east-west (15 s + the 3 s margin): held to its maximum.
    entry = await preempt(client, "amb-short", "short", 120, phase=0)
    assert (entry["phase"], entry["outcome"]) == (0, "held") and "earlyCycle" not in entry, entry


async def test_a_signal_in_its_clearance_is_timed_from_what_is_left_of_it(client: httpx.AsyncClient,
                                                                           moving_clock: list[dt.datetime]) -> None:
    """A signal changing to east-west (yellow shown): the route's phase is green when the change ends."""
    assert (await client.post("/api/traffic/signals", json={"id": "changing", "controller": "fixed",
                                                            "plan": plan("changing")})).status_code == 201
    moving_clock[0] = T0 + dt.timedelta(seconds=40)
    changed = await client.post("/api/traffic/signals/changing/phase", json={"phase": 1})
    assert changed.status_code == 200, changed.text
    moving_clock[0] += dt.timedelta(seconds=1)  # 1 s into the 3 s yellow: 4 s to green
    await write_reading(client, "changing-w_in", moving_clock[0], 75.0)  # 15 vehicles
    entry = await preempt(client, "amb-changing", "changing", 300)
    assert entry["leadBasis"] == "clear-ahead"
    assert entry["lead"] == pytest.approx(CLEARANCE_S - 1 + discharge(15) + CLEAR_MARGIN_S)
