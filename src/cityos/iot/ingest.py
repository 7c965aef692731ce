"""MQTT ingestion workers: shared subscription, batching, acknowledgement after commit.

Topics (see `cityos.iot` for why devices' `v1/...` topics are mapped):

    cityos/devices/<name>/telemetry            ← v1/devices/me/telemetry
    cityos/devices/<name>/attributes           ← v1/devices/me/attributes
    cityos/devices/<name>/rpc/response/<id>    ← v1/devices/me/rpc/response/<id>
    cityos/devices/<name>/gateway/<connect|disconnect|telemetry|attributes>  ← v1/gateway/...
    cityos/devices/<name>/rpc/request/<id>     → v1/devices/me/rpc/request/<id>   (published by commands.py)

A worker is a paho-mqtt 2.x client (MQTT 5, fixed client id, clean_start=False and a session
that never expires, so QoS 1 messages wait in the broker while the worker is away) with
`manual_ack=True`. It subscribes with `$share/cityos/...` so several workers (threads in one
process or many processes on many hosts) split the load. Messages are batched (up to
`CITYOS_INGEST_BATCH`, default 2,000, or `CITYOS_INGEST_BATCH_BYTES` of payload, default 512 KiB,
or `CITYOS_INGEST_BATCH_MS`, default 50 ms), committed
with `IotService.ingest` in one transaction, and only then PUBACKed. Devices' answers to RPC requests
take a lane of their own, committed as soon as they arrive: a command's sender waits for its answer,
and behind a batch of thousands of readings it would wait seconds. PUBACKs still leave in the order
the messages came in (MQTT 5 § 4.6), whichever lane committed them first. A PUBACK is sent only on
the connection the message came in on: after a reconnect the broker redelivers the message
and the duplicate is stored once (same device, key and ts). A database outage makes the worker
retry the batch with back-off without acknowledging; a message that breaks the batch for any
other reason is isolated (one-by-one retry) and dead-lettered with reason `internal_error`.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar
from urllib.parse import urlparse

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from cityos.core import clock
from cityos.core.tasks import StepGuard
from cityos.iot.messages import Envelope, IngestReport
from cityos.iot.service import IotService

log = logging.getLogger("cityos.iot.ingest")

PREFIX = os.environ.get("CITYOS_IOT_TOPIC_PREFIX", "cityos/devices")
SHARE_GROUP = "cityos"
_GATEWAY_KINDS = ("connect", "disconnect", "telemetry", "attributes")


def subscriptions(prefix: str = PREFIX, shared: bool = True) -> list[str]:
    filters = [f"{prefix}/+/telemetry", f"{prefix}/+/attributes", f"{prefix}/+/gateway/+",
               f"{prefix}/+/rpc/response/+"]
    return [f"$share/{SHARE_GROUP}/{f}" for f in filters] if shared else filters


def map_device_topic(topic: str, device_name: str, prefix: str = PREFIX) -> str | None:
    """A device's ThingsBoard topic → the platform topic carrying its (authenticated) name; None if not allowed."""
    if topic in ("v1/devices/me/telemetry", "v1/devices/me/attributes"):
        return f"{prefix}/{device_name}/{topic.rsplit('/', 1)[1]}"
    if topic.startswith("v1/devices/me/rpc/response/"):
        return f"{prefix}/{device_name}/rpc/response/{topic.rsplit('/', 1)[1]}"
    if topic.startswith("v1/gateway/") and topic[len("v1/gateway/"):] in _GATEWAY_KINDS:
        return f"{prefix}/{device_name}/gateway/{topic[len('v1/gateway/'):]}"
    return None


