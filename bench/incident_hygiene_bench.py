"""Incident hygiene: open incidents per real-world episode, and the share of incidents that are noise.

    uv run --frozen python bench/incident_hygiene_bench.py                 # 4 simulated hours, SQLite
    uv run --frozen python bench/incident_hygiene_bench.py --hours 2 --devices 300

Runs the simulated city (`cityos.sim`: its demo scenario, smog then a flood, and its fault
injection: dropouts, spikes, stuck sensors, duplicates, late readings, fast-draining batteries and
gateway outages) through the real app, in-process and accelerated: the simulator's readings go
straight to `IotService.ingest` (no broker), the clock (`cityos.core.clock`) is the simulated one,
and the device-health round runs every simulated 30 s. Rules, alarms, environment reports and
incidents are the platform's own code paths.

It runs twice on fresh SQLite databases with the same seed: correlation on (this code) and, as the
baseline, `CITYOS_INCIDENT_CORRELATION=0` (the behaviour before: radius merging only, one incident
per device fault).

Ground truth comes from the simulator, not from the platform: the injected episodes are
- each gateway outage (gateway, window) in the period;
- the pollution episode in each district (the simulator's city geometry says where an incident is);
- the flood on each river reach (river and district) during and after the rain.
An incident is attributed to an episode by its category, the place of its location in the
simulated city and its time. Traffic noise above the limit at rush hour and low oxygen in a river
are not injected but modelled by the simulator's signals: such incidents count as "modelled"
episodes per category and district, apart from the injected ones. An incident attributed to
neither is noise (a spike or stuck sensor raising a threshold alarm, a device's own fault in the
city list). Device work orders (kind "maintenance") are not city incidents with correlation on; in
the baseline every device fault is in the incident list. The rules that turn low batteries and
data-quality flags into work orders are new with correlation: `baselineOldRules` leaves their
incidents out of the baseline, which is what the incident list held before.

Reported per run: city incidents (top level, i.e. what the incident list shows), episodes hit,
incidentsPerEpisode (goal ≤ 1.2), noiseShare, missed outages, work orders, storm groups, and the
incidents by category. Prints exactly one JSON line on stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import httpx  # noqa: E402
from shapely.geometry import Point  # noqa: E402
from sqlalchemy import select  # noqa: E402

from cityos.core import clock  # noqa: E402

T0 = time.perf_counter()
STEP_S = 30.0  # simulated seconds per step: the health round's default interval
OUTAGE_SLACK = timedelta(minutes=20)  # an outage's incident may open after it ended (offline detection lags)
RIVER_METRES = 1500.0
MODELLED = ("environment.noise", "environment.water")  # the simulator's own signals, not injected faults
NEW_WORK_ORDER_CATEGORIES = ("device.data", "device.battery")


def progress(message: str) -> None:
    print(f"[{time.perf_counter() - T0:7.1f}s] {message}", file=sys.stderr, flush=True)


class Truth:
    """The injected episodes of one simulation, and where an incident belongs."""

    def __init__(self, sim: Any, start: datetime, end: datetime) -> None:
        self.sim = sim
        self.city = sim.city
        self.start, self.end = start, end
        self.outages: list[tuple[str, float, float]] = []
        for gateway in sim.deployment.gateways:
            windows = sim.outages._windows.get(gateway.name, [])
            for begin, finish in windows:
                if begin < end.timestamp() and finish > start.timestamp():
                    self.outages.append((gateway.name, begin, finish))
        self.gateway_of = {d.name: d.gateway for d in sim.deployment.devices}
        self.gateway_district = {g.name: g.district_id for g in sim.deployment.gateways}
        scenario = sim.scenario
        self.air_windows = []
        for episode in scenario.episodes:
            rings = max(self.city.hops_from(episode.origin).values(), default=0)
            hours = episode.ramp_hours + episode.hold_hours + episode.decay_hours + episode.spread_hours * rings + 1
            self.air_windows.append((episode.start, episode.start + timedelta(hours=hours)))
        self.rain_windows = [(r.start, r.start + timedelta(hours=r.hours + 6 * scenario.river_lag_hours + 2))
                             for r in scenario.rains]

    def district(self, lon: float, lat: float) -> str:
        return str(self.city.district_at(Point(lon, lat)).id)

    def reach(self, lon: float, lat: float) -> str | None:
        point = Point(lon, lat)
        best = min(self.city.rivers, key=lambda r: r.line.distance(point), default=None)
        if best is None or best.line.distance(point) * 111_000 > RIVER_METRES:
            return None
        return f"{best.id}|{self.district(lon, lat)}"

    def episode_of(self, row: Any) -> str | None:
        """The injected episode an incident row belongs to, or None (noise)."""
        at = clock.as_utc(row.reported_at)
        ts = at.timestamp()
        category = row.category
        attributes = row.attributes or {}
        if category == "network.outage" or category.startswith("device"):
            if category == "network.outage":
                segment = str(attributes.get("segment") or "")
                gateways = [segment.removeprefix("gateway:")] if segment.startswith("gateway:") else \
                    [g for g, d in self.gateway_district.items() if segment.endswith(d)]
            else:
                name = (row.entity_id or "").rsplit(":", 1)[-1]
                gateways = [self.gateway_of.get(name) or (name if name in self.gateway_district else "")]
            for gateway, begin, finish in self.outages:
                if gateway in gateways and begin <= ts <= finish + OUTAGE_SLACK.total_seconds():
                    return f"outage:{gateway}:{int(begin)}"
            return None
        if row.lon is None or row.lat is None:
            return None
        if category.startswith("environment.air"):
            for begin, finish in self.air_windows:
                if begin <= at <= finish:
                    return f"air:{self.district(row.lon, row.lat)}"
            return None
        if category.startswith("flood"):
            reach = self.reach(row.lon, row.lat)
            for begin, finish in self.rain_windows:
                if reach is not None and begin <= at <= finish:
                    return f"flood:{reach}"
            return None
        if category in MODELLED:
            return f"modelled:{category}:{self.district(row.lon, row.lat)}"
        return None


async def run(correlation: bool, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    os.environ["CITYOS_INCIDENT_CORRELATION"] = "1" if correlation else "0"
    os.environ["CITYOS_IOT_HEALTH_SECONDS"] = "0"  # the bench runs the health round on the simulated clock
    os.environ["CITYOS_INGEST_WORKERS"] = "0"
    os.environ["CITYOS_WEB"] = "0"
    os.environ.setdefault("CITYOS_ENV_NOISE_ZONE", "4a")
    url = f"sqlite:///{workdir / ('on.db' if correlation else 'off.db')}"

    from cityos.app import create_app
    from cityos.config import Settings
    from cityos.core import migrate
    from cityos.iot.health import run_once
    from cityos.iot.messages import Envelope
    from cityos.ops.incidents.correlation import kind_of
    from cityos.ops.incidents.models import incidents
    from cityos.ops.rules.api import install_default_rules
    from cityos.sim.faults import FaultConfig
    from cityos.sim.platform import PlatformClient
    from cityos.sim.runner import GATEWAY_TOPIC, SimOptions, Simulation

    settings = Settings(database_url=url)
    await asyncio.to_thread(migrate.upgrade, settings)
    start = (datetime.now(UTC) - timedelta(hours=args.hours + 1)).replace(second=0, microsecond=0)
    end = start + timedelta(hours=args.hours)
    faults = FaultConfig(gateway_outages_per_day=args.outages_per_day)
    options = SimOptions(devices=args.devices, seed=args.seed, scenario="demo", faults=faults, start=start,
                         per_gateway=args.per_gateway, speed=3600.0)
    sim = Simulation(options)
    sim_now = [start]
    clock.set_clock(lambda: sim_now[0])
    app = create_app(settings)
    steps = 0
    readings = 0
    try:
        async with app.router.lifespan_context(app):
            client = PlatformClient("http://bench")
            await client.http.aclose()
            client.http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bench",
                                            timeout=600)
            secret = await app.state.security.service.create_client("bench-simulator", "operator")
            client.use_client("bench-simulator", secret)
            await install_default_rules(app)
            await client.publish_city(sim.city)
            await client.provision(sim.deployment, sim.city)
            await client.close()
            iot = app.state.iot
            worker = app.state.environment_worker
            progress(f"correlation={'on' if correlation else 'off'}: {len(sim.deployment.devices)} devices, "
                     f"{len(sim.deployment.gateways)} gateways, {args.hours:g} simulated hours")
            ts = start.timestamp()
            while ts < end.timestamp():
                ts += STEP_S
                sim_now[0] = datetime.fromtimestamp(ts, UTC)
                messages = sim.advance(ts)
                envelopes = [Envelope(m.connection, "gateway/telemetry" if m.topic == GATEWAY_TOPIC else "telemetry",
                                      m.payload, "bench", m.topic, sim_now[0]) for m in messages]
                for first in range(0, len(envelopes), 200):
                    await iot.ingest(envelopes[first:first + 200])
                readings += sum(m.readings for m in messages)
                await run_once(iot)
                await iot.events.drain()
                await worker.drain()
                steps += 1
                if steps % 120 == 0:
                    progress(f"  simulated {sim_now[0]:%H:%M} UTC, {readings:,} readings")
            async with app.state.engine.connect() as conn:
                rows = (await conn.execute(select(incidents))).all()
    finally:
        clock.reset_clock()
    truth = Truth(sim, start, end)
    top = [r for r in rows if r.parent_id is None and r.status != "merged"]
    # What the cockpit's incident list shows: with correlation, device work orders are a separate list.
    city = [r for r in top if not (correlation and kind_of(r.category, r.dedup_key) == "maintenance")]
    orders = [r for r in top if correlation and kind_of(r.category, r.dedup_key) == "maintenance"]
    result = figures(truth, city)
    result.update(correlation=correlation, readings=readings, workOrders=len(orders), allRows=len(rows),
                  stormGroups=sum(1 for r in top if kind_of(r.category, r.dedup_key) == "storm"))
    if not correlation:
        result["baselineOldRules"] = figures(truth, [r for r in city if r.category not in NEW_WORK_ORDER_CATEGORIES])
    return result


def figures(truth: Truth, city: list[Any]) -> dict[str, Any]:
    """Incidents per episode (injected; modelled apart) and the noise share of an incident list."""
    injected: Counter[str] = Counter()
    modelled: Counter[str] = Counter()
    noise: Counter[str] = Counter()
    for row in city:
        episode = truth.episode_of(row)
        if episode is None:
            noise[row.category] += 1
        elif episode.startswith("modelled:"):
            modelled[episode] += 1
        else:
            injected[episode] += 1
    outage_keys = {f"outage:{g}:{int(b)}" for g, b, _ in truth.outages}
    both = injected + modelled
    return {
        "incidents": len(city), "episodesHit": len(injected), "injectedOutages": len(outage_keys),
        "missedOutages": sum(1 for k in outage_keys if k not in injected),
        "incidentsPerEpisode": round(sum(injected.values()) / len(injected), 3) if injected else None,
        "modelledEpisodes": len(modelled),
        "incidentsPerEpisodeAll": round(sum(both.values()) / len(both), 3) if both else None,
        "noiseShare": round(sum(noise.values()) / len(city), 3) if city else 0.0,
        "noiseByCategory": dict(noise.most_common()),
        "byCategory": dict(Counter(r.category for r in city).most_common()),
        "episodes": dict(sorted(both.items())),
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hours", type=float, default=4.0,
                        help="simulated hours (the demo scenario: smog from 0:03, a flood from ~0:30)")
    parser.add_argument("--devices", type=int, default=300)
    parser.add_argument("--per-gateway", type=int, default=30, help="devices per gateway (more gateways, more outages)")
    parser.add_argument("--outages-per-day", type=float, default=2.0,
                        help="gateway outages per gateway per day (the simulator's default is 0.5; raised so a "
                             "few hours hold several outages)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--baseline", choices=("yes", "no"), default="yes", help="also run with correlation off")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cityos-hygiene-") as tmp:
        on = await run(True, args, Path(tmp))
        off = await run(False, args, Path(tmp)) if args.baseline == "yes" else None
    result = {"bench": "incident_hygiene", "hours": args.hours, "devices": args.devices, "seed": args.seed,
              "goalIncidentsPerEpisode": 1.2, "correlation": on, "baseline": off,
              "seconds": round(time.perf_counter() - T0, 1)}
    print(json.dumps(result, ensure_ascii=False))


if __name__ == "__main__":
    asyncio.run(main())
