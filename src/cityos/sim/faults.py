"""Fault injection: what real fleets do to a platform.

City plans report 8% of hardware failing each year and up to 30% of environmental data missing,
so the platform must be tested against dropouts, spikes, stuck sensors, duplicates, late messages,
flat batteries and gateways that go offline and then send hours of buffered readings at once.
Every decision comes from a per-device (or per-gateway) random stream, so a seed replays the same faults.
"""

# ruff: noqa: S311  (seeded, reproducible simulation randomness; nothing here is a secret)

from __future__ import annotations

import bisect
import random
from dataclasses import dataclass, field
from typing import Any

from cityos.sim.devices import Profile


@dataclass(frozen=True)
class FaultConfig:
    dropout: float = 0.01  # share of readings that never leave the device
    spike: float = 0.002  # share of readings with one value multiplied 5–20× (often outside the profile range)
    stuck: float = 0.0005  # chance per reading that a sensor freezes and repeats itself
    stuck_readings: int = 15  # how long a frozen sensor repeats its last values
    duplicate: float = 0.005  # share of readings sent twice (QoS 1 redelivery, firmware retries)
    out_of_order: float = 0.005  # share of readings held back and sent after the next one
    fast_drain: float = 0.01  # share of devices whose battery empties in about a day
    gateway_outages_per_day: float = 0.5  # per gateway; each outage buffers readings for a backfill
    outage_minutes: tuple[float, float] = (10.0, 90.0)

    @classmethod
    def none(cls) -> FaultConfig:
        return cls(dropout=0, spike=0, stuck=0, duplicate=0, out_of_order=0, fast_drain=0, gateway_outages_per_day=0)


@dataclass(frozen=True)
class Reading:
    device: str
    ts_ms: int
    values: dict[str, Any]
    flags: frozenset[str] = frozenset()  # spike, stuck, duplicate, late, backfill: what the injector did


@dataclass
class _DeviceFaults:
    rng: random.Random
    stuck_left: int = 0
    last: dict[str, Any] | None = None
    held: Reading | None = None


class FaultInjector:
    def __init__(self, config: FaultConfig, seed: int) -> None:
        self.config = config
        self.seed = seed
        self._devices: dict[str, _DeviceFaults] = {}
        self.counts: dict[str, int] = dict.fromkeys(("readings", "dropout", "spike", "stuck", "duplicate", "late"), 0)

    def fast_drain_devices(self, names: list[str]) -> frozenset[str]:
        rng = random.Random(f"fast-drain:{self.seed}")
        return frozenset(n for n in sorted(names) if rng.random() < self.config.fast_drain)

    def _state(self, device: str) -> _DeviceFaults:
        state = self._devices.get(device)
        if state is None:
            state = self._devices[device] = _DeviceFaults(random.Random(f"faults:{self.seed}:{device}"))
        return state

    def apply(self, device: str, ts_ms: int, values: dict[str, Any], profile: Profile) -> list[Reading]:
        """What leaves the device for one true reading: nothing, it, it twice, or it and an older held one."""
        cfg = self.config
        st = self._state(device)
        rng = st.rng
        self.counts["readings"] += 1
        # Draw every decision every time, so one fault's rate does not shift another's random stream.
        draws = [rng.random() for _ in range(5)]
        flags: set[str] = set()
        if st.stuck_left > 0 and st.last is not None:
            st.stuck_left -= 1
            values = dict(st.last)
            flags.add("stuck")
        elif draws[0] < cfg.stuck and st.last is not None:
            st.stuck_left = cfg.stuck_readings - 1
            values = dict(st.last)
            flags.add("stuck")
        else:
            st.last = dict(values)
        if draws[1] < cfg.spike:
            spiked = _spiked(rng, values, profile)
            if spiked is not None:
                values = spiked
                flags.add("spike")
        for flag in flags:
            self.counts[flag] += 1
        if draws[2] < cfg.dropout:
            self.counts["dropout"] += 1
            return []
        out = [Reading(device, ts_ms, values, frozenset(flags))]
        if draws[3] < cfg.duplicate:
            self.counts["duplicate"] += 1
            out.append(Reading(device, ts_ms, values, frozenset({*flags, "duplicate"})))
        if st.held is not None:
            out.append(st.held)
            st.held = None
        elif draws[4] < cfg.out_of_order:
            self.counts["late"] += 1
            first = out.pop(0)
            st.held = Reading(first.device, first.ts_ms, first.values, frozenset({*first.flags, "late"}))
        return out


def _spiked(rng: random.Random, values: dict[str, Any], profile: Profile) -> dict[str, Any] | None:
    keys = [k for k, v in values.items()
            if k != "battery" and isinstance(v, int | float) and not isinstance(v, bool) and v]
    if not keys:
        return None
    key = rng.choice(sorted(keys))
    spiked = dict(values)
    spec = profile.attributes.get(key)
    factor = rng.uniform(5, 20)
    value = values[key] * factor
    if spec is not None and spec.high is not None and rng.random() < 0.5:
        value = spec.high * rng.uniform(1.1, 2.0)  # half the spikes are impossible values outright
    spiked[key] = round(value, 3)
    return spiked


@dataclass
class GatewayOutages:
    """When each gateway is offline: a Poisson process of outages, generated lazily per gateway."""

    config: FaultConfig
    seed: int
    start_ts: float
    _windows: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    _rngs: dict[str, random.Random] = field(default_factory=dict)

    def is_down(self, gateway: str, ts: float) -> bool:
        rate_per_s = self.config.gateway_outages_per_day / 86400
        if rate_per_s <= 0:
            return False
        windows = self._windows.setdefault(gateway, [])
        rng = self._rngs.setdefault(gateway, random.Random(f"outages:{self.seed}:{gateway}"))
        while not windows or windows[-1][1] < ts:
            begin = (windows[-1][1] if windows else self.start_ts) + rng.expovariate(rate_per_s)
            low, high = self.config.outage_minutes
            windows.append((begin, begin + 60 * rng.uniform(low, high)))
        i = bisect.bisect_right(windows, (ts, float("inf"))) - 1
        return i >= 0 and windows[i][0] <= ts < windows[i][1]
