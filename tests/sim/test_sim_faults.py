"""Fault injection rates come out roughly as configured, and gateway outages end in a backfill."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson

from cityos.sim.devices import load_profiles
from cityos.sim.faults import FaultConfig, FaultInjector, GatewayOutages
from cityos.sim.runner import GATEWAY_TOPIC, SimOptions, Simulation

START = datetime(2026, 11, 23, 0, 0, tzinfo=UTC)


def test_fault_rates_roughly_as_configured() -> None:
    config = FaultConfig(dropout=0.05, spike=0.02, stuck=0.001, stuck_readings=10, duplicate=0.03,
                         out_of_order=0.04)
    injector = FaultInjector(config, seed=1)
    profile = load_profiles()["air-quality"]
    n = 40_000
    out = []
    for i in range(n):
        device = f"dev-{i % 200}"
        out.extend(injector.apply(device, i * 1000, {"pm25": 10.0 + i % 7, "no2": 20.0}, profile))
    counts = injector.counts
    assert counts["readings"] == n
    assert abs(counts["dropout"] / n - 0.05) < 0.01
    assert abs(counts["spike"] / n - 0.02) < 0.006
    assert abs(counts["duplicate"] / n - 0.03 * 0.95) < 0.008
    # Frozen sensors: about stuck × stuck_readings of all readings.
    assert 0.004 < counts["stuck"] / n < 0.02
    duplicates = sum("duplicate" in r.flags for r in out)
    late = [r for r in out if "late" in r.flags]
    assert duplicates == counts["duplicate"]
    assert abs(len(late) / n - 0.04 * 0.9) < 0.01
    # A late reading really is sent after a newer one of the same device.
    seen: dict[str, int] = {}
    inversions = 0
    for r in out:
        if r.ts_ms < seen.get(r.device, -1):
            inversions += 1
        seen[r.device] = max(seen.get(r.device, -1), r.ts_ms)
    assert inversions == len(late)


def test_no_faults_means_clean_stream() -> None:
    injector = FaultInjector(FaultConfig.none(), seed=1)
    profile = load_profiles()["noise"]
    out = [r for i in range(5000) for r in injector.apply("d", i, {"laeq": 50.0}, profile)]
    assert len(out) == 5000 and not any(r.flags for r in out)


def test_fast_drain_share() -> None:
    injector = FaultInjector(FaultConfig(fast_drain=0.1), seed=3)
    chosen = injector.fast_drain_devices([f"d{i}" for i in range(5000)])
    assert 400 < len(chosen) < 600


def test_gateway_outage_is_followed_by_backfill_with_original_timestamps() -> None:
    config = FaultConfig(dropout=0, spike=0, stuck=0, duplicate=0, out_of_order=0, fast_drain=0,
                         gateway_outages_per_day=24, outage_minutes=(20, 40))
    sim = Simulation(SimOptions(devices=60, seed=9, start=START, faults=config, scenario="none"))
    outages = GatewayOutages(config, 9, START.timestamp())
    gateway = sim.deployment.gateways[0].name
    down = sum(outages.is_down(gateway, START.timestamp() + k * 60) for k in range(24 * 60))
    assert 0.2 < down / (24 * 60) < 0.8  # ~24 outages of ~30 min a day
    backfilled = 0
    ts = START.timestamp()
    for _ in range(8 * 12):
        ts += 300
        for m in sim.advance(ts):
            if m.topic == GATEWAY_TOPIC and m.backfill:
                backfilled += m.backfill
                body = orjson.loads(m.payload)
                oldest = min(r["ts"] for rs in body.values() for r in rs)
                assert oldest < ts * 1000 - 5 * 60_000  # original timestamps, not the sending time
    assert backfilled > 0
