"""Scale-out on NATS JetStream: readings/s and domain events/s with 1, 2 and 4 processes (issue #21).

    uv run --frozen python bench/scale_bench.py                      # defaults below
    uv run --frozen python bench/scale_bench.py --readings 40000 --processes 1,2,4

Everything runs in this one run, on servers it starts itself (Debian's nats-server on free loopback
ports, a fresh database on --pg-admin-url), for each of: a 1-node JetStream (replicas 1) and a 3-node
cluster (replicas 3):

1. raw NATS: one publisher, P subscriber processes in a queue group (plain core NATS, no
   persistence): messages/s publish → consume. The baseline, same client library, same body.
2. broker: the same messages into a work-queue stream (publish waits for the stream's ack), then P
   processes pull and ack them: messages/s.
3. ingest: P `cityos serve`-like processes (the whole app, `CITYOS_INGEST_NATS_URL`, one JetStream ingest
   worker each) store readings published to the stream: readings/s from first publish to the last
   reading in the history table.
4. events: the hub's outbox rows relayed to JetStream (relay rate), then P processes of one durable
   group (16 entity partitions) apply them, each in a PostgreSQL transaction with its claimed id: events/s.

CPU per reading: user+system seconds of each stage's processes over the run (nats-server nodes, ingest
processes, the PostgreSQL backends serving this database) divided by the readings stored. Finally
PostgreSQL's ceiling: raw COPY of history rows into `hub_attribute_history`, rows/s on one connection.
One JSON line on stdout (progress on stderr), with the machine's 1-minute load average before the stages
and after each one. Ratios are against raw NATS; nothing is asserted. A stage whose processes stop
answering fails with their state and each NATS node's (running, or exit code and log tail), and its
processes are ended before the cluster is stopped.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing as mp
import os
import queue
import resource
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

PG_ADMIN = os.environ.get("CITYOS_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/test")
PREFIX = "cityos/devices"
DEVICES = 500


def say(*parts: Any) -> None:
    print(*parts, file=sys.stderr, flush=True)


def cpu_self() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def cpu_of(pid: int) -> float:
    """user+system seconds of a process (any user's: /proc is readable)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------------- worker processes


def raw_consumer(url: str, subject: str, ready: Any, results: Any) -> None:
    async def run() -> None:
        import nats

        nc = await nats.connect(url.split(","))
        count, last = 0, time.monotonic()

        async def on(_msg: Any) -> None:
            nonlocal count, last
            count += 1
            last = time.monotonic()

        await nc.subscribe(subject, queue="raw", cb=on)
        await nc.flush()
        ready.set()
        idle_since = time.monotonic()
        while True:
            await asyncio.sleep(0.2)
            if count and time.monotonic() - last > 1.5:
                break
            if not count and time.monotonic() - idle_since > 15:
                break
        await nc.close()
        results.put({"count": count, "last": time.time() - (time.monotonic() - last), "cpu": cpu_self()})

    asyncio.run(run())


def js_consumer(url: str, stream: str, subject: str, ready: Any, go: Any, results: Any) -> None:
    async def run() -> None:
        import nats
        from nats.js.api import AckPolicy, ConsumerConfig

        nc = await nats.connect(url.split(","))
        js = nc.jetstream(timeout=10)
        sub = await js.pull_subscribe(subject, durable="bench", stream=stream,
                                      config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, max_ack_pending=20000))
        ready.set()
        await asyncio.to_thread(go.wait)  # all pull together: the rate is not the spread of process start-ups
        cpu0 = cpu_self()
        count, first, last = 0, 0.0, time.time()
        idle_since = time.monotonic()
        # Done after 1.5 s without a message (5 s if none came: the others took them all). Idle is
        # measured in time, not in empty pulls: nats-py's fetch returns an empty list, not a timeout,
        # when the answer to its pull is a status, such as the 408 of an earlier pull expiring. On a
        # 3-node cluster most pulls of a drained stream end that way, and a loop waiting for three
        # timeouts in a row ran for minutes (the 3-node failure of the 2026-12-05 18:59 run).
        while time.monotonic() - idle_since < (1.5 if count else 5.0):
            try:
                msgs = await sub.fetch(500, timeout=0.5)
            except nats.errors.TimeoutError:
                continue
            if not msgs:
                continue
            idle_since = time.monotonic()
            first = first or time.time()
            for msg in msgs:
                await msg.ack()
            count += len(msgs)
            last = time.time()
        await nc.flush()
        await nc.close()
        results.put({"count": count, "first": first, "last": last, "cpu": cpu_self() - cpu0})

    asyncio.run(run())


