"""Signal control benchmark: every controller on the 8 RESCO scenarios and on the simulated city.

    uv run --frozen python bench/traffic_bench.py [--horizon 3600] [--seed 1] [--scenarios a,b] [--controllers x,y]

Each controller runs through the platform's safety layer (SignalSupervisor) in libsumo, on the same
scenario window and SUMO seed. Prints one JSON line: per scenario and controller the mean delay per
vehicle (timeLoss + departDelay, unfinished trips included), mean trip time, mean queue per
intersection, throughput; and the ratios the targets name (CityOS vs fixed time, vs max-pressure).
Progress goes to stderr, one line per run.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from cityos.traffic.controllers import CONTROLLERS, make_controller
from cityos.traffic.sumo import RESCO_WINDOWS, Intersection, RunResult, resco_scenario, run_scenario

CITY = "city9x6"


def run_one(scenario_name: str, controller: str, horizon: int, seed: int, workdir: Path) -> RunResult:
    if scenario_name == CITY:
        from cityos.traffic.citynet import city_scenario

        scenario = city_scenario(workdir, seed=seed, horizon=horizon)
    else:
        scenario = resco_scenario(scenario_name, horizon)
    if controller == "actuated":
        return run_scenario(scenario, controller, None, seed=seed)

    def factory(x: Intersection) -> object:
        return make_controller(controller, x.plan)

    return run_scenario(scenario, controller, factory, seed=seed,  # type: ignore[arg-type]
                        track_flows=controller == "webster")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--horizon", type=int, default=3600)
    parser.add_argument("--city-horizon", type=int, default=1800,
                        help="the city's 54-intersection network is heavier; its window is shorter")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--scenarios", default=",".join([CITY, *RESCO_WINDOWS]))
    parser.add_argument("--controllers", default=",".join(CONTROLLERS))
    args = parser.parse_args()
    started = time.perf_counter()
    results: dict[str, dict[str, dict[str, object]]] = {}
    with tempfile.TemporaryDirectory(prefix="cityos-traffic-bench-") as tmp:
        for scenario in args.scenarios.split(","):
            results[scenario] = {}
            for controller in args.controllers.split(","):
                horizon = args.city_horizon if scenario == CITY else args.horizon
                result = run_one(scenario, controller, horizon, args.seed, Path(tmp))
                results[scenario][controller] = result.as_dict()
                print(f"{scenario:13s} {controller:13s} delay {result.mean_delay_s:7.1f} s  trip "
                      f"{result.mean_trip_s:7.1f} s  queue {result.mean_queue:6.2f}  thr "
                      f"{result.throughput_veh_h:6.0f}/h  ({result.wall_s:.0f} s)", file=sys.stderr, flush=True)
    summary: dict[str, object] = {}
    beats_fixed, beats_mp, compared = 0, 0, 0
    for scenario, by_controller in results.items():
        delay = {c: float(r["mean_delay_s"]) for c, r in by_controller.items()}  # type: ignore[arg-type]
        if "cityos" in delay and "fixed" in delay and "max-pressure" in delay:
            compared += 1
            vs_fixed = 1 - delay["cityos"] / delay["fixed"] if delay["fixed"] else 0.0
            vs_mp = 1 - delay["cityos"] / delay["max-pressure"] if delay["max-pressure"] else 0.0
            beats_fixed += vs_fixed >= 0.25
            beats_mp += vs_mp > 0
            summary[scenario] = {"cityos_vs_fixed": round(vs_fixed, 3), "cityos_vs_max_pressure": round(vs_mp, 3)}
    print(json.dumps({"bench": "traffic_signals", "horizon_s": args.horizon, "city_horizon_s": args.city_horizon,
                      "seed": args.seed,
                      "results": results, "summary": summary,
                      "scenarios_cityos_25pct_below_fixed": beats_fixed,
                      "scenarios_cityos_below_max_pressure": beats_mp, "scenarios": compared,
                      "wall_s": round(time.perf_counter() - started, 1)}, ensure_ascii=False))


if __name__ == "__main__":
    main()