def envelope_for(topic: str, payload: bytes, prefix: str = PREFIX) -> Envelope:
    """A platform topic → an Envelope (unknown topics become `unknown_topic` dead letters)."""
    received = clock.now()
    rest = topic[len(prefix) + 1:] if topic.startswith(prefix + "/") else None
    parts = rest.split("/") if rest else []
    if len(parts) >= 2:
        name, kind = parts[0], "/".join(parts[1:])
        if kind in ("telemetry", "attributes") or (len(parts) == 3 and parts[1] == "gateway"
                                                   and parts[2] in _GATEWAY_KINDS):
            return Envelope(name, kind, payload, "mqtt", topic, received)
        if len(parts) == 4 and parts[1:3] == ["rpc", "response"] and parts[3].isdecimal():
            return Envelope(name, "rpc/response", payload, "mqtt", topic, received, rpc_id=int(parts[3]))
    return Envelope(parts[0] if parts else None, "unknown", payload, "mqtt", topic, received,
                    reason="unknown_topic", detail=f"no ingestion for topic {topic[:200]!r}")


def broker_address(url: str) -> tuple[str, int]:
    parsed = urlparse(url)
    return parsed.hostname or "127.0.0.1", parsed.port or 1883


_TRANSIENT_SQLSTATE = ("08", "57P", "53", "40001", "40P01", "55P03", "58")
_TRANSIENT_WORDS = ("connection", "deadlock", "serializ", "shutdown", "shutting down", "terminat",
                    "cannot connect", "starting up", "recovery", "connect call failed", "timeout")


def _transient(exc: BaseException) -> bool:
    """Errors that say the database (or the network to it) is away or busy, not that the batch is bad."""
    if isinstance(exc, OSError | ConnectionError | TimeoutError | OperationalError | InterfaceError):
        return True
    seen: BaseException | None = exc
    while seen is not None:
        state = str(getattr(seen, "sqlstate", None) or getattr(seen, "pgcode", None) or "")
        if state.startswith(_TRANSIENT_SQLSTATE):
            return True
        if isinstance(seen, DBAPIError) and seen.connection_invalidated:
            return True
        name = type(seen).__name__
        if name in ("CannotConnectNowError", "AdminShutdownError", "ConnectionDoesNotExistError",
                    "InterfaceError", "ConnectionFailureError"):
            return True
        seen = getattr(seen, "orig", None) or seen.__cause__
    text = f"{exc!r} {getattr(exc, 'orig', '')!r}".lower()
    return any(word in text for word in _TRANSIENT_WORDS)


@dataclass
class InboundMessage:
    generation: int
    mid: int
    qos: int
    envelope: Envelope
    seq: int = 0  # arrival order on this worker, for acknowledging in order


class InOrderAcks:
    """Releases committed messages for PUBACK in arrival order, though two lanes commit them.

    MQTT requires PUBACKs in the order the PUBLISH packets came in; a message committed early (a
    device's answer) waits here for those that arrived before it."""

    def __init__(self) -> None:
        self._next = 0
        self._committed: dict[int, InboundMessage] = {}

    def committed(self, msgs: list[InboundMessage]) -> list[InboundMessage]:
        for msg in msgs:
            self._committed[msg.seq] = msg
        released: list[InboundMessage] = []
        while self._next in self._committed:
            released.append(self._committed.pop(self._next))
            self._next += 1
        return released


@dataclass
class WorkerStats:
    received: int = 0
    acked: int = 0
    batches: int = 0
    readings: int = 0
    dead_letters: int = 0
    retries: int = 0
    connects: int = 0
    commit_seconds: float = 0.0
    on_commit: list[Callable[[list[Envelope], IngestReport], None]] = field(default_factory=list)


