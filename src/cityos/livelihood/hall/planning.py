"""Window planning for the service hall: Erlang C per hour, checked by discrete-event simulation (ciw).

Erlang C (M/M/c) answers "how many windows keep the wait under the target at this hour's demand"; the
day is not stationary (queues carry over from one hour to the next), so the plan is then simulated
for the whole day with time-varying arrivals and staffing, and windows are added where the simulated
waits still miss the target. Times are in minutes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import ciw

MAX_WINDOWS = 200


def erlang_c(servers: int, load: float) -> float:
    """The probability that an arrival waits, for `servers` windows and `load` = λ/μ Erlangs (< servers)."""
    if servers <= load:
        return 1.0
    # Erlang B by its stable recursion, then C from B.
    blocking = 1.0
    for k in range(1, servers + 1):
        blocking = load * blocking / (k + load * blocking)
    return servers * blocking / (servers - load * (1 - blocking))


def mean_wait(servers: int, arrivals_per_minute: float, service_minutes: float) -> float:
    """Mean time in queue (minutes) of an M/M/c queue; infinite when the windows cannot keep up."""
    load = arrivals_per_minute * service_minutes
    if servers <= load:
        return math.inf
    return erlang_c(servers, load) * service_minutes / (servers - load)


def wait_exceeds(servers: int, arrivals_per_minute: float, service_minutes: float, minutes: float) -> float:
    """P(wait > minutes) in an M/M/c queue."""
    load = arrivals_per_minute * service_minutes
    if servers <= load:
        return 1.0
    return erlang_c(servers, load) * math.exp(-(servers - load) * minutes / service_minutes)


def windows_for(arrivals_per_hour: float, service_minutes: float, target_mean: float = 10.0,
                target_p90: float = 20.0) -> int:
    """The fewest windows whose steady state meets both targets (at least one)."""
    rate = arrivals_per_hour / 60.0
    for servers in range(1, MAX_WINDOWS + 1):
        if (mean_wait(servers, rate, service_minutes) <= target_mean
                and wait_exceeds(servers, rate, service_minutes, target_p90) <= 0.10):
            return servers
    raise ValueError(f"more than {MAX_WINDOWS} windows needed for {arrivals_per_hour}/h")


@dataclass(frozen=True)
class DayResult:
    mean_wait: float
    p90_wait: float
    served: int
    window_hours: int
    utilisation_by_hour: list[float]
    mean_wait_by_hour: list[float]


def staffing_schedule(windows: list[int], horizon: float) -> ciw.Schedule | int:
    """ciw's staffing for `windows[h]` windows in hour h. Equal neighbouring hours are one shift: at a shift
    change ciw relieves every window (a busy one finishes its client first), which must not happen where
    nothing changes. The last hour's windows stay open after closing until the queue is empty."""
    if len(set(windows)) == 1:
        return windows[0]
    counts: list[int] = []
    ends: list[float] = []
    for hour, count in enumerate(windows):
        if counts and counts[-1] == count:
            ends[-1] = 60.0 * (hour + 1)
        else:
            counts.append(count)
            ends.append(60.0 * (hour + 1))
    ends[-1] = horizon
    return ciw.Schedule(numbers_of_servers=counts, shift_end_dates=ends)


