"""Benchmark of NGSI-LD notifications (outbox + sender) on PostgreSQL, with a baseline in the same run.

    uv run python bench/notify_bench.py                        # 1,000 changes/s for 10 s; 20,000-change loss run
    uv run python bench/notify_bench.py --loss-changes 100000  # the full loss run
    uv run python bench/notify_bench.py --sender inprocess     # every API worker also sends

What it does:

1. creates a fresh database ``cityos_notify_<random>`` on ``--pg-admin-url`` (dropped at the end),
   starts ``cityos serve --workers W`` as a real subprocess (every worker runs a sender; endpoints
   are leased to one of them), and HTTP receivers as separate processes (raw asyncio HTTP/1.1
   servers that append ``notification id, entity id, value, receive time`` to a file);
2. baseline: raw HTTP POST round trips of a notification-sized body from this process to the
   same receiver (p50/p99);
3. latency: a subscription on ``pm25`` of 1,000 entities (normalized, sysAttrs); attribute updates
   are sent at ``--rate`` changes/s (``--batch`` entities per ``POST /entityOperations/update``; 1
   means ``PATCH /entities/{id}/attrs``) for ``--seconds``. Reported: change -> received, from the
   attribute's ``modifiedAt`` (server time, set just before the commit: an upper bound of
   commit -> received; the target applies to this one); ack -> received (from the moment this
   client saw the 2xx, which a loaded client sees late, so it can be negative); send -> received;
4. loss: two subscriptions (receivers A and B) and ``--loss-changes`` changes in batches of 100;
   receiver B is down for the middle third of the run, and the server is SIGKILLed once halfway
   and restarted. Committed changes are read from the attribute history (the commit log); lost =
   committed changes that never reached a receiver; phantom = received values never committed.

Prints exactly one JSON line on stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
from bench_auth import bearer

ROOT = Path(__file__).resolve().parent.parent
ENTITY = "urn:ngsi-ld:AirQualityObserved:{:06d}"
PM25 = "https://uri.etsi.org/ngsi-ld/default-context/pm25"
JSON_HEADERS = {"Content-Type": "application/json"}


def log(message: str) -> None:
    print(f"[notify_bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# ---------------------------------------------------------------------- the receiver process


async def _serve_receiver(port: int, out: Path) -> None:
    sink = out.open("a", buffering=1 << 16)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                body = await reader.readexactly(length) if length else b""
                now = time.time()
                if body:
                    note = orjson.loads(body)
                    for entity in note.get("data", []):
                        attr = entity.get("pm25")
                        value = attr.get("value") if isinstance(attr, dict) else attr
                        changed = attr.get("modifiedAt", "") if isinstance(attr, dict) else ""
                        sink.write(f"{note.get('id')}\t{entity['id']}\t{value}\t{now}\t{changed}\n")
                    # Recorded before acknowledged: the OS keeps flushed lines when this process is killed.
                    sink.flush()
                writer.write(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=1024)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)

    async def flush() -> None:
        while True:
            await asyncio.sleep(0.2)
            sink.flush()

    flusher = asyncio.create_task(flush())
    await stop.wait()
    flusher.cancel()
    server.close()
    sink.flush()
    sink.close()


class Receiver:
    def __init__(self, workdir: Path, name: str) -> None:
        self.port = free_port()
        self.out = workdir / f"{name}.tsv"
        self.out.touch()
        self.url = f"http://127.0.0.1:{self.port}/notify"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen([sys.executable, __file__, "receiver", str(self.port), str(self.out)])
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 0.2):
                return
            time.sleep(0.05)
        raise RuntimeError("receiver did not start")

    def stop(self, hard: bool = False) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL if hard else signal.SIGTERM)
            self.proc.wait()

    def records(self) -> list[tuple[str, str, int, float]]:
        return [(n, e, v, at) for n, e, v, at, _changed in self.records_with_change_time()]

    def records_with_change_time(self) -> list[tuple[str, str, int, float, float | None]]:
        """(notification id, entity id, value, receive time, the attribute's modifiedAt as epoch seconds)."""
        found = []
        for line in self.out.read_text().splitlines():
            parts = line.split("\t")
            if len(parts) == 5 and parts[2] not in ("None", ""):
                changed = datetime.fromisoformat(parts[4].replace("Z", "+00:00")).timestamp() if parts[4] else None
                found.append((parts[0], parts[1], int(float(parts[2])), float(parts[3]), changed))
        return found


# ---------------------------------------------------------------------- the server


class Server:
    def __init__(self, database_url: str, workers: int, notify: bool = True) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.workers = workers
        self.env = {**os.environ, "CITYOS_DATABASE_URL": database_url, "CITYOS_NOTIFY_LEASE_SECONDS": "3",
                    "CITYOS_DB_POOL_SIZE": "8", "CITYOS_NOTIFY_WORKER": "1" if notify else "0"}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, migrate: bool) -> None:
        if migrate:
            subprocess.run([sys.executable, "-m", "cityos.cli", "db", "upgrade"], env=self.env, cwd=ROOT, check=True,
                           stdout=subprocess.DEVNULL)
        # uvicorn directly rather than `cityos serve`: its worker health check (5 s by default) kills
        # workers that start slowly on a loaded machine.
        args = [sys.executable, "-m", "uvicorn", "cityos.app:create_app", "--factory", "--host", "127.0.0.1",
                "--port", str(self.port), "--workers", str(self.workers), "--log-level", "warning",
                "--no-access-log", "--timeout-worker-healthcheck", "120"]
        self.proc = subprocess.Popen(args, env=self.env, cwd=ROOT, start_new_session=True,
                                     stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    time.sleep(1.0)  # let every worker process finish its start-up
                    return
            if self.proc.poll() is not None:
                raise RuntimeError("the server exited during start-up")
            time.sleep(0.1)
        raise RuntimeError("the server did not start")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()


# ---------------------------------------------------------------------- database


async def admin(url: str, statement: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


async def committed_values(database_url: str, minimum: int) -> set[tuple[str, int]]:
    import asyncpg

    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch("SELECT entity_id, (instance->>'value')::float AS v FROM hub_attribute_history "
                                "WHERE attr = $1 AND deleted = 0", PM25)
    finally:
        await conn.close()
    return {(r["entity_id"], int(r["v"])) for r in rows if r["v"] is not None and r["v"] >= minimum}


# ---------------------------------------------------------------------- phases


async def setup_entities(http: httpx.AsyncClient, n: int) -> None:
    for start in range(0, n, 500):
        batch = [{"id": ENTITY.format(i), "type": "AirQualityObserved", "pm25": {"type": "Property", "value": 0}}
                 for i in range(start, min(n, start + 500))]
        r = await http.post("/ngsi-ld/v1/entityOperations/upsert", json=batch, headers=JSON_HEADERS)
        r.raise_for_status()


async def subscribe(http: httpx.AsyncClient, uri: str) -> None:
    # sysAttrs: the attribute's modifiedAt is the server's time of the change, set just before the commit.
    body = {"type": "Subscription", "entities": [{"type": "AirQualityObserved"}], "watchedAttributes": ["pm25"],
            "notification": {"endpoint": {"uri": uri}, "format": "normalized", "attributes": ["pm25"],
                             "sysAttrs": True}}
    r = await http.post("/ngsi-ld/v1/subscriptions", json=body, headers=JSON_HEADERS)
    r.raise_for_status()


async def baseline(url: str, count: int) -> dict[str, float]:
    body = orjson.dumps({"id": "urn:ngsi-ld:Notification:x", "type": "Notification", "subscriptionId": "s",
                         "data": [{"id": ENTITY.format(1), "type": "AirQualityObserved", "pm25": 1}]})
    times = []
    async with httpx.AsyncClient(timeout=5) as http:
        for _ in range(count):
            started = time.perf_counter()
            (await http.post(url, content=body, headers=JSON_HEADERS)).raise_for_status()
            times.append((time.perf_counter() - started) * 1000)
    return {"p50_ms": round(percentile(times, 0.5), 2), "p99_ms": round(percentile(times, 0.99), 2)}


async def write_change(http: httpx.AsyncClient, ids: list[int], value: int, batch: int) -> bool:
    if batch == 1:
        r = await http.patch(f"/ngsi-ld/v1/entities/{ENTITY.format(ids[0])}/attrs", json={"pm25": value},
                             headers=JSON_HEADERS)
        return r.status_code == 204
    body = [{"id": ENTITY.format(i), "type": "AirQualityObserved", "pm25": value + k} for k, i in enumerate(ids)]
    r = await http.post("/ngsi-ld/v1/entityOperations/update", json=body, headers=JSON_HEADERS)
    return r.status_code == 204


async def latency_phase(server: Server, receiver: Receiver, rate: int, seconds: float, batch: int,
                        entities: int, concurrency: int) -> dict[str, Any]:
    """Paced writes; each value is unique, so a received value maps back to its write."""
    requests = int(rate * seconds / batch)
    interval = batch / rate
    sent: dict[int, tuple[float, float]] = {}  # first value of a request -> (send, ack) wall times
    errors = 0
    queue: asyncio.Queue[int] = asyncio.Queue()
    base = 1_000_000
    started = time.perf_counter()

    async def worker(http: httpx.AsyncClient) -> None:
        nonlocal errors
        while True:
            k = await queue.get()
            due = started + k * interval
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            value = base + k * batch
            ids = [(k * batch + j) % entities for j in range(batch)]
            t_send = time.time()
            try:
                ok = await write_change(http, ids, value, batch)
            except httpx.HTTPError:
                ok = False
            if ok:
                sent[value] = (t_send, time.time())
            else:
                errors += 1
            queue.task_done()

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=server.url, timeout=30, limits=limits, headers=bearer()) as http:
        for k in range(requests):
            queue.put_nowait(k)
        tasks = [asyncio.create_task(worker(http)) for _ in range(concurrency)]
        await queue.join()
        elapsed = time.perf_counter() - started
        for task in tasks:
            task.cancel()
    achieved = len(sent) * batch / elapsed
    want = {base + k * batch + j for k in range(requests) for j in range(batch) if base + k * batch in sent}
    deadline = time.monotonic() + 60
    received: dict[int, tuple[float, float | None]] = {}
    while time.monotonic() < deadline:
        for _nid, _eid, value, at, changed in receiver.records_with_change_time():
            if value >= base:
                received.setdefault(value, (at, changed))
        if want <= set(received):
            break
        await asyncio.sleep(0.5)
    from_ack, from_send, from_change = [], [], []
    for value in want & set(received):
        first = value - (value - base) % batch
        t_send, t_ack = sent[first]
        at, changed = received[value]
        from_ack.append((at - t_ack) * 1000)
        from_send.append((at - t_send) * 1000)
        if changed is not None:
            from_change.append((at - changed) * 1000)
    return {"target_changes_per_s": rate, "achieved_changes_per_s": round(achieved, 1), "batch": batch,
            "changes": len(want), "write_errors": errors, "not_received": len(want - set(received)),
            "change_to_receive_p50_ms": round(percentile(from_change, 0.5), 1),
            "change_to_receive_p99_ms": round(percentile(from_change, 0.99), 1),
            "ack_to_receive_p50_ms": round(percentile(from_ack, 0.5), 1),
            "ack_to_receive_p99_ms": round(percentile(from_ack, 0.99), 1),
            "send_to_receive_p50_ms": round(percentile(from_send, 0.5), 1),
            "send_to_receive_p99_ms": round(percentile(from_send, 0.99), 1),
            "p99_target_met": percentile(from_change, 0.99) < 200}


async def loss_phase(victims: list[Server], server: Server, a: Receiver, b: Receiver, database_url: str,
                     changes: int, entities: int) -> dict[str, Any]:
    """Every server process (API and sender) is SIGKILLed halfway and restarted."""
    batch = 100
    requests = changes // batch
    base = 10_000_000
    state = {"done": 0, "failed_requests": 0}
    next_k = iter(range(requests))
    events: list[str] = []

    async def writer() -> None:
        async with httpx.AsyncClient(base_url=server.url, timeout=30, headers=bearer()) as http:
            for k in next_k:
                value = base + k * batch
                ids = [(k * batch + j) % entities for j in range(batch)]
                while True:
                    try:
                        if await write_change(http, ids, value, batch):
                            break
                    except httpx.HTTPError:
                        pass
                    # In doubt (the server may have died after the commit): retry with NEW values.
                    state["failed_requests"] += 1
                    value += base
                    await asyncio.sleep(0.1)
                state["done"] += 1
                progress.set()

    progress = asyncio.Event()

    async def reach(fraction: float) -> None:
        while state["done"] < requests * fraction:
            await progress.wait()
            progress.clear()

    async def chaos() -> None:
        await reach(1 / 3)
        b.stop(hard=True)
        events.append(f"receiver B down at {state['done'] * batch} changes")
        await reach(1 / 2)
        for victim in victims:
            victim.kill()
        events.append(f"server processes killed at {state['done'] * batch} changes")
        for victim in victims:
            await asyncio.to_thread(victim.start, False)
        events.append("server restarted")
        await reach(2 / 3)
        b.start()
        events.append(f"receiver B up at {state['done'] * batch} changes")

    started = time.perf_counter()
    await asyncio.gather(chaos(), *(writer() for _ in range(4)))
    elapsed = time.perf_counter() - started
    for event in events:
        log(event)
    committed = await committed_values(database_url, base)
    result: dict[str, Any] = {"changes_committed": len(committed), "write_seconds": round(elapsed, 1),
                              "in_doubt_requests": state["failed_requests"], "events": events}
    drain_started = time.perf_counter()
    deadline = time.monotonic() + 180
    while True:
        got = {name: {(eid, v) for _n, eid, v, _t in r.records() if v >= base} for name, r in (("A", a), ("B", b))}
        if all(committed <= values for values in got.values()) or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.5)
    result["drain_seconds_after_writes"] = round(time.perf_counter() - drain_started, 1)
    for name, receiver in (("A", a), ("B", b)):
        records = [r for r in receiver.records() if r[2] >= base]
        values = {(eid, v) for _n, eid, v, _t in records}
        notes = [n for n, *_rest in records]
        result[f"lost_{name}"] = len(committed - values)
        result[f"phantom_{name}"] = len(values - committed)
        result[f"duplicate_entity_changes_{name}"] = len(records) - len(set(zip(notes, (r[1] for r in records),
                                                                                strict=True)))
    result["zero_loss"] = result["lost_A"] == 0 and result["lost_B"] == 0
    return result


