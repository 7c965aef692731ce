"""Signal control through the platform against in process: decision-to-actuation latency for N signals.

    uv run python bench/traffic_loop_bench.py                   # 20 signals, 60 s, decisions every second
    uv run python bench/traffic_loop_bench.py --signals 500 --interval 5 --seconds 180

What it does (one JSON line on stdout, progress on stderr):

1. starts its own Mosquitto on a free port of 127.0.0.1 (a throwaway broker, not a shared one), a fresh
   SQLite database in a temporary directory (or --database-url), and the app in process with one MQTT
   ingest worker;
2. builds N separate four-arm junctions in libsumo (east-west traffic every 2.5 s each way, north-south
   every 6 s), provisions per junction 8 `traffic-flow` detector devices (one per lane, behind one detector
   gateway) and a `traffic-signal` cabinet, and registers each signal with the `cityos` controller;
3. the field is `cityos.sim.sumo_field.SumoField` in a process of its own (so that stepping SUMO for N
   junctions never holds the platform's event loop or its interpreter lock): SUMO paced to the wall clock,
   the detector gateway publishing every lane's reading every --report-every simulated seconds, the
   cabinets (all on one MQTT connection: a process cannot hold 500 paho clients) showing each `setPhase`
   at once in SUMO and acknowledging it on the cabinet's own topic. The platform only ever
   sees MQTT. For --seconds the `ControlLoop` decides every --interval seconds from the hub and commands
   phases as RPC. decision→actuation = the loop's decision until the cabinet set the lamps in SUMO (both
   on the machine's monotonic clock); decision→ack = until the loop saw the acknowledgement in the database;
4. in process, same junctions and controller, the supervisor ticking every simulated second against
   libsumo (as bench/traffic_bench.py runs): decision→actuation = `tick` deciding a change until
   `setRedYellowGreenState` returned.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

GATEWAY = "bench-detectors"
PERIOD_EW_S, PERIOD_NS_S = 2.5, 6.0  # a vehicle every … seconds each way, east-west and north-south
TOPICS = "bench/devices"


def bench_plan(plan: Any) -> Any:
    """The plan both paths run: the junction's greens, 5 s minimum, 40 s maximum, 20 s fixed green."""
    from dataclasses import replace

    return replace(plan, phases=tuple(replace(p, min_green=5.0, max_green=40.0, fixed_green=20.0)
                                      for p in plan.phases))


def progress(*args: Any) -> None:
    print(*args, file=sys.stderr, flush=True)