def simulate_day(arrivals_per_hour: list[float], service_minutes: float, windows: list[int],
                 seed: int = 1, days: int = 1) -> DayResult:
    """Simulate `days` identical days with ciw: Poisson arrivals at each hour's rate, exponential handling,
    `windows[h]` windows open in hour h; the queue left at closing is served (no new arrivals)."""
    hours = len(arrivals_per_hour)
    if len(windows) != hours or hours == 0:
        raise ValueError("one window count per hour is needed")
    waits: list[float] = []
    by_hour: list[list[float]] = [[] for _ in range(hours)]
    busy = [0.0] * hours
    for day in range(days):
        rates = [max(rate, 1e-9) / 60.0 for rate in arrivals_per_hour] + [1e-9]
        endpoints = [60.0 * (h + 1) for h in range(hours)] + [60.0 * hours + 600]
        schedule = staffing_schedule(windows, 60.0 * hours + 600)
        network = ciw.create_network(
            arrival_distributions=[ciw.dists.PoissonIntervals(rates=rates, endpoints=endpoints,
                                                              max_sample_date=60.0 * hours)],
            service_distributions=[ciw.dists.Exponential(rate=1.0 / service_minutes)],
            number_of_servers=[schedule])
        ciw.seed(seed + day)
        simulation = ciw.Simulation(network)
        simulation.simulate_until_max_time(60.0 * hours + 600)
        for record in simulation.get_all_records():
            waits.append(record.waiting_time)
            hour = min(int(record.arrival_date // 60), hours - 1)
            by_hour[hour].append(record.waiting_time)
            start, end = record.service_start_date, record.service_end_date
            for h in range(int(start // 60), min(int(end // 60), hours - 1) + 1):
                if 0 <= h < hours:
                    busy[h] += max(0.0, min(end, 60.0 * (h + 1)) - max(start, 60.0 * h))
    waits.sort()
    p90 = waits[int(0.9 * (len(waits) - 1))] if waits else 0.0
    utilisation = [busy[h] / (60.0 * windows[h] * days) if windows[h] else 0.0 for h in range(hours)]
    return DayResult(sum(waits) / len(waits) if waits else 0.0, p90, len(waits), sum(windows), utilisation,
                     [sum(w) / len(w) if w else 0.0 for w in by_hour])


def plan_day(arrivals_per_hour: list[float], service_minutes: float, target_mean: float = 10.0,
             target_p90: float = 20.0, seed: int = 1, days: int = 5) -> tuple[list[int], DayResult]:
    """Windows per hour: Erlang C for each hour, then one more window where the simulated day still misses
    its target (the hour with the longest mean wait first), until the simulated day meets both targets."""
    windows = [windows_for(rate, service_minutes, target_mean, target_p90) for rate in arrivals_per_hour]
    for _ in range(4 * len(windows)):
        result = simulate_day(arrivals_per_hour, service_minutes, windows, seed, days)
        if meets(result, target_mean, target_p90):
            return trim(arrivals_per_hour, service_minutes, windows, result, target_mean, target_p90, seed, days)
        worst = max(range(len(windows)), key=lambda h: result.mean_wait_by_hour[h])
        windows[worst] += 1
    raise ValueError("no plan met the targets")


def meets(result: DayResult, target_mean: float, target_p90: float) -> bool:
    """The day's targets, and no hour whose arrivals wait on average more than the target (a plan must not buy
    a good day's average with one hour of long queues)."""
    return (result.mean_wait <= target_mean and result.p90_wait <= target_p90
            and all(wait <= target_mean for wait in result.mean_wait_by_hour))


def trim(arrivals_per_hour: list[float], service_minutes: float, windows: list[int], result: DayResult,
         target_mean: float, target_p90: float, seed: int, days: int) -> tuple[list[int], DayResult]:
    """Take windows away, the least used hour first, while the simulated day still meets its targets:
    per-hour Erlang C ignores that a queue drains into the next hour, so it plans more than needed."""
    improved = True
    while improved:
        improved = False
        for hour in sorted(range(len(windows)), key=lambda h: result.utilisation_by_hour[h]):
            if windows[hour] <= 1:
                continue
            trial = [*windows]
            trial[hour] -= 1
            attempt = simulate_day(arrivals_per_hour, service_minutes, trial, seed, days)
            if meets(attempt, target_mean, target_p90):
                windows, result, improved = trial, attempt, True
                break
    return windows, result


def static_staffing(arrivals_per_hour: list[float], service_minutes: float, target_mean: float = 10.0,
                    target_p90: float = 20.0, seed: int = 1, days: int = 5) -> tuple[int, DayResult]:
    """The fewest windows, the same all day, that meet the same targets in the same simulation."""
    low = windows_for(sum(arrivals_per_hour) / len(arrivals_per_hour), service_minutes, target_mean, target_p90)
    for servers in range(low, MAX_WINDOWS + 1):
        result = simulate_day(arrivals_per_hour, service_minutes, [servers] * len(arrivals_per_hour), seed, days)
        if meets(result, target_mean, target_p90):
            return servers, result
    raise ValueError("no static staffing met the targets")