def ingest_process(database_url: str, url: str, stream: str, replicas: int, ready: Any, stop: Any,
                   results: Any) -> None:
    os.environ.update({"CITYOS_INGEST_NATS_URL": url, "CITYOS_INGEST_NATS_STREAM": stream,
                       "CITYOS_INGEST_NATS_REPLICAS": str(replicas), "CITYOS_INGEST_NATS_WORKERS": "1",
                       "CITYOS_EVALUATION_INTERVAL_SECONDS": "0"})

    async def run() -> None:
        from cityos.app import create_app
        from cityos.config import Settings

        app = create_app(Settings(database_url=database_url))
        async with app.router.lifespan_context(app):
            ready.set()
            cpu0 = cpu_self()  # start-up (imports, app assembly) is not the cost of a reading
            await asyncio.to_thread(stop.wait)
            stored = sum(w.stats.readings for w in app.state.iot_nats_workers)
            cpu = cpu_self() - cpu0
        results.put({"stored": stored, "cpu": cpu})

    asyncio.run(run())


def event_consumer(database_url: str, url: str, stream: str, subjects: str, replicas: int, ready: Any,
                   stop: Any, results: Any) -> None:
    async def run() -> None:
        from cityos.config import Settings
        from cityos.core.bus_models import claim
        from cityos.core.db import create_engine
        from cityos.core.events import Event
        from cityos.core.jetstream import JetStreamBus, JetStreamSettings

        engine = create_engine(Settings(database_url=database_url))
        bus = JetStreamBus(JetStreamSettings(url=url, stream=stream, subjects=subjects, replicas=replicas,
                                             partitions=16))
        applied = 0

        async def apply(event: Event) -> None:
            nonlocal applied
            async with engine.begin() as conn:
                if await claim(conn, "bench", event):
                    applied += 1

        bus.subscribe("hub.entity.changed", apply, group="bench")
        cpu0 = cpu_self()
        await bus.start()
        ready.set()
        await asyncio.to_thread(stop.wait)
        cpu = cpu_self() - cpu0
        await bus.close()
        await engine.dispose()
        results.put({"applied": applied, "cpu": cpu})

    asyncio.run(run())


# ---------------------------------------------------------------------- the stages


CHILDREN: list[Any] = []  # every worker process started, ended before a cluster is stopped
CLUSTER: list[Any] = []  # the cluster of the stage running, for the diagnosis of a failure


class StageFailed(RuntimeError):
    pass


def start_all(target: Any, count: int, args: tuple[Any, ...], results: Any, stop: Any | None = None) -> list[Any]:
    ctx = mp.get_context("spawn")
    procs, readies = [], []
    for _ in range(count):
        ready = ctx.Event()
        extra = (ready, stop, results) if stop is not None else (ready, results)
        proc = ctx.Process(target=target, args=(*args, *extra))
        proc.start()
        CHILDREN.append(proc)
        procs.append(proc)
        readies.append(ready)
    deadline = time.monotonic() + 400  # the whole app assembles in each process; slow on a loaded machine
    for proc, ready in zip(procs, readies, strict=True):
        while not ready.wait(1):
            if not proc.is_alive() or time.monotonic() > deadline:
                raise StageFailed(f"{target.__name__} did not start ({diagnosis(procs)})")
    return procs


