"""Delay on the city grid with its signals decided through the platform, against fixed time (issue #15).

    uv run --frozen python bench/city_loop_bench.py                       # 600 s of the 07:30 demand
    uv run --frozen python bench/city_loop_bench.py --seconds 900 --modes zones,advance,lanes --interval 1

What it does (one JSON line on stdout, progress on stderr):

1. the city's 9×6 grid and its seeded morning demand (`citynet.city_scenario`, as `bench/traffic_bench.py`
   runs it), its 54 junctions read as the platform's signal sites (`sumo_field.read_sites`);
2. per mode, a fresh SQLite database, its own Mosquitto on a free port and the app in process: the sites'
   detector devices provisioned behind one gateway, their cabinets, and each signal registered with the
   `cityos` controller. Mode `zones`: the plans name a stop-line detector (the last 60 m) and an advance
   detector (the last 250 m; every city lane is longer) per incoming lane, and the field publishes them with the
   queue each sees; mode `advance`: advance detectors only (the platform before stop-line detectors); mode
   `lanes`: the lanes' own detectors only (before advance detectors). The field (`SumoField`, in a process of
   its own, paced to the wall clock) runs SUMO with 0.5 s steps until `--seconds` of simulated time; the
   `ControlLoop` decides every `--interval` seconds from the hub and commands phases as RPC over MQTT. SUMO's
   trip output gives the mean delay per vehicle (time loss + insertion delay, unfinished trips included, as the
   in-process bench);
3. the same network, demand, seed, step and simulated end in process (libsumo): fixed time and the `cityos`
   controller with its in-process detectors (`sumo.run_scenario`): the baseline and the in-process figure.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).parent))
from traffic_loop_bench import progress, start_mosquitto

GATEWAY = "bench-detectors"
TOPICS = "bench/devices"
STEP_S = 0.5


def run_field(spec: dict[str, Any], stop: Any, out: Any) -> None:
    """The field's process: SumoField until its simulated end (or `stop`), then what it did on `out`."""
    import threading

    from cityos.sim.sumo_field import SumoField

    street = SumoField(spec["net"], spec["routes"], spec["sites"], spec["url"], TOPICS, GATEWAY,
                       report_every=spec["report_every"], chunk=100, shared_cabinet_link=True, seed=spec["seed"],
                       end_s=spec["end_s"], sumo_args=(
                           "--tripinfo-output", str(spec["tripinfo"]), "--tripinfo-output.write-unfinished", "true",
                           "--tripinfo-output.write-undeparted", "true", "--ignore-route-errors", "true",
                           "--device.rerouting.adaptation-steps", "0"))
    try:
        street.start(spec["initial"])
        out.put({"ready": True})
        halt = threading.Event()
        threading.Thread(target=lambda: (stop.wait(), halt.set()), daemon=True).start()
        began = time.monotonic()
        street.run(halt)
        elapsed = time.monotonic() - began
        result = {"requests": len(street.requests), "acknowledged": len(street.acknowledged),
                  "rejected": len(street.rejected), "published": street.published, "steps": street.steps,
                  "elapsed_s": round(elapsed, 1), "restarts": street.restarts,
                  "sim_vs_wall": round(street.steps * STEP_S / max(elapsed, 1e-9), 3)}
    except BaseException as exc:
        out.put({"error": repr(exc)})
        raise
    finally:
        street.close()  # SUMO writes the trip output on close
    out.put(result)


