"""Service-hall window planning: planned staffing (Erlang C per hour, checked and trimmed by ciw simulation)
against static staffing (the fewest windows, the same all day, that meet the same waits), same demand,
same seeds, same run. One JSON line.

The demand curve is a working day of a district civic centre, 09:00–17:00: a morning peak, the lunch dip
and an afternoon peak (tickets per hour below; `--scale` multiplies it). Handling times are exponential
with the given mean. Targets (REQUIREMENTS, C §9.1): mean wait ≤ 10 min, 90th percentile ≤ 20 min.

    uv run --frozen python bench/hall_bench.py [--scale 1.0] [--handling 8] [--days 20]
"""

from __future__ import annotations

import argparse
import json
import time

from cityos.livelihood.hall import planning

# Tickets per hour from 09:00 to 17:00.
DEMAND = [60, 110, 120, 70, 40, 90, 110, 70]
PEAK_HOURS = (1, 2, 6)  # 10:00, 11:00 and 15:00


def utilisation(result: planning.DayResult, windows: list[int], hours: tuple[int, ...]) -> float:
    busy = sum(result.utilisation_by_hour[h] * windows[h] for h in hours)
    return busy / sum(windows[h] for h in hours)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--handling", type=float, default=8.0, help="mean handling minutes")
    parser.add_argument("--days", type=int, default=20, help="simulated days per evaluation")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    demand = [rate * args.scale for rate in DEMAND]
    started = time.perf_counter()
    planned, planned_day = planning.plan_day(demand, args.handling, seed=args.seed, days=args.days)
    static, static_day = planning.static_staffing(demand, args.handling, seed=args.seed, days=args.days)
    static_windows = [static] * len(demand)
    erlang = [planning.windows_for(rate, args.handling) for rate in demand]
    # An independent check of both on fresh seeds (the plan was chosen on the first ones).
    check_planned = planning.simulate_day(demand, args.handling, planned, seed=args.seed + 1000, days=args.days)
    check_static = planning.simulate_day(demand, args.handling, static_windows, seed=args.seed + 1000,
                                         days=args.days)
    result = {
        "bench": "hall_planning", "demandPerHour": demand, "handlingMinutes": args.handling, "days": args.days,
        "erlangCWindows": erlang, "plannedWindows": planned, "staticWindows": static,
        "planned": {"meanWait": round(check_planned.mean_wait, 2), "p90Wait": round(check_planned.p90_wait, 2),
                    "windowHours": sum(planned), "peakUtilisation": round(utilisation(check_planned, planned,
                                                                                       PEAK_HOURS), 3),
                    "dayUtilisation": round(utilisation(check_planned, planned, tuple(range(len(demand)))), 3)},
        "static": {"meanWait": round(check_static.mean_wait, 2), "p90Wait": round(check_static.p90_wait, 2),
                   "windowHours": static * len(demand),
                   "peakUtilisation": round(utilisation(check_static, static_windows, PEAK_HOURS), 3),
                   "dayUtilisation": round(utilisation(check_static, static_windows,
                                                       tuple(range(len(demand)))), 3)},
        "windowHoursRatio": round(sum(planned) / (static * len(demand)), 3),
        "targetsMet": check_planned.mean_wait <= 10 and check_planned.p90_wait <= 20,
        "plannedSearch": {"meanWait": round(planned_day.mean_wait, 2), "p90Wait": round(planned_day.p90_wait, 2)},
        "staticSearch": {"meanWait": round(static_day.mean_wait, 2), "p90Wait": round(static_day.p90_wait, 2)},
        "seconds": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(result, ensure_ascii=False))


if __name__ == "__main__":
    main()