class BatchCommitter:
    """Commits batches of envelopes with `IotService.ingest`: the part every ingest worker shares
    (MQTT here, JetStream in `cityos.iot.nats_ingest`). The caller acknowledges after it returns."""

    service: IotService
    stats: WorkerStats
    client_id: str

    async def _commit_envelopes(self, envelopes: list[Envelope], urgent: bool = False) -> None:
        """Commit, retrying while the database is away; a batch that breaks is stored one by one. `urgent`
        (devices' answers, awaited): before the readings waiting for SQLite's writer."""
        delay = 0.2
        while True:
            started = time.perf_counter()
            try:
                report = await self.service.ingest(envelopes, urgent)
                self._record(envelopes, report, started)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if _transient(exc):
                    self.stats.retries += 1
                    log.warning("ingest %s: database unavailable (%s); retrying in %.1fs", self.client_id,
                                type(exc).__name__, delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 5.0)
                    continue
                log.exception("ingest %s: batch failed; isolating the message that breaks it", self.client_id)
                await self._one_by_one(envelopes)
                return

    async def _one_by_one(self, envelopes: list[Envelope]) -> None:
        for env in envelopes:
            while True:
                try:
                    started = time.perf_counter()
                    self._record([env], await self.service.ingest([env]), started)
                    break
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    if _transient(exc):
                        await asyncio.sleep(1.0)
                        continue
                    log.exception("ingest: message on %s dead-lettered as internal_error", env.topic)
                    bad = Envelope(env.device, env.kind, env.payload, env.source, env.topic, env.received_at,
                                   reason="internal_error", detail=f"{type(exc).__name__}: {exc}"[:500])
                    try:
                        self._record([bad], await self.service.ingest([bad]), time.perf_counter())
                        break
                    except asyncio.CancelledError:
                        raise
                    except Exception:  # never give up on a message: it stays unacknowledged until stored
                        log.exception("ingest: could not even dead-letter a message; retrying")
                        await asyncio.sleep(1.0)

    def _record(self, envelopes: list[Envelope], report: IngestReport, started: float) -> None:
        self.stats.batches += 1
        self.stats.readings += report.stored
        self.stats.dead_letters += report.dead_letters
        self.stats.commit_seconds += time.perf_counter() - started
        for hook in self.stats.on_commit:
            hook(envelopes, report)



