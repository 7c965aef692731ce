"""Signal control through the platform against in process: decision-to-actuation latency for N signals.

    uv run python bench/traffic_loop_bench.py                   # 20 signals, 60 s through the platform
    uv run python bench/traffic_loop_bench.py --signals 50 --seconds 120

What it does (one JSON line on stdout, progress on stderr):

1. starts its own Mosquitto on a free port of 127.0.0.1 (a throwaway broker, not a shared one), a fresh
   SQLite database in a temporary directory, and the app in process with one MQTT ingest worker;
2. builds N separate four-arm junctions in libsumo (east-west traffic every 2.5 s each way, north-south
   every 6 s), provisions per junction 8 `traffic-flow` detector devices (one per lane) and a
   `traffic-signal` cabinet, and registers each signal with the `cityos` controller;
3. through the platform, for --seconds of wall time with SUMO paced to the wall clock: the detectors
   publish their readings every simulated second over MQTT, the `ControlLoop` decides every --interval
   seconds from the hub, commands phases as RPC; the cabinets show them in SUMO and acknowledge.
   decision→actuation = the loop's decision until the cabinet set the lamps in SUMO; decision→ack = until
   the loop saw the acknowledgement in the database (polled every 10 ms);
4. in process, same junctions and controller, the supervisor ticking every simulated second against
   libsumo (as bench/traffic_bench.py runs): decision→actuation = `tick` deciding a change until
   `setRedYellowGreenState` returned.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import queue
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson


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
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    broker = subprocess.Popen(["mosquitto", "-c", str(conf)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    for _ in range(100):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return broker, port
        time.sleep(0.05)
    broker.kill()
    raise RuntimeError("mosquitto did not start")


class Street:
    """SUMO as the street for N junctions: detectors publish over MQTT, cabinets obey setPhase RPC."""

    def __init__(self, libsumo: Any, topics: str, url: str, junctions: dict[str, tuple[str, tuple[str, ...]]]) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        from cityos.iot.ingest import broker_address

        self.sim, self.topics = libsumo, topics
        self.junctions = junctions  # cabinet → (traffic light, its detector lanes)
        self.lanes = [lane for _, lanes in junctions.values() for lane in lanes]
        self.pending: queue.Queue[tuple[str, int, dict[str, Any], float]] = queue.Queue()
        self.schedule: dict[str, list[tuple[float, str]]] = {}
        self.actuated: dict[int, float] = {}  # RPC id → perf_counter when its yellow was set in SUMO
        self.seen: dict[str, set[str]] = {lane: set() for lane in self.lanes}
        self.entered = dict.fromkeys(self.lanes, 0)
        host, port = broker_address(url)
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-street", protocol=mqtt.MQTTv5)
        self.client.max_inflight_messages_set(0)
        self.client.max_queued_messages_set(0)
        self.client.on_message = self._on_request
        self.client.connect(host, port, 30)
        self.client.loop_start()
        self.client.subscribe(f"{topics}/+/rpc/request/+", qos=1)

    def _on_request(self, _c: Any, _u: Any, message: Any) -> None:  # the MQTT thread
        parts = message.topic.split("/")
        self.pending.put((parts[-4], int(parts[-1]), orjson.loads(message.payload), time.perf_counter()))

    def apply_requests(self) -> None:
        while not self.pending.empty():
            cabinet, rpc_id, body, _received = self.pending.get()
            tls = self.junctions[cabinet][0]
            sequence = body["params"]["sequence"]
            self.sim.trafficlight.setRedYellowGreenState(tls, sequence[0]["state"])
            self.actuated[rpc_id] = time.perf_counter()
            at, plan = time.monotonic(), []
            for current, following in itertools.pairwise(sequence):  # all-red after yellow, then green
                at += current["seconds"] or 0.0
                plan.append((at, following["state"]))
            self.schedule[tls] = plan
            self.client.publish(f"{self.topics}/{cabinet}/rpc/response/{rpc_id}", b'{"ok":true}', qos=1)

    def advance_lamps(self) -> None:
        now = time.monotonic()
        for tls, plan in self.schedule.items():
            while plan and plan[0][0] <= now:
                self.sim.trafficlight.setRedYellowGreenState(tls, plan.pop(0)[1])

    def step(self, publish: bool) -> None:
        self.sim.simulationStep()
        for lane in self.lanes:
            ids = set(self.sim.lane.getLastStepVehicleIDs(lane))
            self.entered[lane] += len(ids - self.seen[lane])
            self.seen[lane] = ids
        if not publish:
            return
        stamp = int(time.time() * 1000)
        for lane in self.lanes:
            values = {"occupancy": round(self.sim.lane.getLastStepOccupancy(lane), 2),
                      "speed": round(self.sim.lane.getLastStepMeanSpeed(lane) * 3.6, 2),
                      "intensity": self.entered[lane]}
            self.entered[lane] = 0
            self.client.publish(f"{self.topics}/{lane}/telemetry", orjson.dumps({"ts": stamp, "values": values}),
                                qos=1)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


async def through_platform(args: argparse.Namespace, workdir: Path, net: Path, routes: Path) -> dict[str, Any]:
    import libsumo

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
    from cityos.traffic.api import command_sender
    from cityos.traffic.control_loop import ControlLoop
    from cityos.traffic.models import SignalIn
    from cityos.traffic.sumo import intersections_of, plans_from_net, sumo_binary

    broker, port = start_mosquitto(workdir)
    url = f"mqtt://127.0.0.1:{port}"
    settings = Settings(database_url=f"sqlite:///{workdir / 'bench.db'}")
    await asyncio.to_thread(migrate.upgrade, settings)
    plans = plans_from_net(net)
    libsumo.start([sumo_binary("sumo"), "-n", str(net), "-r", str(routes), "--step-length", "0.5",
                   "--no-step-log", "true", "--no-warnings", "true", "--seed", "7"])
    app = create_app(settings)
    try:
        async with app.router.lifespan_context(app):
            iot, traffic = app.state.iot, app.state.traffic
            admin = Principal("bench", kind="service", role="operator", tenant=iot.tenant)
            junctions: dict[str, tuple[str, tuple[str, ...]]] = {}
            devices: list[DeviceIn] = []
            for crossing in intersections_of(libsumo, plans):
                links = libsumo.trafficlight.getControlledLinks(crossing.tls)
                lanes = tuple(dict.fromkeys((*crossing.in_lanes, *crossing.out_lanes)))
                cabinet = f"{crossing.tls}-cabinet"
                junctions[cabinet] = (crossing.tls, lanes)
                devices += [DeviceIn(name=lane, profile="traffic-flow") for lane in lanes]
                devices.append(DeviceIn(name=cabinet, profile="traffic-signal"))
                plan = crossing.plan
                spec = {"id": crossing.tls, "device": cabinet, "controller": "cityos",
                        "plan": {"phases": [{"state": p.state, "minGreen": p.min_green, "maxGreen": p.max_green,
                                             "fixedGreen": p.fixed_green} for p in bench_plan(plan).phases],
                                 "yellow": 3, "allRed": 2, "conflicts": sorted(plan.conflicts),
                                 "links": [{"in": link[0][0], "out": link[0][1]} for link in links]}}
                await traffic.register(admin, iot.tenant, SignalIn.model_validate(spec))
                libsumo.trafficlight.setRedYellowGreenState(crossing.tls, plan.phases[0].state)
            result = await iot.provision_many(devices)
            assert not result.errors, result.errors[:3]
            topics = "bench/devices"
            worker = IngestWorker(iot, url, "bench-ingest", shared=False, prefix=topics)
            await worker.start()
            await worker.wait_connected()
            commands = CommandSender(iot, url, prefix=topics)
            street = Street(libsumo, topics, url, junctions)
            loop = ControlLoop(traffic, app.state.hub.service, iot.tenant, lambda: command_sender(commands),
                               iot.get_rpc, interval=args.interval, stale_after=5.0)
            progress(f"platform: {len(junctions)} signals, {len(devices)} devices, {args.seconds:g} s")
            started, steps, loop_started = time.monotonic(), 0, False
            while time.monotonic() - started < args.seconds:
                street.apply_requests()
                street.advance_lamps()
                if time.monotonic() - started >= steps * 0.5:
                    street.step(publish=steps % 2 == 1)
                    steps += 1
                if not loop_started and time.monotonic() - started > 2.0:  # the first readings are in
                    loop.start()
                    loop_started = True
                await asyncio.sleep(0.005)
            await loop.stop()
            street.apply_requests()
            street.close()
            await commands.close()
            await worker.stop()
            actuation = [(street.actuated[rpc] - decided) * 1000 for rpc, decided in loop.stats.decided.items()
                         if rpc in street.actuated]
            acks = list(loop.stats.ack_ms)
            return {"signals": len(junctions), "seconds": args.seconds, "interval_s": args.interval,
                    "rounds": loop.stats.rounds, "round_budget_ok": loop.stats.rounds >= 0.8 * (args.seconds - 2)
                    / args.interval, "commands": loop.stats.commands, "acknowledged": loop.stats.acknowledged,
                    "unacknowledged": loop.stats.unacknowledged, "refused": loop.stats.refused,
                    "fallback_rounds": loop.stats.fallback_rounds,
                    "actuation_ms_p50": percentile(actuation, 0.5), "actuation_ms_p99": percentile(actuation, 0.99),
                    "ack_ms_p50": percentile(acks, 0.5), "ack_ms_p99": percentile(acks, 0.99),
                    "ack_ms_mean": round(statistics.fmean(acks), 3) if acks else None}
    finally:
        libsumo.close()
        broker.terminate()
        broker.wait(10)


def in_process(args: argparse.Namespace, net: Path, routes: Path) -> dict[str, Any]:
    import libsumo

    from cityos.traffic.controllers import make_controller
    from cityos.traffic.signals import SignalSupervisor, View
    from cityos.traffic.sumo import LaneReader, LazyLanes, intersections_of, plans_from_net, sumo_binary

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
    args = parser.parse_args()
    from cityos.traffic.sumo import separate_junctions

    with tempfile.TemporaryDirectory(prefix="cityos-loop-bench-") as tmp:
        workdir = Path(tmp)
        net, routes = separate_junctions(workdir, args.signals, period_ew=2.5, period_ns=6.0)
        platform = await through_platform(args, workdir, net, routes)
        local = in_process(args, net, routes)
    print(orjson.dumps({"bench": "traffic_loop", "platform": platform, "in_process": local}).decode())


if __name__ == "__main__":
    asyncio.run(main())
