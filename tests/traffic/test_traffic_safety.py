"""The safety layer never lets a controller break the timing rules, whatever the controller answers."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cityos.traffic.signals import (
    Controller,
    FixedTimeController,
    LaneReading,
    Phase,
    PlanError,
    SignalPlan,
    SignalSupervisor,
    View,
    check_reading,
    shown_greens_conflict,
    transition_states,
    validate_plan,
)

# Four links: 0 and 1 north–south, 2 and 3 east–west; north–south conflicts with east–west.
CONFLICTS = frozenset({(0, 2), (0, 3), (1, 2), (1, 3)})


def plan(min_green: float = 5, max_green: float = 30, ped: float = 0, yellow: float = 3,
         all_red: float = 2) -> SignalPlan:
    return SignalPlan(phases=(Phase("GGrr", min_green, max_green, ped, min(max_green, max(min_green, ped, 10))),
                              Phase("rrGG", min_green, max_green, 0, min(max_green, max(min_green, 10))),
                              Phase("rrGg", min_green, max_green, 0, min(max_green, max(min_green, 10)))),
                      yellow=yellow, all_red=all_red, conflicts=CONFLICTS)


class Chaos(Controller):
    """Answers from a script: phase indices, nonsense, or an exception."""

    interval = 1.0

    def __init__(self, answers: list[object]) -> None:
        self.answers = answers
        self.i = 0

    def decide(self, view: View) -> int:
        answer = self.answers[self.i % len(self.answers)]
        self.i += 1
        if answer == "raise":
            raise RuntimeError("controller bug")
        return answer  # type: ignore[return-value]


def run(supervisor: SignalSupervisor, seconds: int) -> list[str]:
    return [supervisor.tick(float(t)) for t in range(seconds)]


def audit(states: list[str], p: SignalPlan) -> None:
    """Check a shown sequence of states, one per second, link by link against the plan's rules.

    - no two conflicting links show protected green together;
    - a link leaving green shows yellow for exactly the yellow time, then red;
    - a link turns green only after the all-red time has passed since a conflicting link turned red (a
      conflicting permissive green, which yields, may stay);
    - a link's green lasts at least the shortest minimum green (pedestrian minimum included) of the
      phases that show it (the first and the last, cut by the window, excepted);
    - a phase's green (possibly merged with the clearance that leads into it) never exceeds its maximum.
    """
    width = p.links
    foes: dict[int, set[int]] = {i: set() for i in range(width)}
    for a, b in p.conflicts:
        foes[a].add(b)
        foes[b].add(a)
    shortest = {i: min((ph.earliest_end for ph in p.phases if ph.state[i] in "Gg"), default=0.0)
                for i in range(width)}
    red_since: dict[int, float] = dict.fromkeys(range(width), -1e9)
    green_since: dict[int, int | None] = dict.fromkeys(range(width), None)
    for t, state in enumerate(states):
        assert not shown_greens_conflict(state, p.conflicts), (t, state)
        prev = states[t - 1] if t else state
        for i in range(width):
            now, before = state[i], prev[i]
            if now in "Gg" and before not in "Gg" and t:
                for j in foes[i]:  # a conflicting link is red since the all-red time, or yields (g)
                    assert state[j] != "y", (t, i, j)
                    if state[j] == "r":
                        assert t - red_since[j] >= p.all_red, (t, i, j, states[max(0, t - 6):t + 1])
                green_since[i] = t
            if before in "Gg" and now not in "Gg":
                assert now == "y", (t, i, prev, state)
                start = green_since[i]
                if start is not None and start > 0:
                    assert t - start >= shortest[i], (t, i, t - start, shortest[i])
            if before == "y" and now != "y":
                assert now == "r", (t, i)
                red_since[i] = t
            if now == "y":
                run = 1
                while t - run >= 0 and states[t - run][i] == "y":
                    run += 1
                assert run <= p.yellow, (t, i)
            if before == "y" and now == "r":
                run = 1
                while t - run - 1 >= 0 and states[t - run - 1][i] == "y":
                    run += 1
                assert run == p.yellow, (t, i, run)
    greens = {ph.state: ph for ph in p.phases}
    run_state, run_length = states[0], 0
    for state in [*states, ""]:
        if state == run_state:
            run_length += 1
            continue
        if run_state in greens:
            assert run_length <= greens[run_state].max_green + p.yellow + p.all_red, (run_state, run_length)
        run_state, run_length = state, 1


answers = st.lists(st.one_of(st.integers(-3, 5), st.sampled_from(["raise", None, "1", 1.5, True])),
                   min_size=1, max_size=30)


@settings(max_examples=60, deadline=None)
@given(answers=answers, min_green=st.integers(1, 12), extra=st.integers(0, 40), ped=st.integers(0, 15),
       all_red=st.integers(0, 3), seconds=st.integers(30, 300))
def test_shown_states_respect_the_rules(answers: list[object], min_green: int, extra: int, ped: int,
                                        all_red: int, seconds: int) -> None:
    p = plan(min_green=min_green, max_green=max(min_green, ped) + extra, ped=ped, all_red=all_red)
    supervisor = SignalSupervisor(plan=p, controller=Chaos(answers))
    audit(run(supervisor, seconds), p)


def test_failing_controller_falls_back_to_fixed_time() -> None:
    p = plan()
    supervisor = SignalSupervisor(plan=p, controller=Chaos(["raise"]))
    states = run(supervisor, 200)
    assert supervisor.in_fallback and supervisor.stats.failures >= 3
    reference = SignalSupervisor(plan=p, controller=FixedTimeController(p))
    assert states == run(reference, 200)  # the fallback is exactly the fixed-time plan
    audit(states, p)


def test_nonsense_answers_count_as_failures() -> None:
    supervisor = SignalSupervisor(plan=plan(), controller=Chaos(["1", None, 7]))
    run(supervisor, 100)
    assert supervisor.in_fallback and supervisor.stats.refused >= 3


def test_command_outside_the_plan_is_refused() -> None:
    supervisor = SignalSupervisor(plan=plan(), controller=FixedTimeController(plan()))
    for bad in (3, -1, "1", 1.0, True, None):
        with pytest.raises(PlanError):
            supervisor.command(bad)
    assert supervisor.stats.refused == 6
    assert supervisor.command(2) == 2
    states = run(supervisor, 12)
    assert states[:5] == ["GGrr"] * 5  # minimum green served before the commanded change
    assert states[5] == transition_states("GGrr", "rrGg")[0] and states[-1] == "rrGg"


@pytest.mark.parametrize("bad, reason", [
    (SignalPlan(phases=(Phase("GGGr"),), conflicts=CONFLICTS), "conflicting greens"),
    (SignalPlan(phases=(Phase("GGrr", min_green=20, max_green=10, fixed_green=15),)), "max_green"),
    (SignalPlan(phases=(Phase("GGrr", pedestrian_min=40, max_green=30),)), "pedestrian"),
    (SignalPlan(phases=(Phase("GGyr"),)), "not a green phase"),
    (SignalPlan(phases=(Phase("rrrr"),)), "no green"),
    (SignalPlan(phases=(Phase("GGrr"), Phase("GGr"))), "links"),
    (SignalPlan(phases=(Phase("GGrr"),), yellow=1.0), "yellow"),
    (SignalPlan(phases=(Phase("GGrr", min_green=float("nan")),)), "finite"),
    (SignalPlan(phases=()), "1 to"),
])
def test_unsafe_plans_are_refused(bad: SignalPlan, reason: str) -> None:
    with pytest.raises(PlanError, match=reason):
        validate_plan(bad)


def test_permissive_green_may_share_a_conflict() -> None:
    validate_plan(SignalPlan(phases=(Phase("GGrg"),), conflicts=CONFLICTS))  # g yields: allowed


@pytest.mark.parametrize("reading", [
    LaneReading(vehicles=-1), LaneReading(vehicles=2, halting=3), LaneReading(mean_speed=120.0),
    LaneReading(occupancy=1.5), LaneReading(waiting=float("inf")), LaneReading(length=0),
    LaneReading(vehicles=float("nan")),
])
def test_impossible_detector_readings_are_refused(reading: LaneReading) -> None:
    with pytest.raises(PlanError):
        check_reading(reading)


@pytest.mark.parametrize("states", [
    ["GGrr"] * 6 + ["rrGG"] * 6,                                   # no yellow, no all-red
    ["GGrr"] * 6 + ["yyrr"] * 3 + ["rrGG"] * 6,                    # no all-red
    ["GGrr"] * 2 + ["yyrr"] * 3 + ["rrrr"] * 2 + ["rrGG"] * 6 + ["rryy"] * 3,   # green cut below minimum
    ["GGGr"] * 6,                                                  # conflicting protected greens
    ["GGrr"] * 40 + ["yyrr"] * 3 + ["rrrr"] * 2 + ["rrGG"],        # past maximum green
])
def test_the_audit_catches_unsafe_sequences(states: list[str]) -> None:
    with pytest.raises(AssertionError):
        audit(["rrGG"] * 6 + ["rryy"] * 3 + ["rrrr"] * 2 + states, plan())
