"""IoT ingestion benchmark on PostgreSQL + Mosquitto, against raw Mosquitto measured in the same run.

    uv run python bench/ingest_bench.py                       # defaults below
    uv run python bench/ingest_bench.py --messages 40000 --devices 2000

What it does (one JSON line on stdout, progress on stderr):

1. baseline: a paho-mqtt publisher process sends M QoS 1 messages of the same size to a topic a
   paho subscriber (MQTT 5, manual ack, acks at once) reads: raw msgs/s, and p99 publish→receive
   at the paced rate;
2. creates a fresh database `cityos_bench_<random>` on --pg-admin-url, migrates, starts the app
   in-process (hub + IoT) with W ingest workers (shared subscription), provisions D devices;
3. sustained: a publisher process sends M messages of R readings each ({"ts", "values"}) as fast
   as it can; readings/s = M*R / (first publish → last reading committed in hub state AND history);
4. latency: paced at --rate readings/s for --seconds; p99 of (commit time − publish time);
5. split: two workers, 2,000 messages: share of each, lost (published − stored), duplicated
   (delivered more than once).

Ratios are ingest / raw broker. Targets are reported as booleans; nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing as mp
import os
import secrets
import sys
import threading
import time
from typing import Any

import orjson
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

READING_KEYS = ("pm25", "pm10", "no2", "temperature", "humidity")


def log(*args: Any) -> None:
    print(*args, file=sys.stderr, flush=True)


def _host_port(url: str) -> tuple[str, int]:
    from urllib.parse import urlparse

    parsed = urlparse(url)
    return parsed.hostname or "127.0.0.1", parsed.port or 1883


def gateway_payload(devices: list[str], start: int, per_message: int, now_ms: int, step: int,
                    readings: int) -> bytes:
    """ThingsBoard's gateway form: {"<device>": [{"ts", "values"}], ...} for `per_message` devices."""
    body = {}
    for k in range(per_message):
        name = devices[(start + k) % len(devices)]
        body[name] = [{"ts": now_ms, "values": {key: (step % 50) + j + 0.5
                                                 for j, key in enumerate(READING_KEYS[:readings])}}]
    return orjson.dumps(body)


def publisher(url: str, topics: list[str], count: int, rate: float, readings: int, out: Any,
              frozen: bool = False, gateway_devices: list[str] | None = None, per_message: int = 0) -> None:
    """Runs in its own process: publish `count` QoS 1 messages (paced at `rate` msg/s if > 0).

    Each device's values change from one message to the next (+1 mod 50), as a live sensor's do; with
    `frozen` every device repeats the same values, which makes every device a frozen sensor after
    `frozenIntervals` messages (an alarm storm through the rules engine, not ingest throughput)."""
    host, port = _host_port(url)
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-pub-{secrets.token_hex(4)}",
                         protocol=mqtt.MQTTv5)
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    acked = threading.Semaphore(0)
    client.on_publish = lambda *a: acked.release()
    client.connect(host, port, 30)
    client.loop_start()
    started = time.time()
    for i in range(count):
        now_ms = int(time.time() * 1000)
        step = i if frozen else i + i // len(topics)
        if gateway_devices:
            payload = gateway_payload(gateway_devices, i * per_message, per_message, now_ms,
                                      i * per_message // len(gateway_devices), readings)
        else:
            values = {k: (step % 50) + j for j, k in enumerate(READING_KEYS[:readings])}
            payload = orjson.dumps({"ts": now_ms, "values": values})
        client.publish(topics[i % len(topics)], payload, qos=1)
        if rate > 0:
            target = started + (i + 1) / rate
            delay = target - time.time()
            if delay > 0:
                time.sleep(delay)
    for _ in range(count):
        acked.acquire(timeout=120)
    out.put({"started": started, "finished": time.time()})
    client.disconnect()
    client.loop_stop()


def raw_baseline(url: str, count: int, rate: float, per: int = 1) -> dict[str, Any]:
    """Raw Mosquitto publish → subscribe of the same messages (the gateway form when `per` > 1)."""
    host, port = _host_port(url)
    topic = f"bench-raw-{secrets.token_hex(4)}/t"
    received: list[float] = []
    latencies: list[float] = []
    done = threading.Event()
    sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-sub-{secrets.token_hex(4)}",
                      protocol=mqtt.MQTTv5, manual_ack=True)

    def on_message(client: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
        now = time.time()
        received.append(now)
        latencies.append(now - sent_at(message.payload))
        client.ack(message.mid, message.qos)
        if len(received) >= expected[0]:
            done.set()

    expected = [count]
    sub.on_message = on_message
    props = Properties(PacketTypes.CONNECT)
    props.ReceiveMaximum = 65535
    sub.connect(host, port, 30, properties=props)
    sub.subscribe(topic, qos=1)
    sub.loop_start()
    time.sleep(0.5)
    result: dict[str, Any] = {}
    for label, n, pace in (("max", count, 0.0), ("paced", int(rate * 5), rate)):
        received.clear()
        latencies.clear()
        done.clear()
        expected[0] = n
        queue: Any = mp.Queue()
        devices = [f"raw-{k:05d}" for k in range(1000)] if per > 1 else None
        proc = mp.Process(target=publisher, args=(url, [topic], n, pace, len(READING_KEYS), queue, False, devices, per))
        proc.start()
        done.wait(300)
        info = queue.get(timeout=300)
        proc.join()
        elapsed = (received[-1] if received else time.time()) - info["started"]
        result[label] = {"messages": len(received), "msgs_per_s": round(len(received) / elapsed, 1),
                         "p99_ms": round(_pct(latencies, 99) * 1000, 1), "p50_ms": round(_pct(latencies, 50) * 1000, 1)}
    sub.disconnect()
    sub.loop_stop()
    return result


def sent_at(payload: bytes) -> float:
    """The publish time a bench message carries (direct form {"ts"}, or the gateway form's first entry)."""
    doc = orjson.loads(payload)
    if "ts" in doc:
        return float(doc["ts"]) / 1000
    return float(next(iter(doc.values()))[0]["ts"]) / 1000


def _pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p / 100))]