async def through_platform(mode: str, args: argparse.Namespace, workdir: Path, net: Path, routes: Path,
                           sites: dict[str, Any]) -> dict[str, Any]:
    os.environ["CITYOS_INGEST_WORKERS"] = "0"
    os.environ["CITYOS_WEB"] = "0"
    os.environ["CITYOS_TRAFFIC_CONTROL_SECONDS"] = "0"  # the bench starts its own loop
    from cityos.app import create_app
    from cityos.config import Settings
    from cityos.core import migrate
    from cityos.iot.commands import CommandSender
    from cityos.iot.ingest import IngestWorker
    from cityos.iot.models import DeviceIn
    from cityos.security.policy import Principal
    from cityos.sim.sumo_field import detector_devices, plan_doc, zone_loops
    from cityos.traffic.api import command_batch_sender
    from cityos.traffic.control_loop import ControlLoop
    from cityos.traffic.models import SignalIn
    from cityos.traffic.sumo import RunResult, _read_tripinfo

    if mode == "advance":  # the platform before stop-line detectors
        sites = {signal: replace(site, stopline=()) for signal, site in sites.items()}
    elif mode == "lanes":  # the platform before advance detectors: the lanes' own detectors only
        sites = {signal: replace(site, stopline=(), advance=()) for signal, site in sites.items()}
    run_dir = workdir / mode
    run_dir.mkdir()
    broker, port = start_mosquitto(run_dir)
    url = f"mqtt://127.0.0.1:{port}"
    settings = Settings(database_url=f"sqlite:///{run_dir / 'bench.db'}")
    await asyncio.to_thread(migrate.upgrade, settings)
    app = create_app(settings)
    context = multiprocessing.get_context("spawn")
    stop, out = context.Event(), context.Queue()
    field_process: Any = None
    tripinfo = run_dir / "tripinfo.xml"
    try:
        async with app.router.lifespan_context(app):
            iot, traffic = app.state.iot, app.state.traffic
            admin = Principal("bench", kind="service", role="operator", tenant=iot.tenant)
            for site in sites.values():
                await traffic.register(admin, iot.tenant, SignalIn.model_validate(
                    {"id": site.signal, "device": site.cabinet, "controller": "cityos", "plan": plan_doc(site)}))
            devices = detector_devices(sites)
            result = await iot.provision_many(
                [DeviceIn(name=GATEWAY, profile="traffic-flow", gateway=True)]
                + [DeviceIn(name=name, profile="traffic-flow", gatewayName=GATEWAY) for name in devices]
                + [DeviceIn(name=site.cabinet, profile="traffic-signal") for site in sites.values()])
            assert not result.errors, result.errors[:3]
            worker = IngestWorker(iot, url, "bench-ingest", shared=False, prefix=TOPICS)
            answers = IngestWorker(iot, url, "bench-ingest-rpc", shared=False, prefix=TOPICS)
            answers.topics = [t for t in worker.topics if t.endswith("/rpc/response/+")]
            worker.topics = [t for t in worker.topics if t not in answers.topics]
            for each in (worker, answers):
                await each.start()
                await each.wait_connected()
            commands = CommandSender(iot, url, prefix=TOPICS)
            loop = ControlLoop(traffic, app.state.hub.service, iot.tenant, lambda: command_batch_sender(commands),
                               iot.rpc_statuses, interval=args.interval,
                               stale_after=max(3 * args.report_every, 2 * args.interval),
                               answers=iot.answer_signal)
            field_process = context.Process(target=run_field, name="sumo-field", args=(
                {"net": net, "routes": routes, "sites": sites, "url": url, "report_every": args.report_every,
                 "seed": args.seed, "end_s": float(args.seconds), "tripinfo": tripinfo,
                 "initial": {s.signal: s.plan.phases[0].state for s in sites.values()}}, stop, out))
            field_process.start()
            ready = await asyncio.to_thread(out.get, True, 300)
            assert ready.get("ready"), ready
            loop.start()  # at once: the street is running (the first round without readings runs fixed time)
            progress(f"{mode}: {len(sites)} signals, {len(devices)} detector devices "
                     f"({len(zone_loops(sites, 'advance'))} advance, {len(zone_loops(sites, 'stopline'))} stop-line), "
                     f"{args.seconds} s simulated")
            began = time.monotonic()
            street: dict[str, Any] | None = None
            while street is None:
                try:
                    street = await asyncio.to_thread(out.get, True, 20)
                except Exception:  # queue.Empty: still running
                    progress(f"  {time.monotonic() - began:.0f} s: {loop.stats.rounds} rounds, "
                             f"{loop.stats.commands} commands ({loop.stats.refused} refused), "
                             f"{loop.stats.fallback_rounds} fallback rounds, {loop.stats.advance_used} advance "
                             f"readings used, {worker.stats.readings} values stored, load {os.getloadavg()[0]:.2f}")
            progress(f"  field done: {street}")
            await loop.stop()
            assert "error" not in street, street
            await asyncio.to_thread(field_process.join, 60)
            await commands.close()
            await worker.stop()
            await answers.stop()
            progress("  platform stopped")
            measured = RunResult("city9x6", f"platform-{mode}", args.seed, args.seconds)
            _read_tripinfo(tripinfo, measured, args.seconds)
            return {**{k: v for k, v in measured.as_dict().items() if k in (
                "controller", "vehicles", "arrived", "mean_delay_s", "mean_trip_s", "throughput_veh_h")},
                "rounds": loop.stats.rounds, "commands": loop.stats.commands, "refused": loop.stats.refused,
                "acknowledged": loop.stats.acknowledged, "unacknowledged": loop.stats.unacknowledged,
                "fallback_rounds": loop.stats.fallback_rounds, "advance_used": loop.stats.advance_used,
                "stopline_used": loop.stats.stopline_used, "zones_missing": loop.stats.zones_missing, "field": street}
    finally:
        # Only while the field runs: its thread waiting on `stop` died with it, and a multiprocessing Event's
        # set() then waits for that sleeper for ever.
        if field_process is not None and field_process.is_alive():
            stop.set()
        if field_process is not None:
            field_process.join(30)
            if field_process.is_alive():
                field_process.kill()
        broker.terminate()
        broker.wait(10)