class IngestWorker(BatchCommitter):
    """One MQTT client feeding batches to `IotService.ingest`, acknowledging after commit."""

    def __init__(self, service: IotService, url: str, client_id: str, *, shared: bool = True,
                 batch_max: int | None = None, batch_ms: float | None = None, prefix: str = PREFIX,
                 keepalive: int = 15, committers: int | None = None) -> None:
        self.service = service
        self.host, self.port = broker_address(url)
        self.client_id = client_id
        self.topics = subscriptions(prefix, shared)
        self.prefix = prefix
        self.batch_max = batch_max or int(os.environ.get("CITYOS_INGEST_BATCH", "2000"))
        self.batch_ms = batch_ms if batch_ms is not None else float(os.environ.get("CITYOS_INGEST_BATCH_MS", "50"))
        self.batch_bytes = int(os.environ.get("CITYOS_INGEST_BATCH_BYTES", str(512 * 1024)))
        # PostgreSQL commits a batch's parts side by side; SQLite has one writer, and a second part only
        # lengthens the queue on its writer lock that phase commands and answers wait in.
        sqlite = service.engine.dialect.name == "sqlite"
        self.committers = committers or int(os.environ.get("CITYOS_INGEST_COMMITTERS", "1" if sqlite else "2"))
        self.keepalive = keepalive
        self.stats = WorkerStats()
        self._queue: asyncio.Queue[InboundMessage] = asyncio.Queue()
        self._answers: asyncio.Queue[InboundMessage] = asyncio.Queue()  # devices' RPC answers: their own lane
        self._arrived = 0
        self._acks = InOrderAcks()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._generation = 0
        self._gen_lock = threading.Lock()
        # Messages from the paho thread wait here until the event loop moves them to `_queue`: one
        # loop wake-up per burst instead of one per message.
        self._inbox: list[InboundMessage] = []
        self._inbox_lock = threading.Lock()
        self._task: asyncio.Task[None] | None = None
        self._answer_task: asyncio.Task[None] | None = None
        self._steps = StepGuard(f"ingest {client_id}")  # a stop never cuts a batch's commit short
        self._answer_steps = StepGuard(f"ingest {client_id} answers")
        self._connected = asyncio.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5,
                                  manual_ack=True)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_disconnect = self._on_disconnect
        self.client.reconnect_delay_set(min_delay=1, max_delay=2)
        # The embedded broker's plugin admits the platform's own clients by this name; Mosquitto/EMQX
        # deployments give the ingest user its ACL (subscribe to cityos/devices/#) the same way.
        self.client.username_pw_set(os.environ.get("CITYOS_INGEST_USERNAME", "cityos-ingest"),
                                    os.environ.get("CITYOS_INGEST_PASSWORD") or None)

    # -------------------------------------------------------------- paho thread

    def _on_connect(self, client: mqtt.Client, _userdata: Any, _flags: Any, reason: Any, _props: Any = None) -> None:
        if getattr(reason, "is_failure", False):
            log.warning("ingest %s: broker refused the connection: %s", self.client_id, reason)
            return
        with self._gen_lock:
            self._generation += 1
        self.stats.connects += 1
        client.subscribe([(t, 1) for t in self.topics])
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._connected.set)

    def _on_disconnect(self, _client: mqtt.Client, _userdata: Any, _flags: Any, reason: Any,
                       _props: Any = None) -> None:
        with self._gen_lock:
            self._generation += 1  # nothing received before may be acknowledged on a later connection
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._connected.clear)
        log.info("ingest %s disconnected (%s); paho reconnects by itself", self.client_id, reason)

    def _on_message(self, _client: mqtt.Client, _userdata: Any, message: mqtt.MQTTMessage) -> None:
        envelope = envelope_for(message.topic, bytes(message.payload), self.prefix)
        msg = InboundMessage(self._generation, message.mid, message.qos, envelope)
        assert self._loop is not None
        with self._inbox_lock:
            self._inbox.append(msg)
            if len(self._inbox) > 1:
                return  # a wake-up is already scheduled and will take this one too
        self._loop.call_soon_threadsafe(self._drain_inbox)

    def _drain_inbox(self) -> None:
        with self._inbox_lock:
            msgs, self._inbox = self._inbox, []
        for msg in msgs:
            msg.seq, self._arrived = self._arrived, self._arrived + 1
            lane = self._answers if msg.envelope.kind == "rpc/response" else self._queue
            lane.put_nowait(msg)

    # -------------------------------------------------------------- asyncio side

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._connect()
        self._task = asyncio.create_task(self._run(), name=f"ingest-{self.client_id}")
        self._answer_task = asyncio.create_task(self._run_answers(), name=f"ingest-{self.client_id}-answers")

    def _connect(self) -> None:
        """Connect in the background (paho's thread); a worker for another MQTT version overrides this."""
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 0xFFFFFFFF  # the session (and its queued QoS 1 messages) outlives us
        props.ReceiveMaximum = 65535  # else the broker keeps only 20 unacknowledged messages in flight
        self.client.connect_async(self.host, self.port, keepalive=self.keepalive, clean_start=False, properties=props)
        self.client.loop_start()

    @property
    def connected(self) -> bool:
        """Connected to the broker now (`/ready` asks)."""
        return self._connected.is_set()

    async def wait_connected(self, seconds: float = 10.0) -> None:
        await asyncio.wait_for(self._connected.wait(), seconds)

    async def stop(self, within: float = 10.0) -> None:
        """Stop taking messages; the batch being committed gets `within` seconds to commit and be acknowledged.

        Cancelling a transaction half-way is what stop avoids: on SQLite a connection cancelled inside
        its transaction can leave the database's write lock held, and every other writer waits for it.
        """
        await asyncio.gather(self._steps.stop([self._task], within),
                             self._answer_steps.stop([self._answer_task], within))
        # Unacknowledged messages stay in the broker's session and come back on the next start.
        self.client.disconnect()
        self.client.loop_stop()

    async def _collect(self, queue: asyncio.Queue[InboundMessage], wait_ms: float) -> list[InboundMessage]:
        """Up to `batch_max` messages or `batch_bytes` of payload (a gateway message carries the
        readings of many devices), waiting at most `wait_ms` for more after the first."""
        batch = [await queue.get()]
        size = len(batch[0].envelope.payload)
        deadline = time.monotonic() + wait_ms / 1000
        while len(batch) < self.batch_max and size < self.batch_bytes:
            try:
                msg = queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    msg = await asyncio.wait_for(queue.get(), remaining)
                except TimeoutError:
                    break
            batch.append(msg)
            size += len(msg.envelope.payload)
        return batch

    async def _run(self) -> None:
        while True:
            batch = await self._collect(self._queue, self.batch_ms)
            self.stats.received += len(batch)
            await self._steps.step(self._commit_and_ack(batch))

    async def _run_answers(self) -> None:
        """Answers are few and awaited: commit whatever has arrived at once, beside the readings' batch."""
        while True:
            batch = await self._collect(self._answers, 0)
            self.stats.received += len(batch)
            await self._answer_steps.step(self._commit_and_ack(batch, urgent=True))

    async def _commit_and_ack(self, batch: list[InboundMessage], urgent: bool = False) -> None:
        await asyncio.gather(*(self._commit(part, urgent) for part in self._partition(batch)))
        self._ack(batch)

    def _partition(self, batch: list[InboundMessage]) -> list[list[InboundMessage]]:
        """Split a batch by sender into `committers` parts, committed concurrently: their devices do not
        overlap, so neither waits for the other's row locks, and one part's Python work runs while the
        other waits for the database. All parts commit before any message is acknowledged."""
        if self.committers <= 1 or len(batch) < 2 * self.committers:
            return [batch]
        parts: list[list[InboundMessage]] = [[] for _ in range(self.committers)]
        for msg in batch:
            parts[hash(msg.envelope.device) % self.committers].append(msg)
        return [part for part in parts if part]

    async def _commit(self, batch: list[InboundMessage], urgent: bool = False) -> None:
        await self._commit_envelopes([m.envelope for m in batch], urgent)

    def _ack(self, batch: list[InboundMessage]) -> None:
        with self._gen_lock:
            generation = self._generation
        for msg in self._acks.committed(batch):
            if msg.qos > 0 and msg.generation == generation:
                self.client.ack(msg.mid, msg.qos)
                self.stats.acked += 1