async def start_measured(workers: list[Any], latencies: list[float]) -> None:
    """Start ingest workers that record, for every message they commit, publish → commit time."""
    def hook(envs: list[Any], _report: Any) -> None:
        now = time.time()
        for env in envs:
            with contextlib.suppress(ValueError, KeyError, TypeError, StopIteration, IndexError):
                latencies.append(now - sent_at(env.payload))

    for worker in workers:
        worker.stats.on_commit.append(hook)
        await worker.start()
        await worker.wait_connected()


def ingest_process(url: str, mqtt_url: str, prefix: str, label: str, workers: int, batch: int, batch_ms: float,
                   ready: Any, stop: Any, out: Any) -> None:
    """Runs in its own process, as a production ingest process does (deploy/iot.md): the app with W
    ingest workers on the shared subscription; reports what it received and its CPU time."""
    async def main() -> None:
        from cityos.app import create_app
        from cityos.config import Settings
        from cityos.iot.ingest import IngestWorker

        app = create_app(Settings(database_url=url, db_pool_size=workers * 2 + 4))
        async with app.router.lifespan_context(app):
            ws = [IngestWorker(app.state.iot, mqtt_url, f"bench-ingest-{label}-{secrets.token_hex(3)}-{i}",
                               prefix=prefix, batch_max=batch, batch_ms=batch_ms) for i in range(workers)]
            # committers per worker: CITYOS_INGEST_COMMITTERS, inherited from the bench's environment
            latencies: list[float] = []
            await start_measured(ws, latencies)
            cpu0 = time.process_time()
            ready.set()
            await asyncio.to_thread(stop.wait)
            cpu = time.process_time() - cpu0
            out.put({"received": sum(w.stats.received for w in ws), "batches": sum(w.stats.batches for w in ws),
                     "cpu_s": cpu, "latencies": latencies})
            for w in ws:
                await w.stop()

    asyncio.run(main())


