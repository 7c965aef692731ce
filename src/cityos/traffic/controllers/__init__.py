"""Signal controllers, all asking the platform's `SignalSupervisor` for green phases.

- `fixed`: the plan's fixed-time cycle (the scenario's own program; also the fallback);
- `webster`: fixed time re-optimised every cycle from measured flows (Webster's formula);
- `actuated`: SUMO's own actuated control (run by SUMO from programs built from the same plan);
- `max-pressure`: Varaiya's max-pressure, the RESCO baseline;
- `cityos`: CityOS's adaptive controller (see `adaptive.py`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from cityos.traffic.controllers.adaptive import CityOSAdaptive
from cityos.traffic.controllers.pressure import MaxPressure
from cityos.traffic.controllers.webster import Webster
from cityos.traffic.signals import Controller, FixedTimeController, SignalPlan

CONTROLLERS = ("fixed", "webster", "actuated", "max-pressure", "cityos")


def make_controller(name: str, plan: SignalPlan, movements: Any = ()) -> Controller:
    """A controller by name for one intersection (`actuated` is SUMO's and has no Python controller)."""
    builders: dict[str, Callable[[], Controller]] = {
        "fixed": lambda: FixedTimeController(plan),
        "webster": lambda: Webster(plan),
        "max-pressure": lambda: MaxPressure(plan),
        "cityos": lambda: CityOSAdaptive(plan),
    }
    if name not in builders:
        raise KeyError(name)
    return builders[name]()