def percentile(values: list[float], share: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(share * len(ordered)))], 3)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_mosquitto(workdir: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    conf = workdir / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                    "max_inflight_messages 0\nmax_queued_messages 100000\n")
    broker = subprocess.Popen(["mosquitto", "-c", str(conf)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    for _ in range(100):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return broker, port
        time.sleep(0.05)
    broker.kill()
    raise RuntimeError("mosquitto did not start")


SATURATION_VEH_S = 0.5  # a green lane's discharge (one vehicle every 2 s)
QUEUE_SPACING_M = 7.5  # a queued car and its gap, on the 100 m detector


def queue_field_class() -> Any:
    """`QueueField`: SumoField's cabinets and detector gateway (the same MQTT, the same acknowledgements), with
    the street a point-queue model instead of SUMO. For N junctions where SUMO cannot keep the wall clock."""
    from cityos.sim.sumo_field import STEP_S, SumoField

    class QueueField(SumoField):
        """Each incoming lane a queue: vehicles arrive at the lane's rate and leave at `SATURATION_VEH_S` while
        one of its links shows green; readings are occupancy (queue × 7.5 m over 100 m), speed (3 km/h when
        two or more queue, else 40) and the vehicles entered since the last reading."""

        arrivals: dict[str, float]  # incoming lane → vehicles per second

        def _start_sumo(self) -> None:
            for tls, state in self._lamps.items():
                self._show(tls, state)
            self._queue = dict.fromkeys(self._lanes, 0.0)
            self._arrived = dict.fromkeys(self._lanes, 0.0)
            self._counted = dict.fromkeys(self._lanes, 0)
            self._greens = {site.tls: [(lane, [k for k, (in_lane, _) in enumerate(site.links) if in_lane == lane],
                                        [out for in_lane, out in site.links if in_lane == lane])
                                       for lane in site.in_lanes] for site in self.sites.values()}

        def _set_lamps(self, tls: str, state: str) -> None:
            pass  # the lamps are `_lamps`, which `step` reads

        def _close_street(self) -> None:
            pass

        def step(self) -> None:
            self.steps += 1
            for tls, lanes in self._greens.items():
                state = self._lamps[tls]
                for lane, links, outs in lanes:
                    before = int(self._arrived[lane])
                    self._arrived[lane] += self.arrivals.get(lane, 0.0) * STEP_S
                    self._counted[lane] += int(self._arrived[lane]) - before
                    self._queue[lane] += int(self._arrived[lane]) - before
                    if any(state[k] in "Gg" for k in links):
                        served = min(self._queue[lane], SATURATION_VEH_S * STEP_S)
                        self._queue[lane] -= served
                        for out in outs:
                            before = int(self._arrived[out])
                            self._arrived[out] += served / len(outs)
                            self._counted[out] += int(self._arrived[out]) - before

        def readings(self) -> dict[str, dict[str, float]]:
            values = {}
            for lane in self._lanes:
                queued = self._queue[lane]
                values[lane] = {"occupancy": round(min(100.0, queued * QUEUE_SPACING_M), 2),
                                "speed": 3.0 if queued >= 2 else 40.0, "intensity": self._counted[lane]}
                self._counted[lane] = 0
            for device, zone in self._zones.items():  # stop-line zones (`--stopline`; no lane here is long
                # enough for an advance detector): the front of the queue, 5 m cars 7.5 m apart
                cars = min(self._queue[zone.lane], zone.distance / QUEUE_SPACING_M)
                values[device] = {"occupancy": round(100.0 * cars * 5.0 / zone.distance, 2),
                                  "speed": 3.0 if cars >= 2 else 40.0,
                                  "queue": round(cars * QUEUE_SPACING_M, 1), "intensity": 0}
            return values

        def sample_edges(self) -> None:
            pass

    return QueueField


def run_field(spec: dict[str, Any], stop: Any, out: Any) -> None:
    """The field's process: SumoField until `stop`, then what it did on `out` (ready first)."""
    import threading

    from cityos.sim.sumo_field import SumoField

    field_class = queue_field_class() if spec["queues"] else SumoField
    street = field_class(spec["net"], spec["routes"], spec["sites"], spec["url"], TOPICS, GATEWAY,
                         report_every=spec["report_every"], chunk=100, shared_cabinet_link=True)
    street.arrivals = spec["arrivals"]
    try:
        street.start(spec["initial"])
        out.put({"ready": True})
        halt = threading.Event()
        threading.Thread(target=lambda: (stop.wait(), halt.set()), daemon=True).start()
        began = time.monotonic()
        street.run(halt)
        elapsed = time.monotonic() - began
        out.put({"actuated": street.actuated, "requests": len(street.requests),
                 "acknowledged": len(street.acknowledged), "rejected": len(street.rejected),
                 "published": street.published, "steps": street.steps, "elapsed_s": round(elapsed, 1),
                 "restarts": street.restarts})
    except BaseException as exc:
        out.put({"error": repr(exc)})
        raise
    finally:
        street.close()


def run_readings_ingest(database_url: str, url: str, stop: Any, out: Any) -> None:
    """A dedicated readings ingest process (deploy/iot.md): the platform's MQTT ingest worker for the detectors'
    readings, on the same database, so that their parsing and commits share no interpreter with the loop."""
    os.environ["CITYOS_INGEST_WORKERS"] = "0"
    os.environ["CITYOS_WEB"] = "0"
    os.environ["CITYOS_TRAFFIC_CONTROL_SECONDS"] = "0"

    async def main() -> None:
        from cityos.app import create_app
        from cityos.config import Settings
        from cityos.iot.ingest import IngestWorker

        app = create_app(Settings(database_url=database_url))
        async with app.router.lifespan_context(app):
            worker = IngestWorker(app.state.iot, url, "bench-ingest", shared=False, prefix=TOPICS)
            worker.topics = [t for t in worker.topics if not t.endswith("/rpc/response/+")]
            await worker.start()
            await worker.wait_connected()
            out.put({"ready": True})
            await asyncio.to_thread(stop.wait)
            await worker.stop()
            out.put({"readings": worker.stats.readings})

    asyncio.run(main())


async def through_platform(args: argparse.Namespace, workdir: Path, net: Path, routes: Path) -> dict[str, Any]:
    os.environ["CITYOS_INGEST_WORKERS"] = "0"
    os.environ["CITYOS_WEB"] = "0"
    os.environ["CITYOS_TRAFFIC_CONTROL_SECONDS"] = "0"  # the bench starts its own loop
    from dataclasses import replace

    from cityos.app import create_app
    from cityos.config import Settings
    from cityos.core import migrate
    from cityos.iot.commands import CommandSender
    from cityos.iot.ingest import IngestWorker
    from cityos.iot.models import DeviceIn
    from cityos.security.policy import Principal
    from cityos.sim.sumo_field import STEP_S, detector_devices, plan_doc, read_sites
    from cityos.traffic.api import command_batch_sender
    from cityos.traffic.control_loop import ControlLoop
    from cityos.traffic.models import SignalIn

    broker, port = start_mosquitto(workdir)
    url = f"mqtt://127.0.0.1:{port}"
    settings = Settings(database_url=args.database_url or f"sqlite:///{workdir / 'bench.db'}")
    await asyncio.to_thread(migrate.upgrade, settings)
    # The measured figures so far had the lanes' detectors only; `--stopline` adds a stop-line device per
    # incoming lane (half as many readings again), as the demo and the city loop bench now have.
    sites = {signal: replace(site, plan=bench_plan(site.plan), stopline=site.stopline if args.stopline else ())
             for signal, site in read_sites(net).items()}
    app = create_app(settings)
    context = multiprocessing.get_context("spawn")
    stop, out = context.Event(), context.Queue()
    field_process: Any = None
    ingest_process: Any = None
    try:
        async with app.router.lifespan_context(app):
            iot, traffic = app.state.iot, app.state.traffic
            admin = Principal("bench", kind="service", role="operator", tenant=iot.tenant)
            for site in sites.values():
                spec = {"id": site.signal, "device": site.cabinet, "controller": "cityos",
                        "plan": plan_doc(site, yellow=3, all_red=2)}
                await traffic.register(admin, iot.tenant, SignalIn.model_validate(spec))
            lanes = detector_devices(sites)  # the lanes' detectors, then any stop-line and advance detectors
            result = await iot.provision_many(
                [DeviceIn(name=GATEWAY, profile="traffic-flow", gateway=True)]
                + [DeviceIn(name=lane, profile="traffic-flow", gatewayName=GATEWAY) for lane in lanes]
                + [DeviceIn(name=site.cabinet, profile="traffic-signal") for site in sites.values()])
            assert not result.errors, result.errors[:3]
            # One ingest worker, as a deployment runs it: the cabinets' answers take its lane for answers, so an
            # acknowledgement never waits behind thousands of readings. With --ingest-process the readings
            # go to a worker in another process and this one takes the answers only.
            worker = IngestWorker(iot, url, "bench-ingest", shared=False, prefix=TOPICS)
            answers = IngestWorker(iot, url, "bench-ingest-rpc", shared=False, prefix=TOPICS)
            answers.topics = [t for t in worker.topics if t.endswith("/rpc/response/+")]
            ingest_out = context.Queue()
            if args.ingest_process:
                ingest_process = context.Process(target=run_readings_ingest, name="readings-ingest",
                                                 args=(settings.database_url, url, stop, ingest_out))
                ingest_process.start()
                assert (await asyncio.to_thread(ingest_out.get, True, 300)).get("ready")
            for each in (answers,) if args.ingest_process else (worker,):
                await each.start()
                await each.wait_connected()
            commands = CommandSender(iot, url, prefix=TOPICS)
            field_process = context.Process(target=run_field, name="sumo-field", args=(
                {"net": net, "routes": routes, "sites": sites, "url": url, "report_every": args.report_every,
                 "initial": {s.signal: s.plan.phases[0].state for s in sites.values()},
                 "queues": args.field == "queues", "arrivals": {
                     lane: 1 / (PERIOD_EW_S if lane.split("_")[1] in "ew" else PERIOD_NS_S)
                     for site in sites.values() for lane in site.in_lanes}}, stop, out))
            field_process.start()
            ready = await asyncio.to_thread(out.get, True, 300)
            assert ready.get("ready"), ready
            stale = max(3 * args.report_every, 2 * args.interval)
            loop = ControlLoop(traffic, app.state.hub.service, iot.tenant, lambda: command_batch_sender(commands),
                               iot.rpc_statuses, interval=args.interval, stale_after=stale,
                               answers=iot.answer_signal)
            progress(f"platform: {len(sites)} signals, {len(lanes)} detector lanes, {args.seconds:g} s")
            await asyncio.sleep(args.report_every + 2.0)  # the first readings are in
            readings_before, loads = worker.stats.readings, [os.getloadavg()[0]]  # 0 with --ingest-process
            started = time.monotonic()
            loop.start()
            while time.monotonic() - started < args.seconds:
                await asyncio.sleep(min(10.0, args.seconds - (time.monotonic() - started)))
                loads.append(os.getloadavg()[0])
                progress(f"  {time.monotonic() - started:.0f} s: {loop.stats.rounds} rounds, {loop.stats.commands} "
                         f"commands, {loop.stats.acknowledged} acknowledged, load {loads[-1]:.2f}")
            await loop.stop()
            elapsed = time.monotonic() - started
            readings = worker.stats.readings - readings_before
            stop.set()
            street = await asyncio.to_thread(out.get, True, 120)
            if ingest_process is not None:  # its count includes the warm-up's readings
                readings = (await asyncio.to_thread(ingest_out.get, True, 120))["readings"]
                ingest_process.join(30)
            assert "error" not in street, street
            await commands.close()
            await (answers if args.ingest_process else worker).stop()
            actuated = street.pop("actuated")
            actuation = [(actuated[rpc] - decided) * 1000 for rpc, decided in loop.stats.decided.items()
                         if rpc in actuated]
            acks, rounds_ms = list(loop.stats.ack_ms), list(loop.stats.round_ms)
            street["sim_vs_wall"] = round(street["steps"] * STEP_S / street["elapsed_s"], 3)
            return {"signals": len(sites), "detector_lanes": len(lanes), "field_model": args.field,
                    "readings_ingest": "own process" if args.ingest_process else "in the loop's process",
                    "seconds": round(elapsed, 1), "interval_s": args.interval, "report_every_s": args.report_every,
                    "database": settings.database_url.split(":")[0], "rounds": loop.stats.rounds,
                    "round_ms_p50": percentile(rounds_ms, 0.5), "round_ms_max": max(rounds_ms, default=None),
                    # (round number, ms) of the rounds over 2 s: when in the run the loop was held up
                    "slow_rounds": [(i, round(ms)) for i, ms in enumerate(rounds_ms) if ms > 2000],
                    "commands": loop.stats.commands, "commands_per_s": round(loop.stats.commands / elapsed, 1),
                    "decisions_per_s": round(len(sites) / args.interval, 1),
                    "lane_readings_per_s": round(street["published"] / street["elapsed_s"], 1),
                    "values_stored_per_s": round(readings / elapsed, 1), "acknowledged": loop.stats.acknowledged,
                    "unacknowledged": loop.stats.unacknowledged, "refused": loop.stats.refused,
                    "fallback_rounds": loop.stats.fallback_rounds, "actuated": len(actuation),
                    "actuation_ms_p50": percentile(actuation, 0.5), "actuation_ms_p99": percentile(actuation, 0.99),
                    "ack_ms_p50": percentile(acks, 0.5), "ack_ms_p99": percentile(acks, 0.99),
                    "ack_ms_mean": round(statistics.fmean(acks), 3) if acks else None,
                    "load_1m": [round(x, 2) for x in loads], "field": street}
    finally:
        stop.set()
        for process in (field_process, ingest_process):
            if process is not None:
                process.join(30)
                if process.is_alive():
                    process.kill()
        broker.terminate()
        broker.wait(10)


def in_process(args: argparse.Namespace, net: Path, routes: Path) -> dict[str, Any]:
    from cityos.traffic.controllers import make_controller
    from cityos.traffic.signals import SignalSupervisor, View
    from cityos.traffic.sumo import (
        LaneReader,
        LazyLanes,
        intersections_of,
        load_libsumo,
        plans_from_net,
        sumo_binary,
    )

    libsumo = load_libsumo()
    plans = {tls: bench_plan(plan) for tls, plan in plans_from_net(net).items()}
    libsumo.start([sumo_binary("sumo"), "-n", str(net), "-r", str(routes), "--no-step-log", "true",
                   "--no-warnings", "true", "--seed", "7"])
    try:
        crossings = intersections_of(libsumo, plans)
        reader = LaneReader(libsumo, {lane for x in crossings for lane in (*x.in_lanes, *x.out_lanes)})
        supervisors = []
        for x in crossings:
            def view_of(now: float, phase: int, elapsed: float, x: Any = x) -> View:
                return View(now, phase, elapsed, LazyLanes(reader, (*x.in_lanes, *x.out_lanes)), x.movements)

            supervisors.append((x.tls, SignalSupervisor(plan=x.plan, controller=make_controller("cityos", x.plan),
                                                        view_of=view_of)))
        shown: dict[str, str] = {}
        latencies: list[float] = []
        now = 0.0
        reader.refresh()
        while now < args.seconds:
            for tls, supervisor in supervisors:
                decided = time.perf_counter()
                switches = supervisor.stats.switches
                state = supervisor.tick(now)
                if shown.get(tls) != state:
                    libsumo.trafficlight.setRedYellowGreenState(tls, state)
                    shown[tls] = state
                    if supervisor.stats.switches != switches:
                        latencies.append((time.perf_counter() - decided) * 1000)
            libsumo.simulationStep()
            now = float(libsumo.simulation.getTime())
            reader.refresh()
        return {"changes": len(latencies), "actuation_ms_p50": percentile(latencies, 0.5),
                "actuation_ms_p99": percentile(latencies, 0.99)}
    finally:
        libsumo.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--signals", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--interval", type=float, default=1.0, help="the control loop's decision interval")
    parser.add_argument("--report-every", type=float, default=1.0, help="simulated seconds between readings")
    parser.add_argument("--database-url", default=None, help="default: a fresh SQLite file")
    parser.add_argument("--stopline", action="store_true", help="a stop-line detector device per incoming lane too")
    parser.add_argument("--ingest-process", action="store_true",
                        help="the readings' ingest worker in a process of its own (PostgreSQL)")
    parser.add_argument("--field", choices=("sumo", "queues"), default="sumo",
                        help="the street behind the MQTT devices: libsumo, or a point-queue model per lane "
                             "(for more junctions than SUMO steps in real time)")
    args = parser.parse_args()
    from cityos.traffic.sumo import separate_junctions

    with tempfile.TemporaryDirectory(prefix="cityos-loop-bench-") as tmp:
        workdir = Path(tmp)
        net, routes = separate_junctions(workdir, args.signals, period_ew=PERIOD_EW_S, period_ns=PERIOD_NS_S)
        platform = await through_platform(args, workdir, net, routes)
        local = in_process(args, net, routes)
    print(orjson.dumps({"bench": "traffic_loop", "platform": platform, "in_process": local}).decode())


if __name__ == "__main__":
    asyncio.run(main())
