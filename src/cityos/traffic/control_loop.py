"""The closed signal control loop through the platform (平台闭环信号控制).

    detectors (IoT traffic-flow devices) → hub (`TrafficFlowObserved`) → controller → safety supervisor
    → phase command (device RPC `setPhase`) → the signal's acknowledgement

Every `interval` seconds, for each registered signal run by an adaptive controller (`webster`,
`max-pressure`, `cityos`), the loop reads the latest reading of each detector lane of the signal's plan
from the hub, builds the controller's `View`, and lets the signal's `SignalSupervisor` (the same safety
layer as the in-process benchmark) decide. A change the supervisor starts is sent through
`TrafficService.command_phase`, so it passes the platform's safety checks again, is recorded, and reaches
the device as RPC; the time from the decision to the device's acknowledgement is stored with the command.

Detectors. A plan's links name their incoming and outgoing lanes; the detector of lane L is the hub entity
`urn:ngsi-ld:TrafficFlowObserved:<D>`, which is what an IoT `traffic-flow` device named D produces, D =
`cityos.traffic.naming.lane_detector(L)` (L itself where it is a device name; a real network's lane id such as
`-201201945#0.78_1` gives a readable form with a digest, as the field names its device). The
profile reports occupancy (percent), average speed (km/h) and the interval's vehicle count (`intensity`);
the vehicles on the detector are estimated from occupancy (occupancy × detector length / vehicle length),
those counted halting when the lane's speed is under 5 km/h, and `intensity` is summed into the entries
count Webster measures flows from.

Advance detectors. A plan may name, per incoming lane, an advance detector (`plan.advance`: the lane, the
detector's device name, the metres it reaches up from the stop line): a loop chain or camera zone over the
lane's last few hundred metres, a `traffic-flow` device of its own whose entity is
`urn:ngsi-ld:TrafficFlowObserved:<detector>`. Its vehicles (occupancy × its length / vehicle length) are the
approach's `arriving` (see `ApproachReading`): the vehicles a green given now would serve, which the `cityos`
controller weighs instead of the whole lane's. Every incoming lane with a fresh reading becomes an
`ApproachReading` (its lane detector's vehicles, halting and waiting; `arriving` None without a fresh
advance reading), so the controller decides on the same inputs as in the in-process benchmark
(`cityos.traffic.sumo`). A missing or stale advance reading only drops `arriving` for its lane (the
controller then counts the lane detector's vehicles, as before); it never sends the signal to fixed time.

Stop-line detectors. A plan may also name, per incoming lane, a stop-line detector (`plan.stopline`, the same
members): loops or a camera zone over the lane's last tens of metres. Its vehicles are the approach's `stopline`
(while it sees vehicles the green is still discharging: the controller's gap-out), where otherwise the lane's
detector, which may watch the whole lane, stands for it. A detector that reports the queue it measures
(`queueLength`, metres: radar and video detectors do) gives the standing vehicles from it; one that does not
counts its vehicles standing when their mean speed is under 5 km/h. A missing stop-line reading, too, only
drops that input.

Stale or missing data. When an incoming lane's detector has no reading, an impossible one, or none newer
than `stale_after` seconds, the supervisor runs the plan's fixed-time cycle (`SignalSupervisor.inputs_lost`)
and the signal shows `fallback: true`; when all readings are fresh again the controller resumes. A signal
ahead of an emergency vehicle's run in progress (`/api/traffic/preemptions`) is left to the green wave.

State. The database holds what the lamps show (phase and green start): each round starts the supervisor
from it, so operators' commands and emergency pre-emption are never undone by the loop's memory. What
lives in this process is only the controllers' own memory (Webster's flow estimates, failure counts);
losing it on a restart costs one cycle of measurements, never safety. Two processes must not drive the
same signals, though (each would command on its own decisions): on PostgreSQL the loop holds a session
advisory lock (the lease) and a second process's loop stays idle until the first one's connection ends.
On SQLite the platform runs as one process.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import os
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from cityos.core import clock
from cityos.core.clock import as_utc
from cityos.core.errors import ProblemError
from cityos.hub.service import HubService
from cityos.security.policy import Principal
from cityos.traffic.controllers import make_controller
from cityos.traffic.detectors import (
    DetectorReading,
    LaneZones,
    QueueWait,
    approach_readings,
    detector_entity,
    detector_reading,
    fresh_reading,
    stale_seconds,
    zone_readings,
)
from cityos.traffic.naming import lane_detector
from cityos.traffic.service import RpcBatchSender, TrafficService, lane_zones, movements_of, plan_from_doc
from cityos.traffic.signals import ApproachReading, LaneReading, Movement, SignalSupervisor, View

if TYPE_CHECKING:
    from cityos.iot.rpc_requests import AnswerSignal

log = logging.getLogger("cityos.traffic.control_loop")

__all__ = ["ControlLoop", "DetectorReading", "approach_readings", "control_interval", "detector_entity",
           "detector_reading", "stale_seconds", "start_control_loop"]

ADAPTIVE_CONTROLLERS = ("webster", "max-pressure", "cityos")
ACK_STATES = frozenset({"succeeded", "failed", "timed_out"})
ACK_POLL_S = 0.01  # without an answer signal (answers committed by another process only)
# With one, the watcher reads when this process's ingest commits answers, and at least this often for answers
# another process's ingest committed.
ANSWER_POLL_S = 0.05
LATENCIES_KEPT = 10_000
COMMAND_BATCH = 100  # signals decided, then commanded together (one RPC batch, one transaction)

# Reads the status of RPC requests by id in one go: {id: status}, unknown ids left out (IotService.rpc_statuses).
RpcStatusReader = Callable[[list[int]], Awaitable[dict[int, str]]]


def control_interval() -> float:
    """`CITYOS_TRAFFIC_CONTROL_SECONDS`: seconds between decisions; 0 or unset leaves the loop off."""
    try:
        seconds = float(os.environ.get("CITYOS_TRAFFIC_CONTROL_SECONDS", "0") or 0)
    except ValueError:
        log.warning("CITYOS_TRAFFIC_CONTROL_SECONDS is not a number: the control loop is off")
        return 0.0
    return seconds if math.isfinite(seconds) and seconds > 0 else 0.0


@dataclass
class LaneCounter:
    """Vehicles counted entering a lane, summed over its readings (each one counted once)."""

    observed: datetime | None = None
    entered: float = 0.0

    def add(self, found: DetectorReading) -> float:
        if self.observed is None or found.observed > self.observed:
            if self.observed is not None:
                self.entered += found.intensity
            self.observed = found.observed
        return self.entered


@dataclass
class DrivenSignal:
    """One signal's controller memory in this process; rebuilt when its controller or plan changes."""

    controller: str
    plan_doc: dict[str, Any]
    supervisor: SignalSupervisor
    movements: tuple[tuple[Movement, ...], ...]
    in_lanes: tuple[str, ...]
    # Every detector lane (incoming, then outgoing) → its own detector's device name (`naming.lane_detector`).
    detectors: dict[str, str]
    zones: dict[str, LaneZones] = field(default_factory=dict)  # in lane → its advance and stop-line detectors
    counters: dict[str, LaneCounter] = field(default_factory=dict)
    waits: dict[str, QueueWait] = field(default_factory=dict)  # in lane → its standing queue's waiting estimate

    def devices(self) -> tuple[str, ...]:
        """Every detector device the signal reads: its lanes' own, then their stop-line and advance detectors."""
        return (*self.detectors.values(), *(d for zones in self.zones.values() for d in zones.devices()))


