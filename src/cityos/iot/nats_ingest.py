"""Ingest workers that pull device messages from a NATS JetStream stream (`CITYOS_INGEST_NATS_URL`).

Devices publish on `cityos/devices/<name>/telemetry` (and the other platform topics of
`cityos.iot.ingest`), either to NATS's MQTT listener (which maps `/` to `.`) or through a bridge; the
subjects `cityos.devices.>` are kept by a work-queue stream (`CITYOS_DEVICES`, replicated over the
cluster). Every worker, in any process on any machine, pulls from the one durable consumer
`cityos-ingest`: a message goes to one worker. A batch is committed with `IotService.ingest` and only
then acknowledged (durable before acknowledged, as with MQTT); a worker that dies before its acks
leaves the messages to be redelivered after `ack_wait`, and a redelivered reading is stored once
(same device, key and timestamp).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os

import nats
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, RetentionPolicy, StorageType, StreamConfig

from cityos.core.jetstream import add_stream_when_ready, servers
from cityos.iot.ingest import PREFIX, BatchCommitter, WorkerStats, envelope_for
from cityos.iot.messages import Envelope
from cityos.iot.service import IotService

log = logging.getLogger("cityos.iot.nats_ingest")

DURABLE = "cityos-ingest"


def subject_prefix(prefix: str = PREFIX) -> str:
    return prefix.replace("/", ".")


def envelope_of(subject: str, payload: bytes, prefix: str = PREFIX) -> Envelope:
    """A NATS subject → an Envelope. NATS 2.10's MQTT listener writes topic `a/b.c` as subject `a.b//c`
    (a `.` inside a level becomes `//`; 2.9 refuses such topics), and device names may hold dots."""
    return envelope_for("/".join(level.replace("//", ".") for level in subject.split(".")), payload, prefix)


class JetStreamIngestWorker(BatchCommitter):
    def __init__(self, service: IotService, url: str, client_id: str, *, stream: str = "CITYOS_DEVICES",
                 prefix: str = PREFIX, replicas: int = 1, batch: int = 500, ack_wait: float = 30.0) -> None:
        self.service = service
        self.url = url
        self.client_id = client_id
        self.stream = stream
        self.prefix = prefix
        self.replicas = replicas
        self.batch = batch
        self.ack_wait = ack_wait
        self.stats = WorkerStats()
        self._nc: NATS | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._nc = await nats.connect(servers(self.url), name=self.client_id, max_reconnect_attempts=-1,
                                      reconnect_time_wait=0.5, error_cb=_quiet)
        js = self._nc.jetstream(timeout=5.0)
        await ensure_device_stream(js, self.stream, self.prefix, self.replicas)
        self._task = asyncio.create_task(self._run(js), name=f"cityos-ingest-{self.client_id}")

    async def stop(self) -> None:
        """Let the batch in flight commit and be acknowledged, then leave."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
        if self._nc is not None:
            with contextlib.suppress(Exception):
                await self._nc.flush(timeout=2)
                await self._nc.close()
            self._nc = None

    async def _run(self, js: JetStreamContext) -> None:
        config = ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, ack_wait=self.ack_wait,
                                max_ack_pending=max(self.batch * 8, 1000))
        subscription = None
        while True:
            try:
                if subscription is None:
                    subscription = await js.pull_subscribe(f"{subject_prefix(self.prefix)}.>", durable=DURABLE,
                                                           stream=self.stream, config=config)
                messages = await subscription.fetch(self.batch, timeout=1.0)
            except nats.errors.TimeoutError:
                continue
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a node down, a leader being elected: pull again
                log.info("ingest %s: %r", self.client_id, exc)
                await asyncio.sleep(0.5)
                continue
            if not messages:
                # nats-py returns no messages (not a timeout) when the pull is answered by a status, e.g.
                # an earlier pull's 408 expiry: most idle pulls on a 3-node cluster. Not a batch to commit.
                continue
            self.stats.received += len(messages)
            # Shielded: a stop during the commit lets it finish and acknowledge (nothing stored twice).
            await asyncio.shield(self._commit_and_ack(messages))

    async def _commit_and_ack(self, messages: list[Msg]) -> None:
        await self._commit_envelopes([envelope_of(m.subject, m.data, self.prefix) for m in messages])
        for message in messages:
            try:
                await message.ack()
                self.stats.acked += 1
            except Exception as exc:  # redelivered later, and stored once
                log.info("ingest %s: ack lost: %r", self.client_id, exc)


async def ensure_device_stream(js: JetStreamContext, stream: str, prefix: str = PREFIX, replicas: int = 1) -> None:
    config = StreamConfig(name=stream, subjects=[f"{subject_prefix(prefix)}.>"], num_replicas=replicas,
                          storage=StorageType.FILE, retention=RetentionPolicy.WORK_QUEUE)
    await add_stream_when_ready(js, config)


async def _quiet(exc: Exception) -> None:
    log.info("NATS connection: %r", exc)


async def start_nats_workers(service: IotService, url: str) -> list[JetStreamIngestWorker]:
    """`CITYOS_INGEST_NATS_WORKERS` (default 1) workers on `url`, stream `CITYOS_INGEST_NATS_STREAM`."""
    count = int(os.environ.get("CITYOS_INGEST_NATS_WORKERS") or 1)
    stream = os.environ.get("CITYOS_INGEST_NATS_STREAM") or "CITYOS_DEVICES"
    replicas = int(os.environ.get("CITYOS_INGEST_NATS_REPLICAS") or 1)
    workers = [JetStreamIngestWorker(service, url, f"cityos-ingest-nats-{os.getpid()}-{i}", stream=stream,
                                     replicas=replicas) for i in range(count)]
    for worker in workers:
        await worker.start()
    return workers