def cluster_state(cluster: Any) -> str:
    """Each node: running, or its exit code and the end of its log."""
    parts = []
    for node in cluster.nodes:
        code = node.proc.poll() if node.proc is not None else "not started"
        if code is None:
            parts.append(f"{node.name} :{node.port} running")
        else:
            tail = node.log.read_text(errors="replace")[-1500:] if node.log.exists() else ""
            parts.append(f"{node.name} :{node.port} exited {code}; log ends:\n{tail}")
    return "; ".join(parts)


def diagnosis(procs: list[Any]) -> str:
    states = ", ".join(f"pid {p.pid} " + ("running" if p.is_alive() else f"exited {p.exitcode}") for p in procs)
    nodes = cluster_state(CLUSTER[-1]) if CLUSTER else "no cluster"
    return f"workers: {states}; NATS nodes: {nodes}; load {os.getloadavg()[0]:.1f}"


def collect(results: Any, procs: list[Any], patience: float = 120) -> list[dict[str, Any]]:
    """One result per process; fails with the processes' and the nodes' state if `patience` seconds
    pass with no new result, or if every process has ended without sending its own."""
    got: list[dict[str, Any]] = []
    waited_since = time.monotonic()
    while len(got) < len(procs):
        try:
            got.append(results.get(timeout=1))
            waited_since = time.monotonic()
            continue
        except queue.Empty:
            pass
        if all(not p.is_alive() for p in procs):
            with contextlib.suppress(queue.Empty):
                while len(got) < len(procs):  # sent just before exiting
                    got.append(results.get(timeout=2))
            if len(got) < len(procs):
                raise StageFailed(f"{len(procs) - len(got)} process(es) ended without a result ({diagnosis(procs)})")
        elif time.monotonic() - waited_since > patience:
            raise StageFailed(f"no result for {patience:.0f} s from {len(procs) - len(got)} process(es) "
                              f"({diagnosis(procs)})")
    return got


def end_children() -> None:
    """Workers still running after a failed stage end here, before their cluster is stopped: left
    running, they report "connection refused" on every node once it is, which reads as if the
    cluster had failed on its own."""
    for proc in CHILDREN:
        if proc.is_alive():
            proc.terminate()
    for proc in CHILDREN:
        proc.join(10)
        if proc.is_alive():
            proc.kill()
    CHILDREN.clear()


async def publish_many(url: str, subject_of: Any, bodies: list[bytes], jetstream: bool) -> float:
    import nats

    nc = await nats.connect(url.split(","))
    started = time.time()
    if jetstream:
        js = nc.jetstream(timeout=30)
        for start in range(0, len(bodies), 500):  # pipelined: 500 publishes awaiting their acks together
            await asyncio.gather(*(js.publish(subject_of(i), bodies[i]) for i in range(start, min(start + 500,
                                                                                                   len(bodies)))))
    else:
        for i, body in enumerate(bodies):
            await nc.publish(subject_of(i), body)
        await nc.flush()
    await nc.close()
    return started


def node_cpu(cluster: Any) -> float:
    return sum(cpu_of(node.proc.pid) for node in cluster.nodes if node.proc is not None)


def raw_run(cluster: Any, processes: int, bodies: list[bytes]) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    subject = f"raw.{uuid.uuid4().hex[:8]}"
    procs = start_all(raw_consumer, processes, (cluster.url, subject), results)
    broker0 = node_cpu(cluster)
    started = asyncio.run(publish_many(cluster.url, lambda _i: subject, bodies, False))
    got = collect(results, procs)
    for proc in procs:
        proc.join(30)
    count = sum(g["count"] for g in got)
    seconds = max(g["last"] for g in got) - started
    return {"msgs": count, "per_s": round(count / seconds), "lost": len(bodies) - count,
            "broker_cpu_us": round(1e6 * (node_cpu(cluster) - broker0) / max(count, 1), 1)}