async def run(args: argparse.Namespace) -> dict[str, Any]:
    import asyncpg
    from sqlalchemy import func, select

    from cityos.app import create_app
    from cityos.config import Settings
    from cityos.core import migrate
    from cityos.hub.models import attribute_history
    from cityos.iot.ingest import IngestWorker
    from cityos.iot.models import DeviceIn

    name = f"cityos_bench_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(args.pg_admin_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    base, _ = args.pg_admin_url.rsplit("/", 1)
    url = f"{base}/{name}"
    os.environ["CITYOS_IOT_HEALTH_SECONDS"] = "0"
    result: dict[str, Any] = {"bench": "ingest", "db": "postgresql", "broker": args.mqtt_url,
                              "frozen_values": args.frozen_values, "gateway_batch": args.gateway_batch,
                              "processes": args.processes, "workers_per_process": args.workers,
                              "committers_per_worker": args.committers,
                              "loadavg_start": os.getloadavg(), "cpus": os.cpu_count()}
    try:
        await asyncio.to_thread(migrate.upgrade, Settings(database_url=url))
        app = create_app(Settings(database_url=url, db_pool_size=args.workers * 2 + 4))
        async with app.router.lifespan_context(app):
            iot = app.state.iot
            log("provisioning", args.devices, "devices")
            specs = [DeviceIn(name=f"b-{i:05d}", profile="air-quality", lon=110.0 + (i % 100) / 300,
                              lat=20.0 + (i // 100) / 300, district=f"D{i % 10}") for i in range(args.devices)]
            for start in range(0, len(specs), 1000):
                await iot.provision_many(specs[start:start + 1000])
            names = [s.name for s in specs]
            per = max(1, args.gateway_batch)  # pm25 history rows (devices) per message
            gateways = [f"gw-{g:03d}" for g in range(max(1, args.devices // 100))] if per > 1 else []
            if gateways:
                await iot.provision_many([DeviceIn(name=g, profile="smart-meter", gateway=True, lon=110.0, lat=20.0)
                                          for g in gateways])
            t = attribute_history.c

            async def stored(prefix: str) -> int:
                async with app.state.engine.connect() as conn:
                    return int((await conn.execute(select(func.count()).select_from(attribute_history).where(
                        t.entity_id.like("urn:ngsi-ld:AirQualityObserved:%"), t.attr.like("%/pm25")))).scalar_one())

            async def phase(label: str, n_workers: int, count: int, rate: float,
                            processes: int = 0) -> dict[str, Any]:
                if processes:
                    return await process_phase(label, count, rate, processes)
                prefix = f"bench-{secrets.token_hex(4)}/devices"
                workers = [IngestWorker(iot, args.mqtt_url, f"bench-ingest-{label}-{i}-{secrets.token_hex(3)}",
                                        prefix=prefix, batch_max=args.batch, batch_ms=args.batch_ms)
                           for i in range(n_workers)]
                latencies: list[float] = []
                await start_measured(workers, latencies)
                await asyncio.sleep(0.5)
                before = await stored(prefix)
                topics = ([f"{prefix}/{g}/gateway/telemetry" for g in gateways] if per > 1
                          else [f"{prefix}/{n}/telemetry" for n in names])
                queue: Any = mp.Queue()
                proc = mp.Process(target=publisher, args=(args.mqtt_url, topics, count, rate, len(READING_KEYS),
                                                          queue, args.frozen_values, names if per > 1 else None, per))
                cpu0 = os.times()
                proc.start()
                deadline = time.monotonic() + 600
                while time.monotonic() < deadline:
                    if sum(w.stats.received for w in workers) >= count and \
                            sum(w.stats.batches for w in workers) and all(w._queue.empty() for w in workers):
                        got = await stored(prefix) - before
                        if got >= count * per:
                            break
                    await asyncio.sleep(0.05)
                committed_at = time.time()
                cpu1 = os.times()
                info = await asyncio.to_thread(queue.get, True, 300)
                await asyncio.to_thread(proc.join)
                got = await stored(prefix) - before
                received = [w.stats.received for w in workers]
                for w in workers:
                    await w.stop()
                elapsed = committed_at - info["started"]
                out = {"messages": count, "readings": count * per * len(READING_KEYS), "stored_rows": got,
                       "seconds": round(elapsed, 2),
                       "readings_per_s": round(got * len(READING_KEYS) / elapsed, 1),  # got: pm25 rows, 5 readings each
                       "p50_ms": round(_pct(latencies, 50) * 1000, 1), "p99_ms": round(_pct(latencies, 99) * 1000, 1),
                       "per_worker": received, "lost": count * per - got, "delivered_twice": sum(received) - count,
                       "server_cpu_cores": round((cpu1.user + cpu1.system - cpu0.user - cpu0.system) / elapsed, 2),
                       "batches": sum(w.stats.batches for w in workers)}
                log(label, out)
                return out

            async def process_phase(label: str, count: int, rate: float, processes: int) -> dict[str, Any]:
                """The same measurement with the ingest workers in `processes` separate processes."""
                prefix = f"bench-{secrets.token_hex(4)}/devices"
                stop, out = mp.Event(), mp.Queue()
                readies = [mp.Event() for _ in range(processes)]
                procs = [mp.Process(target=ingest_process, args=(url, args.mqtt_url, prefix, f"{label}{k}",
                                                                  args.workers, args.batch, args.batch_ms,
                                                                  readies[k], stop, out))
                         for k in range(processes)]
                for proc in procs:
                    proc.start()
                for ready in readies:
                    await asyncio.to_thread(ready.wait, 120)
                await asyncio.sleep(0.5)
                before = await stored(prefix)
                topics = ([f"{prefix}/{g}/gateway/telemetry" for g in gateways] if per > 1
                          else [f"{prefix}/{n}/telemetry" for n in names])
                queue: Any = mp.Queue()
                pub = mp.Process(target=publisher, args=(args.mqtt_url, topics, count, rate, len(READING_KEYS),
                                                         queue, args.frozen_values, names if per > 1 else None, per))
                pub.start()
                deadline = time.monotonic() + 600
                while time.monotonic() < deadline:
                    if await stored(prefix) - before >= count * per:
                        break
                    await asyncio.sleep(0.05)
                committed_at = time.time()
                info = await asyncio.to_thread(queue.get, True, 300)
                await asyncio.to_thread(pub.join)
                got = await stored(prefix) - before
                stop.set()
                reports = [await asyncio.to_thread(out.get, True, 120) for _ in procs]
                for proc in procs:
                    await asyncio.to_thread(proc.join)
                latencies = [x for r in reports for x in r["latencies"]]
                received = [r["received"] for r in reports]
                elapsed = committed_at - info["started"]
                result_ = {"messages": count, "readings": count * per * len(READING_KEYS), "stored_rows": got,
                           "seconds": round(elapsed, 2), "processes": processes,
                           "readings_per_s": round(got * len(READING_KEYS) / elapsed, 1),
                           "p50_ms": round(_pct(latencies, 50) * 1000, 1),
                           "p99_ms": round(_pct(latencies, 99) * 1000, 1),
                           "per_worker": received, "lost": count * per - got, "delivered_twice": sum(received) - count,
                           # CPU from the workers' start to their stop, over the phase's length
                           "server_cpu_cores": round(sum(r["cpu_s"] for r in reports) / elapsed, 2),
                           "cpu_us_per_reading": round(sum(r["cpu_s"] for r in reports) * 1e6
                                                       / max(1, got * len(READING_KEYS)), 1),
                           "batches": sum(r["batches"] for r in reports)}
                log(label, result_)
                return result_

            if args.warm_up:  # every device reports once first (it becomes active), as in a running city
                result["warm_up"] = await phase("warm-up", args.workers, max(1, args.devices // per), 0.0)
            result["sustained"] = await phase("sustained", args.workers, args.messages, 0.0, args.processes)
            paced_msgs = args.rate / (len(READING_KEYS) * per)
            result["latency"] = await phase("latency", args.workers, int(paced_msgs * args.seconds), paced_msgs,
                                            args.processes)
            split = await phase("split", 2, max(100, 2000 // per), 0.0)
            share = split["per_worker"][0] / max(1, sum(split["per_worker"]))
            result["split"] = {**split, "share_worker0": round(share, 3)}
        log("raw broker baseline")
        result["baseline"] = await asyncio.to_thread(raw_baseline, args.mqtt_url, args.messages,
                                                     paced_msgs, per)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
    base_rate = result["baseline"]["max"]["msgs_per_s"] * len(READING_KEYS) * max(1, args.gateway_batch)
    result["ratios"] = {
        "sustained_readings_vs_raw": round(result["sustained"]["readings_per_s"] / base_rate, 3),
        "p99_latency_vs_raw": round(result["latency"]["p99_ms"] / max(result["baseline"]["paced"]["p99_ms"], 0.1), 1),
    }
    result["targets"] = {
        "sustained_ge_15000_readings_per_s": result["sustained"]["readings_per_s"] >= 15_000,
        "p99_lt_1s_at_rate": result["latency"]["p99_ms"] < 1000 and result["latency"]["lost"] == 0,
        "split_40_60_no_loss_no_dup": 0.4 <= result["split"]["share_worker0"] <= 0.6
        and result["split"]["lost"] == 0 and result["split"]["delivered_twice"] == 0,
    }
    result["loadavg_end"] = os.getloadavg()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pg-admin-url",
                        default=os.environ.get("CITYOS_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres"))
    parser.add_argument("--mqtt-url", default=os.environ.get("CITYOS_TEST_MQTT_URL", "mqtt://127.0.0.1:1883"))
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--messages", type=int, default=20_000, help="messages of 5 readings in the sustained run")
    parser.add_argument("--rate", type=float, default=5000.0, help="readings/s of the latency run")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--workers", type=int, default=1, help="ingest workers per process")
    parser.add_argument("--processes", type=int, default=0,
                        help="run the ingest workers in this many separate processes (0: in the bench's process)")
    parser.add_argument("--batch", type=int, default=2000)
    parser.add_argument("--batch-ms", type=float, default=50.0)
    parser.add_argument("--committers", type=int, default=int(os.environ.get("CITYOS_INGEST_COMMITTERS", "2")),
                        help="concurrent transactions per ingest worker (device-disjoint parts of a batch)")
    parser.add_argument("--warm-up", action="store_true",
                        help="one message per device before the measured phases (first reports activate devices)")
    parser.add_argument("--gateway-batch", type=int, default=0,
                        help="send through edge gateways, this many devices' readings per message (0: devices direct)")
    parser.add_argument("--frozen-values", action="store_true",
                        help="every device repeats the same values (the payload of the runs before 2026-11-22)")
    args = parser.parse_args()
    os.environ["CITYOS_INGEST_COMMITTERS"] = str(args.committers)
    print(orjson.dumps(asyncio.run(run(args))).decode(), flush=True)


if __name__ == "__main__":
    main()