# ---------------------------------------------------------------------- embedded broker (demo)


@functools.cache
def amqtt_plugin_class() -> type:
    """An amqtt auth + topic plugin: username = device token, checked against the registry.

    Register it in the embedded broker's config (`plugins: {"cityos.iot.ingest.CityosBrokerPlugin": {}}`
    for amqtt ≥ 0.12) and set `CityosBrokerPlugin.service` to the running IotService. It accepts
    the ingest workers (username `CITYOS_INGEST_USERNAME`, default "cityos-ingest") and devices
    whose token is valid, and lets a device publish only to its own topics. Use it with
    `MappingBroker`, which rewrites `v1/devices/me/...` and `v1/gateway/...` into the device's
    platform topic, since amqtt's plugins cannot change a message's topic.
    """
    from amqtt.contexts import Action
    from amqtt.plugins.base import BaseAuthPlugin, BaseTopicPlugin

    class CityosBrokerPlugin(BaseAuthPlugin, BaseTopicPlugin):
        service: ClassVar[IotService | None] = None
        devices: ClassVar[dict[str, str]] = {}  # client id → device name
        epochs: ClassVar[dict[str, int]] = {}  # client id → the device's credential epoch when it connected
        broker: ClassVar[Any] = None  # the mapping broker that ends sessions (set by `watch_credentials`)

        @classmethod
        def device_of(cls, client_id: str | None) -> tuple[str | None, bool]:
            """(device name or None for the platform's clients, whether its token still holds)."""
            name = cls.devices.get(client_id or "")
            if name is None or cls.service is None:
                return name, True
            return name, cls.service.token_epoch.get(name, 0) == cls.epochs.get(client_id or "", 0)

        @classmethod
        def clients_of(cls, device: str) -> list[str]:
            return [client for client, name in cls.devices.items() if name == device]

        async def authenticate(self, *, session: Any) -> bool | None:
            username = session.username or ""
            if username == os.environ.get("CITYOS_INGEST_USERNAME", "cityos-ingest"):
                return True
            if self.service is None:
                return False
            device = await self.service.mqtt_authenticate(username)
            if device is None:
                return False
            type(self).devices[session.client_id] = device.name
            type(self).epochs[session.client_id] = self.service.token_epoch.get(device.name, 0)
            return True

        async def topic_filtering(self, *, session: Any = None, topic: str | None = None,
                                  action: Any = None) -> bool | None:
            if session is None or topic is None:
                return False
            name, valid = type(self).device_of(session.client_id)
            if name is None:
                return True  # the platform's own clients
            if not valid:
                if cls_broker := type(self).broker:
                    cls_broker.disconnect_device(name)
                return False
            if action == Action.PUBLISH:
                return map_device_topic(topic, name) is not None or topic.startswith(f"{PREFIX}/{name}/")
            return topic.startswith(("v1/devices/me/rpc/request/", f"{PREFIX}/{name}/rpc/request/"))

    return CityosBrokerPlugin


