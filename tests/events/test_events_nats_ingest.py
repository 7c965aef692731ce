"""Device messages pulled from a JetStream work-queue stream on a 3-node cluster: committed, then acked.

Two workers share the one durable consumer; a NATS node is killed in the middle of the stream.
Every reading published (and acknowledged by the stream) is stored exactly once.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import nats
import orjson
from sqlalchemy import func, select

from cityos.core.jetstream import servers
from cityos.hub.models import attribute_history
from cityos.iot.models import DeviceIn
from cityos.iot.nats_ingest import JetStreamIngestWorker, subject_prefix
from nats_cluster import NatsCluster


async def readings(app: Any, like: str) -> tuple[int, int]:
    """(history rows of pm25, distinct (entity, time) pairs): equal when nothing was stored twice."""
    t = attribute_history.c
    where = (t.entity_id.like(like), t.attr.like("%/pm25"))
    async with app.state.engine.connect() as conn:
        rows = int((await conn.execute(select(func.count()).select_from(attribute_history).where(*where))).scalar_one())
        pairs = select(t.entity_id, t.ts).where(*where).distinct().subquery()
        distinct = int((await conn.execute(select(func.count()).select_from(pairs))).scalar_one())
    return rows, distinct


async def test_two_workers_pull_from_the_stream_and_a_node_dies_mid_stream(client: Any, app: Any,
                                                                           cluster: NatsCluster) -> None:
    prefix = f"cityos/t{uuid.uuid4().hex[:8]}"
    stream = f"D{uuid.uuid4().hex[:8]}"
    names = [f"js-{i:02d}" for i in range(10)]
    result = await app.state.iot.provision_many([DeviceIn(name=n, profile="air-quality", lon=110.3, lat=20.0,
                                                          district="D1") for n in names])
    assert not result.errors
    workers = [JetStreamIngestWorker(app.state.iot, cluster.url, f"w{i}", stream=stream, prefix=prefix,
                                     replicas=3, batch=50, ack_wait=5.0) for i in range(2)]
    for worker in workers:
        await worker.start()
    publisher = await nats.connect(servers(cluster.url), max_reconnect_attempts=-1, reconnect_time_wait=0.2)
    js = publisher.jetstream(timeout=5.0)
    total, acked = 1200, 0
    base = int(time.time() * 1000) - 3_600_000
    try:
        for i in range(total):
            if i == total // 3:
                cluster.nodes[1].kill()
            body = orjson.dumps({"ts": base + i, "values": {"pm25": i % 300}})
            for _ in range(50):  # the publisher retries until the stream acknowledges: it then owns the message
                try:
                    await js.publish(f"{subject_prefix(prefix)}.{names[i % 10]}.telemetry", body)
                    acked += 1
                    break
                except Exception:
                    await asyncio.sleep(0.2)
        assert acked == total
        like = "urn:ngsi-ld:AirQualityObserved:%"
        for _ in range(600):
            stored, _distinct = await readings(app, like)
            if stored >= total:
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(2 * workers[0].ack_wait)  # a lost ack would bring a redelivery by now
        stored, distinct = await readings(app, like)
        assert stored == total == distinct
        # Both pulled from the one consumer; how the work splits depends on who asks first (a loaded
        # machine may leave one worker with little), so only the total is checked.
        assert sum(w.stats.received for w in workers) >= total
        info = await js.stream_info(stream)
        assert info.state.messages == 0  # work queue: every message acknowledged after its commit
    finally:
        await publisher.close()
        for worker in workers:
            await worker.stop()
        cluster.nodes[1].start()


async def test_an_idle_worker_commits_no_empty_batches(client: Any, app: Any, cluster: NatsCluster) -> None:
    """On a drained stream most pulls are answered by a status (an earlier pull's 408 expiry), for which
    nats-py's fetch returns an empty list rather than a timeout: those are not batches to commit."""
    prefix = f"cityos/t{uuid.uuid4().hex[:8]}"
    stream = f"D{uuid.uuid4().hex[:8]}"
    result = await app.state.iot.provision_many([DeviceIn(name="idle-01", profile="air-quality", lon=110.3,
                                                          lat=20.0, district="D1")])
    assert not result.errors
    worker = JetStreamIngestWorker(app.state.iot, cluster.url, "idle", stream=stream, prefix=prefix, replicas=3,
                                   batch=50)
    await worker.start()
    publisher = await nats.connect(servers(cluster.url))
    try:
        js = publisher.jetstream(timeout=10.0)
        body = orjson.dumps({"ts": int(time.time() * 1000), "values": {"pm25": 7}})
        await js.publish(f"{subject_prefix(prefix)}.idle-01.telemetry", body)
        for _ in range(600):
            if worker.stats.readings:
                break
            await asyncio.sleep(0.1)
        assert (worker.stats.received, worker.stats.readings, worker.stats.batches) == (1, 1, 1)
        await asyncio.sleep(6)  # six more pulls of one second each on the drained stream
        assert (worker.stats.received, worker.stats.batches) == (1, 1)
    finally:
        await publisher.close()
        await worker.stop()
