"""The simulation clock and the publisher: readings go out over MQTT with ThingsBoard's device API.

Two thousand devices with one MQTT connection each would be 2,000 sockets on a laptop, so most
devices report through district gateways on `v1/gateway/telemetry` (one connection, many devices,
`{"device": [{"ts": ms, "values": {...}}]}`); a few report on their own connection to
`v1/devices/me/telemetry`. Everything is published with QoS 1.

`Simulation` decides what is said and when (no I/O, so tests can step it); `MqttTransport` says it;
`Runner` ties both to a clock running `speed` times faster than the wall clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Protocol

import orjson

from cityos.core.mqtt import settle_disconnect
from cityos.core.tasks import finish_within
from cityos.sim.city import City, build_city
from cityos.sim.devices import Deployment, place_devices
from cityos.sim.faults import FaultConfig, FaultInjector, GatewayOutages, Reading
from cityos.sim.signals import Scenario, SignalModel, demo_scenario, random_scenario

log = logging.getLogger("cityos.sim")

GATEWAY_TOPIC = "v1/gateway/telemetry"
DEVICE_TOPIC = "v1/devices/me/telemetry"
MAX_READINGS_PER_MESSAGE = 200  # keeps a backfill after a long outage in messages of a sane size
BACKFILL_LIMIT_S = 72 * 3600  # the edge caches 72 h of data during an outage (city IoT requirement)


@dataclass(frozen=True)
class SimOptions:
    devices: int = 2000
    speed: float = 60.0
    seed: int = 42
    scenario: str = "demo"  # demo | normal | none
    faults: FaultConfig = field(default_factory=FaultConfig)
    per_gateway: int = 250
    direct: int = 8
    start: datetime | None = None  # simulated start (UTC); `history_hours` before now by default
    max_per_message: int = MAX_READINGS_PER_MESSAGE  # readings in one gateway message
    history_hours: float = 24.0  # how far back a fast simulation starts, to replay up to now


@dataclass(frozen=True)
class Message:
    connection: str  # the gateway or direct device whose MQTT connection sends it
    topic: str
    payload: bytes
    readings: int
    backfill: int = 0


@dataclass
class _GatewayState:
    buffer: list[Reading] = field(default_factory=list)  # readings held while the gateway is offline
    down: bool = False


def make_scenario(name: str, city: City, seed: int, start: datetime) -> Scenario:
    if name == "demo":
        return demo_scenario(city, start)
    if name == "normal":
        return random_scenario(city, seed, start)
    if name == "none":
        return Scenario(name="none")
    raise ValueError(f"unknown scenario {name!r}: demo, normal or none")


class Simulation:
    """What every device says and when, from a seed; call `advance` with increasing simulated times."""

    def __init__(self, options: SimOptions, city: City | None = None) -> None:
        self.options = options
        default_start = datetime.now(UTC) - timedelta(hours=options.history_hours if options.speed > 1 else 0)
        # Whole seconds: readings land on the same milliseconds in every run from the same start.
        self.start = (options.start or default_start.replace(microsecond=0)).astimezone(UTC)
        self.city = city or build_city(options.seed)
        self.deployment: Deployment = place_devices(self.city, options.devices, options.seed,
                                                    per_gateway=options.per_gateway, direct=options.direct)
        self.faults = FaultInjector(options.faults, options.seed)
        fast = self.faults.fast_drain_devices([d.name for d in self.deployment.devices])
        self.scenario = make_scenario(options.scenario, self.city, options.seed, self.start)
        self.model = SignalModel(self.city, self.deployment, options.seed, self.start, self.scenario, fast)
        start_ts = self.start.timestamp()
        self.outages = GatewayOutages(options.faults, options.seed, start_ts)
        self.gateways = {g.name: _GatewayState() for g in self.deployment.gateways}
        self._heap = [(start_ts + d.phase, d.index) for d in self.deployment.devices]
        heapq.heapify(self._heap)
        self.generated = 0
        self.sim_ts = start_ts

    @property
    def connections(self) -> list[str]:
        """Names of every device that holds an MQTT connection: the gateways and the direct devices."""
        return [g.name for g in self.deployment.gateways] + [d.name for d in self.deployment.direct]

    def advance(self, until_ts: float, limit: int | None = None) -> list[Message]:
        """Every reading due up to `until_ts` (at most `limit`), packed into MQTT messages."""
        devices = self.deployment.devices
        per_gateway: dict[str, list[Reading]] = {}
        direct: list[Reading] = []
        count = 0
        while self._heap and self._heap[0][0] <= until_ts and (limit is None or count < limit):
            ts, index = heapq.heappop(self._heap)
            device = devices[index]
            heapq.heappush(self._heap, (ts + device.interval, index))
            count += 1
            values = self.model.reading(device, ts)
            readings = self.faults.apply(device.name, int(ts * 1000), values,
                                         self.deployment.profiles[device.profile])
            if device.gateway is None:
                direct.extend(readings)
            else:
                per_gateway.setdefault(device.gateway, []).extend(readings)
            self.sim_ts = max(self.sim_ts, ts)
        self.generated += count
        if not self._heap or self._heap[0][0] > until_ts:
            self.sim_ts = max(self.sim_ts, until_ts)  # caught up: nothing is due before `until_ts`
        messages = [Message(r.device, DEVICE_TOPIC, orjson.dumps({"ts": r.ts_ms, "values": r.values}), 1)
                    for r in direct]
        for name in self.gateways:
            messages.extend(self._gateway_messages(name, per_gateway.get(name, []), until_ts))
        return messages

    def _gateway_messages(self, name: str, fresh: list[Reading], now_ts: float) -> list[Message]:
        state = self.gateways[name]
        state.down = self.outages.is_down(name, now_ts)
        if state.down:
            cutoff_ms = int((now_ts - BACKFILL_LIMIT_S) * 1000)
            state.buffer.extend(fresh)
            state.buffer = [r for r in state.buffer if r.ts_ms >= cutoff_ms]
            return []
        backfill = [Reading(r.device, r.ts_ms, r.values, r.flags | {"backfill"}) for r in state.buffer]
        state.buffer = []
        # The backlog goes first, with the readings' original timestamps, as a store-and-forward gateway does.
        pending = backfill + fresh
        messages = []
        size = max(1, self.options.max_per_message)
        for start in range(0, len(pending), size):
            chunk = pending[start:start + size]
            body: dict[str, list[dict[str, object]]] = {}
            for r in chunk:
                body.setdefault(r.device, []).append({"ts": r.ts_ms, "values": r.values})
            late = sum(1 for r in chunk if "backfill" in r.flags)
            messages.append(Message(name, GATEWAY_TOPIC, orjson.dumps(body), len(chunk), late))
        return messages


class Transport(Protocol):
    async def open(self, tokens: dict[str, str]) -> None: ...

    async def send(self, message: Message) -> None: ...

    async def close(self) -> None: ...

    def pending(self) -> int: ...


class MqttTransport:
    """One MQTT connection per gateway or direct device, each fed by its own queue.

    A connection that drops reconnects within a few seconds and keeps its queue, so nothing is
    lost while the broker restarts; a full queue slows the simulation down instead of eating memory.
    """

    def __init__(self, host: str, port: int, *, queue_size: int = 2000, inflight: int = 50,
                 reconnect_delay: float = 1.0) -> None:
        self.host, self.port = host, port
        self.queue_size, self.inflight, self.reconnect_delay = queue_size, inflight, reconnect_delay
        self._queues: dict[str, asyncio.Queue[Message]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self.sent = 0
        self.readings_sent = 0
        self.errors = 0
        self.connected: set[str] = set()

    async def open(self, tokens: dict[str, str]) -> None:
        for name, token in tokens.items():
            queue: asyncio.Queue[Message] = asyncio.Queue(self.queue_size)
            self._queues[name] = queue
            self._tasks.append(asyncio.create_task(self._connection(name, token, queue), name=f"mqtt-{name}"))

    def pending(self) -> int:
        return sum(q.qsize() for q in self._queues.values())

    async def send(self, message: Message) -> None:
        await self._queues[message.connection].put(message)

    async def _connection(self, name: str, token: str, queue: asyncio.Queue[Message]) -> None:
        import aiomqtt

        while True:
            retry: list[Message] = []
            client = aiomqtt.Client(self.host, self.port, username=token, identifier=name, keepalive=30,
                                    max_inflight_messages=self.inflight)
            try:
                async with client:
                    self.connected.add(name)
                    while True:
                        batch = [await queue.get()]
                        while not queue.empty() and len(batch) < self.inflight:
                            batch.append(queue.get_nowait())
                        retry = batch
                        # QoS 1 round trips overlap: wait for the whole window, not message by message.
                        await asyncio.gather(*(client.publish(m.topic, m.payload, qos=1, timeout=30) for m in batch))
                        retry = []
                        self.sent += len(batch)
                        self.readings_sent += sum(m.readings for m in batch)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any broker trouble: log once, back off, reconnect
                self.errors += 1
                log.warning("MQTT connection %s: %s; reconnecting", name, exc)
            finally:
                self.connected.discard(name)
                settle_disconnect(client)
            # Re-send what may not have been acknowledged: QoS 1 is at-least-once, duplicates are allowed.
            for m in retry:
                with contextlib.suppress(asyncio.QueueFull):
                    queue.put_nowait(m)
            await asyncio.sleep(self.reconnect_delay)

    async def drain(self, within: float) -> None:
        """Give queued messages a chance to leave before closing."""
        deadline = time.monotonic() + within
        while self.pending() and time.monotonic() < deadline:  # noqa: ASYNC110 (polling a few queues is simplest)
            await asyncio.sleep(0.05)

    async def close(self, within: float = 5.0) -> None:
        """Disconnect every connection, waiting at most `within` seconds.

        aiomqtt's disconnect waits without a limit for the socket to close, and a broker that has
        stopped reading never lets the DISCONNECT packet out: a second cancellation ends that wait.
        """
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        await finish_within(tasks, within, "the simulator's MQTT connections (disconnecting)")


@dataclass
class RunnerStats:
    sim_time: datetime
    generated: int
    published: int
    backfilled: int
    queued: int
    lag_s: float  # how far the simulation trails its clock (simulated seconds)
    connections: int


class Runner:
    """Drives a Simulation with a clock `speed` times faster than the wall clock.

    The simulated clock never runs ahead of the wall clock: platforms (ours included) refuse
    readings from the future. So a fast simulation starts in the past (`SimOptions.start`), replays
    it at `speed`, and once it has caught up with now carries on in real time. A `throttle` that
    answers True (the platform is behind) holds the clock still rather than piling up a backlog.
    """

    def __init__(self, sim: Simulation, transport: Transport, *, tick: float = 0.25,
                 max_per_tick: int | None = None, throttle: Callable[[], bool] | None = None,
                 monotonic: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time) -> None:
        self.sim = sim
        self.transport = transport
        self.tick = tick
        self.max_per_tick = max_per_tick
        self.throttle = throttle
        self._monotonic = monotonic
        self._wall = wall
        self.sim_now = sim.start.timestamp()
        self.published = 0
        self.backfilled = 0
        self.throttled = False

    @property
    def caught_up(self) -> bool:
        return self.sim_now >= self._wall() - 1.0

    def _advance_clock(self, wall_elapsed: float) -> None:
        self.throttled = bool(self.throttle and self.throttle())
        if not self.throttled:
            self.sim_now = min(self.sim_now + wall_elapsed * self.sim.options.speed, self._wall())

    def stats(self) -> RunnerStats:
        connected: set[str] = getattr(self.transport, "connected", set())
        return RunnerStats(datetime.fromtimestamp(self.sim.sim_ts, UTC), self.sim.generated, self.published,
                           self.backfilled, self.transport.pending(), max(0.0, self.sim_now - self.sim.sim_ts),
                           len(connected))

    async def step(self, wall_elapsed: float) -> int:
        """Move the clock by `wall_elapsed` real seconds and publish what fell due; returns readings sent."""
        self._advance_clock(wall_elapsed)
        sent = 0
        for message in self.sim.advance(self.sim_now, self.max_per_tick):
            await self.transport.send(message)
            sent += message.readings
            self.backfilled += message.backfill
        self.published += sent
        return sent

    async def run(self, stop: asyncio.Event, duration: float | None = None) -> None:
        """Publish until `stop` is set or `duration` wall seconds have passed."""
        began = last = self._monotonic()
        while not stop.is_set() and (duration is None or self._monotonic() - began < duration):
            now = self._monotonic()
            await self.step(now - last)
            last = now
            spare = self.tick - (self._monotonic() - now)
            if spare > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), spare)