async def run(args: argparse.Namespace) -> dict[str, Any]:
    import tempfile

    name = f"cityos_notify_{secrets.token_hex(5)}"
    admin_url = args.pg_admin_url
    database_url = f"{admin_url.rsplit('/', 1)[0]}/{name}"
    await admin(admin_url, f'CREATE DATABASE "{name}"')
    workdir = Path(tempfile.mkdtemp(prefix="notify_bench_"))
    receivers = [Receiver(workdir, n) for n in ("latency", "A", "B")]
    dedicated = args.sender == "dedicated"
    server = Server(database_url, args.workers, notify=not dedicated)
    # The scale-out topology: API workers with CITYOS_NOTIFY_WORKER=0 and one process that only sends.
    sender = Server(database_url, 1, notify=True) if dedicated else None
    try:
        for receiver in receivers:
            receiver.start()
        log(f"starting the server ({args.workers} workers, sender {args.sender}) on {name}")
        await asyncio.to_thread(server.start, True)
        if sender is not None:
            await asyncio.to_thread(sender.start, False)
        result: dict[str, Any] = {"bench": "notify", "database": "postgresql", "server_workers": args.workers,
                                  "sender": args.sender, "cpus": os.cpu_count()}
        result["baseline_raw_http_post"] = await baseline(receivers[0].url, 1000)
        async with httpx.AsyncClient(base_url=server.url, timeout=60, headers=bearer()) as http:
            await setup_entities(http, args.entities)
            await subscribe(http, receivers[0].url)
        log(f"latency: {args.rate} changes/s for {args.seconds}s, batch {args.batch}")
        result["latency"] = await latency_phase(server, receivers[0], args.rate, args.seconds, args.batch,
                                                args.entities, args.concurrency)
        async with httpx.AsyncClient(base_url=server.url, timeout=60, headers=bearer()) as http:
            r = await http.get("/ngsi-ld/v1/subscriptions")
            for sub in r.json():
                await http.delete(f"/ngsi-ld/v1/subscriptions/{sub['id']}")
            await subscribe(http, receivers[1].url)
            await subscribe(http, receivers[2].url)
        log(f"loss: {args.loss_changes} changes, receiver B down for a third, one server kill")
        victims = [server, *([sender] if sender else [])]
        result["loss"] = await loss_phase(victims, server, receivers[1], receivers[2], database_url,
                                          args.loss_changes, args.entities)
        return result
    finally:
        server.stop()
        if sender is not None:
            sender.stop()
        for receiver in receivers:
            receiver.stop()
        with contextlib.suppress(Exception):
            await admin(admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "receiver":
        asyncio.run(_serve_receiver(int(sys.argv[2]), Path(sys.argv[3])))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pg-admin-url", default=os.environ.get("CITYOS_TEST_POSTGRES_URL",
                                                                 "postgresql://postgres@127.0.0.1:5432/test"))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rate", type=int, default=1000, help="changes per second in the latency phase")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--batch", type=int, default=1, help="entities per write request in the latency phase")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--entities", type=int, default=1000)
    parser.add_argument("--loss-changes", type=int, default=20_000, help="100000 for the full loss run")
    parser.add_argument("--sender", choices=["dedicated", "inprocess"], default="dedicated",
                        help="dedicated: API workers with CITYOS_NOTIFY_WORKER=0 plus one sending process; "
                             "inprocess: every API worker also sends")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args))), flush=True)


if __name__ == "__main__":
    main()