def __getattr__(name: str) -> Any:
    """`cityos.iot.ingest.CityosBrokerPlugin` (the dotted name amqtt's config wants), built on first use."""
    if name == "CityosBrokerPlugin":
        return amqtt_plugin_class()
    raise AttributeError(name)


@functools.cache
def mapping_broker_class() -> type:
    """amqtt's Broker with ThingsBoard topic mapping for devices authenticated by `CityosBrokerPlugin`."""
    return mapping_broker(amqtt_plugin_class(), map_device_topic)


def mapping_broker(plugin: Any, map_topic: Callable[[str, str], str | None]) -> type:
    """amqtt's Broker that rewrites an authenticated device's ThingsBoard topics into its platform
    topic, drops what a device sends after its token changed, and ends such sessions when the IoT
    service announces the change (`watch_credentials`)."""
    from amqtt.broker import Broker

    class MappingBroker(Broker):
        async def _broadcast_message(self, session: Any, topic: str | None, data: Any,
                                     force_qos: int | None = None) -> None:
            name, valid = plugin.device_of(session.client_id) if session is not None else (None, True)
            if not valid:
                log.info("dropped a message of %s: its token was rotated or revoked", name)
                self.disconnect_device(str(name))
                return
            if name is not None and topic is not None:
                topic = map_topic(topic, name) or topic
            await super()._broadcast_message(session, topic, data, force_qos)

        def disconnect_device(self, device: str) -> int:
            """Close every session of the device now; it must reconnect, and authenticate again."""
            closed = 0
            for client_id in plugin.clients_of(device):
                plugin.devices.pop(client_id, None)
                found = self._sessions.get(client_id)
                if found is not None and found[1] is not None:
                    task = asyncio.ensure_future(found[1].stop())
                    _CLOSING.add(task)
                    task.add_done_callback(_CLOSING.discard)
                    closed += 1
            return closed

        def watch_credentials(self, service: IotService) -> Callable[[], None]:
            from cityos.iot.messages import TOPIC_CREDENTIALS

            async def on_change(event: Any) -> None:
                self.disconnect_device(str(event.payload.get("name")))

            plugin.broker = self
            return service.bus.subscribe(TOPIC_CREDENTIALS, on_change, every_process=True)

    return MappingBroker


_CLOSING: set[asyncio.Future[Any]] = set()  # sessions being closed (a reference, so the tasks finish)


# ---------------------------------------------------------------------- wiring


def ingest_worker_count() -> int:
    return int(os.environ.get("CITYOS_INGEST_WORKERS", "0") or 0)


def client_id_base() -> str:
    return os.environ.get("CITYOS_INGEST_CLIENT_ID") or f"cityos-ingest-{socket.gethostname()}"


def shared_default() -> bool:
    """CITYOS_INGEST_SHARED=0 for a single ingest worker on Mosquitto: its plain subscription survives a broker
    restart, while Mosquitto 2.0 forgets shared subscriptions (see deploy/iot.md)."""
    return os.environ.get("CITYOS_INGEST_SHARED", "1") not in ("0", "false", "no")