def broker_run(cluster: Any, replicas: int, processes: int, bodies: list[bytes]) -> dict[str, Any]:
    async def make_stream() -> str:
        import nats
        from nats.js.api import RetentionPolicy, StreamConfig

        name = f"B{uuid.uuid4().hex[:8]}"
        nc = await nats.connect(cluster.url.split(","))
        await nc.jetstream(timeout=30).add_stream(StreamConfig(
            name=name, subjects=[f"{name.lower()}.>"], num_replicas=replicas, retention=RetentionPolicy.WORK_QUEUE))
        await nc.close()
        return name

    stream = asyncio.run(make_stream())
    broker0 = node_cpu(cluster)
    t0 = time.time()
    asyncio.run(publish_many(cluster.url, lambda i: f"{stream.lower()}.d{i % DEVICES}", bodies, True))
    publish_s = time.time() - t0
    ctx = mp.get_context("spawn")
    results, go = ctx.Queue(), ctx.Event()
    procs = start_all(js_consumer, processes, (cluster.url, stream, f"{stream.lower()}.>"), results, go)
    go.set()
    got = collect(results, procs)
    for proc in procs:
        proc.join(30)
    count = sum(g["count"] for g in got)
    consume_s = max(g["last"] for g in got) - min(g["first"] for g in got if g["first"])
    return {"publish_per_s": round(len(bodies) / publish_s), "consume_per_s": round(count / consume_s),
            "msgs": count, "consumer_cpu_us": round(1e6 * sum(g["cpu"] for g in got) / max(count, 1), 1),
            "broker_cpu_us": round(1e6 * (node_cpu(cluster) - broker0) / max(count, 1), 1)}


async def pg_backends(database_url: str, name: str) -> list[int]:
    import asyncpg

    conn = await asyncpg.connect(database_url)
    try:
        return [r["pid"] for r in await conn.fetch("SELECT pid FROM pg_stat_activity WHERE datname = $1", name)]
    finally:
        await conn.close()


async def history_count(database_url: str) -> int:
    import asyncpg

    conn = await asyncpg.connect(database_url)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM hub_attribute_history WHERE attr LIKE '%/pm25'"))
    finally:
        await conn.close()


def ingest_run(cluster: Any, replicas: int, processes: int, readings: int, database_url: str,
               db_name: str) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    results, stop = ctx.Queue(), ctx.Event()
    stream = "CITYOS_DEVICES"  # one per cluster: streams may not share subjects (`cityos.devices.>`)
    before = asyncio.run(history_count(database_url))
    procs = start_all(ingest_process, processes, (database_url, cluster.url, stream, replicas), results, stop)
    pids = asyncio.run(pg_backends(database_url, db_name))
    pg0 = {pid: cpu_of(pid) for pid in pids}
    broker0 = node_cpu(cluster)
    base = int(time.time() * 1000) - 86_400_000 + readings * processes  # distinct timestamps per run
    bodies = [orjson.dumps({"ts": base + i, "values": {"pm25": i % 300}}) for i in range(readings)]
    subject = PREFIX.replace("/", ".")
    started = asyncio.run(publish_many(cluster.url, lambda i: f"{subject}.sb{i % DEVICES:04d}.telemetry",
                                       bodies, True))
    publish_s = time.time() - started
    target, stored, deadline = before + readings, before, time.time() + 600
    while stored < target and time.time() < deadline:
        time.sleep(0.5)
        stored = asyncio.run(history_count(database_url))
    finished = time.time()
    every = set(pids) | set(asyncio.run(pg_backends(database_url, db_name)))
    pg_cpu = sum(cpu_of(pid) - pg0.get(pid, 0.0) for pid in every)
    broker_cpu = node_cpu(cluster) - broker0
    stop.set()
    got = collect(results, procs)
    for proc in procs:
        proc.join(60)
    done = stored - before
    return {"readings": done, "per_s": round(done / (finished - started)),
            "publish_per_s": round(readings / publish_s),
            "cpu_us_per_reading": {"broker": round(1e6 * broker_cpu / max(done, 1), 1),
                                   "ingest": round(1e6 * sum(g["cpu"] for g in got) / max(done, 1), 1),
                                   "database": round(1e6 * pg_cpu / max(done, 1), 1)}}


