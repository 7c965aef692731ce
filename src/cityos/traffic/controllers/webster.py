"""Webster-optimised fixed time: cycle and splits recomputed every cycle from measured flows.

Webster (1958): optimal cycle C0 = (1.5 L + 5) / (1 − Y), where L is the lost time per cycle (the
clearance intervals) and Y the sum of the phases' critical flow ratios y = q / s (arrival flow over
saturation flow, per lane). Effective green is split in proportion to y. Flows are measured by the
lane detectors (vehicles entering each approach lane), smoothed over cycles.
"""

from __future__ import annotations

from cityos.traffic.signals import Controller, SignalPlan, View

SATURATION_VEH_S = 0.5  # 1,800 vehicles per hour of green per lane
MIN_CYCLE_S = 30.0
MAX_CYCLE_S = 120.0
SMOOTHING = 0.3  # weight of the last cycle in the flow estimate


class Webster(Controller):
    name = "webster"
    interval = 1.0

    def __init__(self, plan: SignalPlan) -> None:
        self.plan = plan
        self.greens = [p.fixed_green for p in plan.phases]
        self._counts: dict[str, float] = {}
        self._flows: dict[str, float] = {}
        self._cycle_start: float | None = None
        self._last_phase: int | None = None

    def decide(self, view: View) -> int:
        if view.phase == 0 and self._last_phase != 0:  # the first question of a new cycle
            self._new_cycle(view)
        self._last_phase = view.phase
        if view.green_elapsed + 1e-9 < self.greens[view.phase]:
            return view.phase
        return (view.phase + 1) % len(self.plan.phases)

    def _new_cycle(self, view: View) -> None:
        if self._cycle_start is not None and view.now - self._cycle_start > 1.0:
            span = view.now - self._cycle_start
            for lane, reading in view.lanes.items():
                rate = max(0.0, reading.entered - self._counts.get(lane, 0.0)) / span
                old = self._flows.get(lane)
                self._flows[lane] = rate if old is None else (1 - SMOOTHING) * old + SMOOTHING * rate
            self._recompute(view)
        self._cycle_start = view.now
        self._counts = {lane: r.entered for lane, r in view.lanes.items()}

    def _recompute(self, view: View) -> None:
        if not view.movements:
            return
        ratios = []
        for moves in view.movements:
            lanes = {m.in_lane for m in moves}
            ratios.append(max((self._flows.get(lane, 0.0) / SATURATION_VEH_S for lane in lanes), default=0.0))
        total = min(0.9, sum(ratios))
        lost = len(self.plan.phases) * (self.plan.yellow + self.plan.all_red)
        cycle = (1.5 * lost + 5.0) / (1.0 - total)
        cycle = min(MAX_CYCLE_S, max(MIN_CYCLE_S, cycle, lost + sum(p.earliest_end for p in self.plan.phases)))
        effective = cycle - lost
        weights = [max(r, 0.02) for r in ratios]
        scale = sum(weights)
        self.greens = [min(p.max_green, max(p.earliest_end, effective * w / scale))
                       for p, w in zip(self.plan.phases, weights, strict=True)]