async def start_workers(service: IotService, url: str, count: int, base: str | None = None,
                        shared: bool | None = None) -> list[IngestWorker]:
    base = base or client_id_base()
    shared = shared_default() if shared is None else shared
    workers = [IngestWorker(service, url, f"{base}-{i}", shared=shared) for i in range(count)]
    for worker in workers:
        await worker.start()
    return workers


# Attributes of an observed entity that say where and from what a reading comes: public like the readings
# of a public profile. The Device entity itself (registry data: state, firmware, battery) is internal.
OBSERVED_PUBLIC = ("location", "district", "refDevice", "dateObserved", "name", "address")


def declare_data_classes(app: Any, service: IotService) -> None:
    """Feed the profiles' `dataClass` per attribute to the security domain's class registry."""
    from cityos.security.classes import class_registry

    registry = class_registry(app)
    registry.declare("Device", {}, "internal")
    for profile in service.profiles.values():
        classes = {spec.attr: spec.data_class for spec in profile.keys.values()}
        public = any(c == "public" for c in classes.values())
        context = {name: "public" if public else "internal" for name in OBSERVED_PUBLIC}
        registry.declare(profile.entity_type, {**context, **classes}, "internal", stricter_only=True)


async def start_iot(app: Any) -> Callable[[], Awaitable[None]]:
    """Called from the app's lifespan: builds `app.state.iot`, starts ingest workers, health loop and commands."""
    from cityos.iot.commands import CommandSender
    from cityos.iot.health import start_health

    hub = app.state.hub
    service = IotService(hub.service, app.state.engine, app.state.bus, hub.resolver.core.expand)
    app.state.iot = service
    declare_data_classes(app, service)
    url = os.environ.get("CITYOS_MQTT_URL") or app.state.settings.mqtt_url
    count = ingest_worker_count()
    workers: list[IngestWorker] = []
    commands = CommandSender(service, url if count > 0 or os.environ.get("CITYOS_MQTT_URL") else None)
    app.state.iot_commands = commands
    if count > 0:
        workers = await start_workers(service, url, count)
        log.info("started %d ingest worker(s) on %s", count, url)
    app.state.iot_workers = workers
    nats_workers: list[Any] = []
    if os.environ.get("CITYOS_INGEST_NATS_URL"):  # device messages from a JetStream stream (deploy/scaling.md)
        from cityos.iot.nats_ingest import start_nats_workers

        nats_workers = await start_nats_workers(service, os.environ["CITYOS_INGEST_NATS_URL"])
    app.state.iot_nats_workers = nats_workers
    nats_users = _start_nats_mqtt_users(app, service)
    stop_health = start_health(service)
    stop_coap = await _start_coap(service)

    async def stop() -> None:
        if stop_coap is not None:
            await stop_coap()
        await stop_health()
        if nats_users is not None:
            await nats_users.stop()
        # Together: each lets its batch in flight commit, and their waits should not add up.
        await asyncio.gather(*(worker.stop() for worker in [*workers, *nats_workers]))
        await commands.close()
        await service.events.close()

    return stop


def _start_nats_mqtt_users(app: Any, service: IotService) -> Any:
    """With CITYOS_NATS_MQTT_USERS_FILE: keep NATS's MQTT users equal to the registry (cityos.iot.nats_mqtt)."""
    from cityos.iot.nats_mqtt import NatsMqttSettings, NatsMqttUsers

    settings = NatsMqttSettings.from_env()
    if settings is None:
        return None
    users = NatsMqttUsers(app.state.engine, service.tenant, settings)
    users.attach(service.bus)
    users.start()
    app.state.iot_nats_mqtt_users = users
    return users


async def _start_coap(service: IotService) -> Callable[[], Awaitable[None]] | None:
    """The CoAP device API when CITYOS_COAP_PORT is set; a port already taken is logged, not fatal."""
    from cityos.iot.coap import coap_address, start_coap

    address = coap_address()
    if address is None:
        return None
    try:
        return await start_coap(service, *address)
    except OSError as exc:
        log.error("CoAP device API not started on %s:%d: %s", address[0], address[1], exc)
        return None