def events_run(cluster: Any, replicas: int, processes: int, count: int, database_url: str) -> dict[str, Any]:
    from cityos.core.jetstream import JetStreamBus, JetStreamSettings

    stream, subjects = f"E{uuid.uuid4().hex[:8]}", f"e{uuid.uuid4().hex[:8]}"
    settings = JetStreamSettings(url=cluster.url, stream=stream, subjects=subjects, replicas=replicas, partitions=16)

    async def relay() -> float:
        from sqlalchemy import insert

        from cityos.config import Settings
        from cityos.core.bus_models import bus_outbox
        from cityos.core.db import create_engine

        engine = create_engine(Settings(database_url=database_url))
        now = datetime.now(UTC)
        async with engine.begin() as conn:
            await conn.execute(insert(bus_outbox), [
                {"tenant": "", "topic": "hub.entity.changed", "payload": {"entity": f"urn:e:{i % 1000}", "seq": i},
                 "created_at": now} for i in range(count)])
        bus = JetStreamBus(settings)
        bus.relay_from(lambda: engine.begin(), [bus_outbox])
        await bus.start()
        t0 = time.time()
        while await bus.relay_once():
            pass
        seconds = time.time() - t0
        await bus.close()
        await engine.dispose()
        return seconds

    relay_s = asyncio.run(relay())
    ctx = mp.get_context("spawn")
    results, stop = ctx.Queue(), ctx.Event()

    async def applied_count() -> int:
        import asyncpg

        conn = await asyncpg.connect(database_url)
        try:
            return int(await conn.fetchval("SELECT count(*) FROM bus_applied_events WHERE consumer = 'bench' "
                                           "AND event_id LIKE 'bus_outbox:%'"))
        finally:
            await conn.close()

    before = asyncio.run(applied_count())
    t0 = time.time()
    procs = start_all(event_consumer, processes, (database_url, cluster.url, stream, subjects, replicas), results,
                      stop)
    t_ready = time.time()
    at_ready = asyncio.run(applied_count())
    applied, deadline = at_ready, time.time() + 600
    while applied < before + count and time.time() < deadline:
        time.sleep(0.3)
        applied = asyncio.run(applied_count())
    finished = time.time()
    stop.set()
    got = collect(results, procs)
    for proc in procs:
        proc.join(60)
    done = applied - before
    return {"events": done, "relay_per_s": round(count / relay_s),
            "apply_per_s": round((applied - at_ready) / (finished - t_ready)), "start_s": round(t_ready - t0, 1),
            "consumer_cpu_us_per_event": round(1e6 * sum(g["cpu"] for g in got) / max(done, 1), 1)}


async def copy_ceiling(database_url: str, rows: int) -> dict[str, Any]:
    import asyncpg

    from cityos.hub.store import HISTORY_COLUMNS, HistoryRow

    now = datetime.now(UTC)
    records = [HistoryRow(f"urn:ngsi-ld:AirQualityObserved:c{i % 2000}", "AirQualityObserved",
                          "https://smartdatamodels.org/dataModel.Environment/pm25",
                          {"type": "Property", "value": i % 300, "observedAt": now.isoformat()},
                          now, ts=now - timedelta(seconds=i)).as_copy_record("") for i in range(rows)]
    conn = await asyncpg.connect(database_url)
    try:
        t0 = time.time()
        for start in range(0, rows, 5000):  # the ingest path's batch size order
            await conn.copy_records_to_table("hub_attribute_history", columns=HISTORY_COLUMNS,
                                             records=records[start:start + 5000])
        seconds = time.time() - t0
    finally:
        await conn.close()
    return {"rows": rows, "per_s": round(rows / seconds)}


