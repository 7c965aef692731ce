"""Max-pressure control (Varaiya 2013), the RESCO benchmark's baseline.

Every decision (5 s), the phase whose movements have the largest pressure, the vehicles on the
incoming lane minus the vehicles on the outgoing lane summed over the phase's movements, gets green.
"""

from __future__ import annotations

from cityos.traffic.signals import Controller, SignalPlan, View


class MaxPressure(Controller):
    name = "max-pressure"
    interval = 5.0

    def __init__(self, plan: SignalPlan) -> None:
        self.plan = plan

    def decide(self, view: View) -> int:
        best, best_pressure = view.phase, float("-inf")
        for index, moves in enumerate(view.movements):
            pressure = 0.0
            for move in moves:
                incoming = view.lanes.get(move.in_lane)
                outgoing = view.lanes.get(move.out_lane)
                pressure += (incoming.vehicles if incoming else 0.0) - (outgoing.vehicles if outgoing else 0.0)
            if pressure > best_pressure or (pressure == best_pressure and index == view.phase):
                best, best_pressure = index, pressure
        return best