def in_process(controller: str, args: argparse.Namespace, net: Path, routes: Path) -> dict[str, Any]:
    from cityos.traffic.controllers import make_controller
    from cityos.traffic.sumo import Scenario, run_scenario

    scenario = Scenario("city9x6", net, (routes,), 0, args.seconds)
    result = run_scenario(scenario, controller, lambda x: make_controller(controller, x.plan), seed=args.seed,
                          step_length=STEP_S)
    return {k: v for k, v in result.as_dict().items() if k in (
        "controller", "vehicles", "arrived", "mean_delay_s", "mean_trip_s", "throughput_veh_h", "teleports",
        "wall_s")}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=int, default=600, help="simulated (= wall) seconds of each platform run")
    parser.add_argument("--interval", type=float, default=5.0,
                        help="the control loop's decision interval (the demo's 5 s)")
    parser.add_argument("--report-every", type=float, default=5.0,
                        help="simulated seconds between readings (the demo's 5 s)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--modes", default="zones,advance")
    args = parser.parse_args()
    from cityos.sim.sumo_field import read_sites
    from cityos.traffic.citynet import city_scenario

    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="cityos-city-loop-") as tmp:
        workdir = Path(tmp)
        scenario = city_scenario(workdir, seed=args.seed, horizon=args.seconds)
        net, routes = scenario.net, scenario.routes[0]
        sites = read_sites(net)
        platform = {}
        for mode in args.modes.split(","):
            platform[mode] = await through_platform(mode, args, workdir, net, routes, sites)
            progress(f"{mode}: {platform[mode]}")
        local = {}
        for controller in ("fixed", "cityos"):
            local[controller] = in_process(controller, args, net, routes)
            progress(f"in process {controller}: {local[controller]}")
    fixed = local["fixed"]["mean_delay_s"]
    versus = {name: round(100 * (run["mean_delay_s"] - fixed) / fixed, 1) if fixed else None
              for name, run in [*(("platform-" + m, r) for m, r in platform.items()), ("in_process-cityos",
                                                                                      local["cityos"])]}
    print(orjson.dumps({"bench": "city_loop", "seconds": args.seconds, "interval_s": args.interval,
                        "report_every_s": args.report_every, "seed": args.seed, "load_before": round(load, 2),
                        "vs_fixed_pct": versus, "platform": platform, "in_process": local}).decode())


if __name__ == "__main__":
    asyncio.run(main())