@dataclass(frozen=True)
class AwaitedAck:
    """A phase command sent whose device answer the loop still waits for."""

    signal_id: str
    decided: float  # perf_counter() at the decision
    deadline: float  # perf_counter() after which it counts as timed out


@dataclass
class LoopStats:
    rounds: int = 0
    commands: int = 0
    acknowledged: int = 0
    unacknowledged: int = 0
    refused: int = 0
    fallback_rounds: int = 0
    preempted_rounds: int = 0
    advance_used: int = 0  # advance detector readings given to a controller
    stopline_used: int = 0  # stop-line detector readings given to a controller
    # advance or stop-line detectors named by a plan without a fresh reading (their lane's detector stands in)
    zones_missing: int = 0
    ack_ms: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCIES_KEPT))
    round_ms: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCIES_KEPT))  # one round's work
    # perf_counter() of each command's decision by RPC id (the latest ones), for actuation timing in a bench
    decided: OrderedDict[int, float] = field(default_factory=OrderedDict)


class ControlLoop:
    """Drives a tenant's adaptive signals through the hub and the device command path."""

    def __init__(self, traffic: TrafficService, hub: HubService, tenant: str,
                 sender: Callable[[], RpcBatchSender | None], rpc_statuses: RpcStatusReader | None, interval: float,
                 stale_after: float | None = None, ack_timeout: float = 6.0,
                 answers: AnswerSignal | None = None) -> None:
        self.traffic, self.hub, self.tenant = traffic, hub, tenant
        self.sender, self.rpc_statuses, self.answers = sender, rpc_statuses, answers
        self.interval = interval
        self.stale_after = stale_after if stale_after is not None else stale_seconds(interval)
        self.ack_timeout = ack_timeout
        self.principal = Principal("cityos-signal-control", kind="service", role="operator", tenant=tenant)
        self.signals: dict[str, DrivenSignal] = {}
        self.stats = LoopStats()
        self._task: asyncio.Task[None] | None = None
        # The commands awaiting their answer, all watched by one task with one query per poll (one poller
        # per command made hundreds of queries per poll interval at hundreds of signals).
        self._awaited: dict[int, AwaitedAck] = {}
        self._watcher: asyncio.Task[None] | None = None
        self._lease: AsyncConnection | None = None
        self._stopping = asyncio.Event()

    # ------------------------------------------------------------------ running

    def start(self) -> None:
        self._stopping = asyncio.Event()
        self._task = asyncio.create_task(self._run(), name="traffic-control-loop")

    async def stop(self, within: float = 10.0) -> None:
        """Stop after the round in progress: a phase command sent is then recorded too (a round cancelled
        between the RPC and its record would leave the lamps on a phase the database does not show)."""
        if self._task is not None:
            self._stopping.set()
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(self._task), within)
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.settle()
        await self._release_lease()

    async def settle(self) -> None:
        """Wait for the acknowledgements still awaited."""
        while self._watcher is not None and not self._watcher.done():
            await asyncio.gather(self._watcher, return_exceptions=True)

    async def _run(self) -> None:
        while not self._stopping.is_set():
            started = time.monotonic()
            try:
                if await self._holds_lease():
                    await self.round()
                    self.stats.round_ms.append(round((time.monotonic() - started) * 1000.0, 1))
            except asyncio.CancelledError:
                raise
            except Exception:  # a bad round (database away) must not end the loop
                log.exception("signal control round failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), max(0.0, self.interval - (time.monotonic() - started)))

    async def _holds_lease(self) -> bool:
        engine = self.traffic.engine
        if engine.dialect.name != "postgresql":
            return True
        if self._lease is not None:
            try:
                await self._lease.execute(text("SELECT 1"))
                await self._lease.commit()
                return True
            except Exception:  # the lease's connection is gone, and the lock with it
                log.warning("signal control lease lost; taking it again")
                self._lease = None
        digest = hashlib.sha256(f"traffic-control-loop\x00{self.tenant}".encode()).digest()
        conn = await engine.connect()
        try:
            got = bool((await conn.execute(text("SELECT pg_try_advisory_lock(:key)"),
                                           {"key": int.from_bytes(digest[:8], "big", signed=True)})).scalar())
            await conn.commit()  # a session lock outlives the transaction; no transaction stays open
        except Exception:
            await conn.close()
            raise
        if not got:
            await conn.close()
            return False
        self._lease = conn
        return True

    async def _release_lease(self) -> None:
        if self._lease is None:
            return
        with contextlib.suppress(Exception):
            await self._lease.execute(text("SELECT pg_advisory_unlock_all()"))
            await self._lease.commit()
        await self._lease.close()
        self._lease = None

    # ------------------------------------------------------------------ one round

    async def round(self) -> None:
        """One decision for every adaptive signal of the tenant."""
        self.stats.rounds += 1
        rows = await self.traffic.signals_with_controllers(self.tenant, ADAPTIVE_CONTROLLERS)
        for gone in set(self.signals) - {r.signal_id for r in rows}:
            del self.signals[gone]
        # An emergency vehicle's green wave has the signals still ahead of it: the loop leaves them alone.
        preempted = {ahead.get("signal") for run in await self.traffic.active_preemptions(self.principal, self.tenant)
                     for ahead in run["signals"]}
        driving = []
        for row in rows:
            if row.signal_id in preempted:
                self.stats.preempted_rounds += 1
                continue
            try:
                driving.append((row, self._driven(row)))
            except Exception:  # one signal's trouble (a plan that no longer parses) never stops the others'
                log.exception("signal %s: control round failed", row.signal_id)
        # The readings of every signal's detectors in one query, the decisions, then the phase commands in one
        # batch: per-signal round trips queue behind the ingest's commits when hundreds of signals share the
        # database with their detectors.
        now = clock.now()
        found = await self.hub.retrieve_many(self.tenant, list(dict.fromkeys(
            detector_entity(device) for _, driven in driving for device in driven.devices())))
        # In slices of COMMAND_BATCH signals: a decision waits for its slice's, not the whole round's.
        for start in range(0, len(driving), COMMAND_BATCH):
            fallbacks: dict[str, bool] = {}
            wanted: list[tuple[str, int, str, float]] = []  # (signal, phase, source, perf_counter of the decision)
            for row, driven in driving[start:start + COMMAND_BATCH]:
                try:
                    decision = self.decide(row, driven, found, now)
                except Exception:
                    log.exception("signal %s: control round failed", row.signal_id)
                    continue
                fixed_time = driven.supervisor.runs_fixed_time
                if bool(row.fallback) != fixed_time:
                    fallbacks[row.signal_id] = fixed_time
                if decision is not None:
                    wanted.append((row.signal_id, decision, "fallback" if fixed_time else "controller",
                                   time.perf_counter()))
            await self.traffic.set_fallbacks(self.tenant, fallbacks)
            if wanted:
                await self.command(wanted)

    def _driven(self, row: Any) -> DrivenSignal:
        known = self.signals.get(row.signal_id)
        if known is not None and known.controller == row.controller and known.plan_doc == row.plan:
            return known
        plan = plan_from_doc(row.plan)
        movements = movements_of(row.plan, plan)  # each link's first connection, as the simulator's controllers see
        in_lanes = tuple(dict.fromkeys(m.in_lane for moves in movements for m in moves))
        out_lanes = tuple(dict.fromkeys(m.out_lane for moves in movements for m in moves))
        driven = DrivenSignal(row.controller, row.plan, SignalSupervisor(plan, make_controller(row.controller, plan)),
                              movements, in_lanes, {lane: lane_detector(lane) for lane in (*in_lanes, *out_lanes)},
                              {lane: zones for lane, zones in lane_zones(row.plan).items() if lane in in_lanes})
        self.signals[row.signal_id] = driven
        return driven

    def readings(self, driven: DrivenSignal, found: dict[str, Any], now: datetime
                 ) -> tuple[dict[str, LaneReading], list[str]]:
        """The fresh readings of the signal's detector lanes among the hub's `found` entities, and the incoming
        lanes that have none."""
        lanes: dict[str, LaneReading] = {}
        for lane, device in driven.detectors.items():
            latest = fresh_reading(found, device, now, self.stale_after)
            if latest is None:
                continue
            entered = driven.counters.setdefault(lane, LaneCounter()).add(latest)
            lanes[lane] = LaneReading(**{**latest.reading.__dict__, "entered": entered})
        return lanes, [lane for lane in driven.in_lanes if lane not in lanes]

    def zone_readings(self, driven: DrivenSignal, found: dict[str, Any], now: datetime) -> tuple[
            dict[str, LaneReading], dict[str, LaneReading]]:
        """The fresh readings of the signal's advance and stop-line detectors, by the incoming lane each watches."""
        zones = zone_readings(found, driven.zones, now, self.stale_after)
        self.stats.advance_used += len(zones.advance)
        self.stats.stopline_used += len(zones.stopline)
        self.stats.zones_missing += zones.missing
        return zones.advance, zones.stopline

    def decide(self, row: Any, driven: DrivenSignal, found: dict[str, Any], now: datetime) -> int | None:
        """The supervisor's decision for one signal from its detectors' readings: the phase to change to, if any."""
        green_since = as_utc(row.green_since)
        if now < green_since:
            return None  # a change is clearing (yellow, all-red): nothing to decide before its green
        supervisor = driven.supervisor
        # The lamps' state is the database's: start from it (an operator or pre-emption may have changed it).
        supervisor.phase = supervisor.target = row.phase
        supervisor.stage, supervisor.stage_start = "green", green_since.timestamp()
        lanes, missing = self.readings(driven, found, now)
        moment = now.timestamp()
        advance, stopline = self.zone_readings(driven, found, now)
        approaches = with_waits(driven, approach_readings(driven.in_lanes, lanes, advance, stopline), moment,
                                self.stale_after)
        if not driven.in_lanes or missing:
            supervisor.inputs_lost(moment, f"no fresh reading from {', '.join(missing[:5]) or 'any detector'}")
        else:
            supervisor.inputs_restored()
        if supervisor.runs_fixed_time:
            self.stats.fallback_rounds += 1
        supervisor.view_of = lambda at, phase, elapsed: View(at, phase, elapsed, lanes, driven.movements, approaches)
        supervisor.tick(moment)
        return None if supervisor.stage == "green" else supervisor.target  # green holds, or the change it starts

    async def command(self, wanted: list[tuple[str, int, str, float]]) -> None:
        """Send the round's phase changes through `TrafficService.command_phases` (its safety checks, its record,
        one RPC batch) and watch for the devices' answers."""
        sender = self.sender()
        outcomes = await self.traffic.command_phases(self.principal, self.tenant,
                                                     [(signal, phase, source) for signal, phase, source, _ in wanted],
                                                     sender)
        for (signal_id, phase, _, decided), outcome in zip(wanted, outcomes, strict=True):
            if isinstance(outcome, ProblemError):  # the service's own checks disagree (a command raced us)
                self.stats.refused += 1
                log.info("signal %s: phase %d not commanded: %s", signal_id, phase, outcome)
                continue
            if isinstance(outcome, Exception):
                log.error("signal %s: phase %d not commanded: %r", signal_id, phase, outcome)
                continue
            self.stats.commands += 1
            rpc = outcome.get("rpc") or {}
            if not isinstance(rpc.get("id"), int):
                continue
            self.stats.decided[rpc["id"]] = decided
            if len(self.stats.decided) > LATENCIES_KEPT:
                self.stats.decided.popitem(last=False)
            if self.rpc_statuses is not None:
                self._awaited[rpc["id"]] = AwaitedAck(signal_id, decided, decided + self.ack_timeout)
        if self._awaited and (self._watcher is None or self._watcher.done()):
            self._watcher = asyncio.create_task(self._watch_acks(), name="traffic-control-acks")

    async def _watch_acks(self) -> None:
        """Until no command awaits its answer: read the statuses of all awaited in one query (when answers are
        committed, else every `ACK_POLL_S`), and record the answered and the timed-out with their commands in
        one transaction."""
        assert self.rpc_statuses is not None
        while self._awaited:
            answered = self.answers.upcoming() if self.answers is not None else None
            asked = list(self._awaited)  # commands sent while the query runs wait for the next one
            statuses: dict[int, str] | None
            try:
                statuses = await self.rpc_statuses(asked)
            except asyncio.CancelledError:
                raise
            except Exception:  # the database is away: nothing is known, but the deadlines still run
                log.exception("signal control: reading RPC statuses failed")
                statuses = None
            seen = time.perf_counter()
            settled = []
            for rpc_id in asked:
                awaited = self._awaited[rpc_id]
                # An id the registry does not know cannot be answered.
                status = "unknown" if statuses is None else statuses.get(rpc_id, "failed")
                if status not in ACK_STATES:
                    if seen < awaited.deadline:
                        continue
                    status = "timed_out"
                del self._awaited[rpc_id]
                settled.append((awaited.signal_id, rpc_id, status, self._count_ack(awaited, rpc_id, status, seen)))
            if settled:
                try:
                    await self.traffic.record_acknowledgements(self.tenant, settled)
                except asyncio.CancelledError:
                    raise
                except Exception:  # the statuses stay in the RPC registry; only the command's copy is missing
                    log.exception("signal control: recording %d acknowledgements failed", len(settled))
            if self._awaited and answered is None:
                await asyncio.sleep(ACK_POLL_S)
            elif self._awaited and answered is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(answered.wait(), ANSWER_POLL_S)

    def _count_ack(self, awaited: AwaitedAck, rpc_id: int, status: str, seen: float) -> float | None:
        if status != "succeeded":
            self.stats.unacknowledged += 1
            log.warning("signal %s: phase command RPC %d not acknowledged (%s)", awaited.signal_id, rpc_id, status)
            return None
        acked_ms = round((seen - awaited.decided) * 1000.0, 1)
        self.stats.acknowledged += 1
        self.stats.ack_ms.append(acked_ms)
        return acked_ms


def with_waits(driven: DrivenSignal, approaches: dict[str, ApproachReading], at: float,
               stale_after: float) -> dict[str, ApproachReading]:
    """The approaches with their queues' estimated waiting (`QueueWait`) where their detectors report none; a
    lane unseen for longer than `stale_after` starts its estimate again."""
    out = {}
    for lane, approach in approaches.items():
        waited = driven.waits.setdefault(lane, QueueWait(gap_s=stale_after)).update(at, approach.halting)
        out[lane] = approach if approach.waiting > 0 else replace(approach, waiting=waited)
    return out


def start_control_loop(app: Any) -> ControlLoop | None:
    """The loop for the IoT registry's tenant when `CITYOS_TRAFFIC_CONTROL_SECONDS` > 0, else None."""
    from cityos.traffic.api import batch_sender_of

    interval = control_interval()
    iot = getattr(app.state, "iot", None)
    if interval <= 0 or iot is None:
        return None
    loop = ControlLoop(app.state.traffic, app.state.hub.service, iot.tenant, lambda: batch_sender_of(app.state),
                       iot.rpc_statuses, interval, answers=iot.answer_signal)
    loop.start()
    log.info("signal control loop every %.2f s (detector data stale after %.0f s)", interval, loop.stale_after)
    return loop