# ---------------------------------------------------------------------- setup and main


async def provision(database_url: str) -> None:
    from cityos.app import create_app
    from cityos.config import Settings
    from cityos.iot.models import DeviceIn

    app = create_app(Settings(database_url=database_url))
    async with app.router.lifespan_context(app):
        specs = [DeviceIn(name=f"sb{i:04d}", profile="air-quality", lon=110.3 + i * 1e-4, lat=20.0, district="D1")
                 for i in range(DEVICES)]
        result = await app.state.iot.provision_many(specs)
        assert not result.errors, result.errors[:3]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--readings", type=int, default=10000)
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--processes", default="1,2,4")
    parser.add_argument("--copy-rows", type=int, default=200000)
    parser.add_argument("--clusters", default="1,3", help="cluster sizes (replicas = size)")
    parser.add_argument("--pg-admin-url", default=PG_ADMIN)
    args = parser.parse_args()
    os.environ["CITYOS_TEST_POSTGRES_URL"] = args.pg_admin_url
    os.environ.setdefault("CITYOS_EVALUATION_INTERVAL_SECONDS", "0")
    from backends import admin_sql, postgres_database_url
    from cityos.config import Settings
    from cityos.core import migrate
    from nats_cluster import NatsCluster

    counts = [int(p) for p in args.processes.split(",")]
    name = f"cityos_bench_{uuid.uuid4().hex[:8]}"
    admin_sql(f'CREATE DATABASE "{name}"')
    database_url = postgres_database_url(name)
    plain_url = database_url.replace("postgresql+asyncpg://", "postgresql://")
    out: dict[str, Any] = {"bench": "scale", "readings": args.readings, "events": args.events,
                           "load_at_start": round(os.getloadavg()[0], 2), "clusters": {}}
    try:
        migrate.upgrade(Settings(database_url=database_url))
        asyncio.run(provision(database_url))
        body = orjson.dumps({"ts": int(time.time() * 1000), "values": {"pm25": 42}})
        bodies = [body] * args.readings
        for size in (int(c) for c in args.clusters.split(",")):
            replicas = size
            cluster = NatsCluster(size).start()
            CLUSTER.append(cluster)
            key = f"{size}-node-R{replicas}"
            runs: dict[str, Any] = {}
            try:
                for p in counts:
                    say(f"{key}: {p} process(es), load {os.getloadavg()[0]:.1f}")
                    loads = [os.getloadavg()[0]]
                    raw = raw_run(cluster, p, bodies)
                    loads.append(os.getloadavg()[0])
                    broker = broker_run(cluster, replicas, p, bodies)
                    loads.append(os.getloadavg()[0])
                    ingest = ingest_run(cluster, replicas, p, args.readings, plain_url, name)
                    loads.append(os.getloadavg()[0])
                    events = events_run(cluster, replicas, p, args.events, database_url)
                    loads.append(os.getloadavg()[0])
                    runs[str(p)] = {"raw_nats": raw, "jetstream": broker, "ingest": ingest, "events": events,
                                    "ingest_vs_raw": round(ingest["per_s"] / raw["per_s"], 4),
                                    "jetstream_vs_raw": round(broker["consume_per_s"] / raw["per_s"], 3),
                                    "load_1m": [round(x, 2) for x in loads]}  # before the stages, after each
                    say(orjson.dumps(runs[str(p)]).decode())
            finally:
                end_children()
                cluster.stop()
            out["clusters"][key] = runs
        out["postgres_copy"] = asyncio.run(copy_ceiling(plain_url, args.copy_rows))
        out["load_at_end"] = round(os.getloadavg()[0], 2)
    finally:
        with contextlib.suppress(Exception):
            admin_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    print(orjson.dumps(out).decode(), flush=True)


if __name__ == "__main__":
    main()
