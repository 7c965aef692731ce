"""Traffic signal logic: register signals with their plans, command phases safely, decide from detectors.

Every phase change goes through the same safety rules as the in-process supervisor: only a phase of
the registered plan, never before its minimum green (and pedestrian minimum) is served, always with
yellow and all-red between, and the command reaches the signal's IoT device through the device
command (RPC) path, whose acknowledgement status is recorded with the command.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

from sqlalchemy import and_, bindparam, delete, insert, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from cityos.core import clock
from cityos.core.clock import as_utc
from cityos.core.db import write_transaction
from cityos.core.errors import AlreadyExists, BadRequestData, Conflict, ProblemError, ResourceNotFound
from cityos.security.policy import Principal, Resource, authorize
from cityos.security.service import Forbidden
from cityos.traffic import models
from cityos.traffic.controllers import make_controller
from cityos.traffic.detectors import (
    LaneZones,
    approach_readings,
    detector_entity,
    fresh_reading,
    stale_seconds,
    zone_readings,
)
from cityos.traffic.naming import lane_detector
from cityos.traffic.preemption import (
    APPROACH_SPEED_M_S,
    LEAD_S,
    GreenWave,
    RouteSignal,
    clear_ahead_lead,
    seconds_to_green,
)
from cityos.traffic.signals import (
    FixedTimeController,
    LaneReading,
    Movement,
    Phase,
    PlanError,
    SignalPlan,
    SignalSupervisor,
    View,
    check_reading,
    transition_states,
    validate_plan,
)

API_CONTROLLERS = ("fixed", "webster", "max-pressure", "cityos")
# An emergency run counts as in progress this long after its vehicle's last progress report.
PREEMPTION_ACTIVE_S = 120.0
# Finished runs are kept this long (their timings answer "how long did the green wave run") and then pruned.
PREEMPTION_HISTORY = dt.timedelta(days=30)

# Sends a device command: (device name, method, params) → the RPC record (id, status).
RpcSender = Callable[[str, str, dict[str, Any]], Awaitable[dict[str, Any]]]


# Reads hub entities by id: (tenant, ids) → {id: record with `types` and `attrs`} (HubService.retrieve_many).
EntityReader = Callable[[str, list[str]], Awaitable[dict[str, Any]]]


# Sends many device commands at once: [(device name, method, params)] → in order, the RPC record (id, status)
# of each, or the error that kept it from being sent.
RpcBatchSender = Callable[[list[tuple[str, str, dict[str, Any]]]], Awaitable[list[dict[str, Any] | Exception]]]


def one_by_one(send: RpcSender) -> RpcBatchSender:
    """A batch sender over a sender of one command at a time."""

    async def send_all(requests: list[tuple[str, str, dict[str, Any]]]) -> list[dict[str, Any] | Exception]:
        out: list[dict[str, Any] | Exception] = []
        for device, method, params in requests:
            try:
                out.append(await send(device, method, params))
            except ProblemError as exc:
                out.append(exc)
        return out

    return send_all


def phase_refusal(plan: SignalPlan, row: Any, phase: object, now: dt.datetime) -> tuple[type[ProblemError], str] | None:
    """Why the safety rules forbid green `phase` for the signal in `row` now, or None when they allow it."""
    if isinstance(phase, bool) or not isinstance(phase, int) or not 0 <= phase < len(plan.phases):
        return (BadRequestData, f"phase must be an integer in 0..{len(plan.phases) - 1}")
    elapsed = (now - as_utc(row.green_since)).total_seconds()
    current: Phase = plan.phases[row.phase]
    if phase != row.phase and elapsed < current.earliest_end:
        left = current.earliest_end - max(0.0, elapsed)
        return (Conflict, f"phase {row.phase} has not served its minimum green "
                          f"({current.earliest_end:g} s, pedestrian clearance included): {left:.0f} s left")
    return None


def check_allowed(principal: Principal | None, action: str, tenant: str) -> None:
    decision = authorize(principal, action, Resource("traffic", tenant))
    if not decision:
        raise Forbidden(f"{action}: {decision.reason}")


def plan_from_doc(doc: dict[str, Any]) -> SignalPlan:
    return models.PlanIn.model_validate(doc).to_plan()


def link_connections(link: dict[str, Any] | None) -> list[tuple[str, str]]:
    """Every (incoming lane, outgoing lane) a stored plan's link controls, its first connection (`in`, `out`)
    first, then its further ones (`also`); none for a null link (one that drives no lane)."""
    if link is None:
        return []
    return [(link["in"], link["out"]), *((c["in"], c["out"]) for c in link.get("also") or [])]


def movements_of(doc: dict[str, Any], plan: SignalPlan,
                 every_connection: bool = False) -> tuple[tuple[Movement, ...], ...]:
    """Each phase's green movements, one per signal link (its first connection: what the controllers weigh, as in
    the simulator), or with `every_connection` one per lane-to-lane connection (route matching, pre-emption,
    detector checks: a route through a link's second connection must still find the signal)."""
    links = doc.get("links") or []
    if len(links) != plan.links:  # no links (registration refuses any other count: `check_links`)
        return tuple(() for _ in plan.phases)
    connections = [link_connections(link)[slice(None if every_connection else 1)] for link in links]
    return tuple(tuple(Movement(i, lane_in, lane_out, c == "G")
                       for i, c in enumerate(p.state) if c in "Gg" for lane_in, lane_out in connections[i])
                 for p in plan.phases)


def check_links(plan: models.PlanIn, width: int) -> None:
    """Refuse links that are not one per signal index of the phases' states (`width`): the movements would be
    none (`movements_of`), so the controllers, route matching and pre-emption would silently see no lane. A plan
    without `links` (absent or null) is a plan without detector lanes, as it always was."""
    if plan.links is not None and len(plan.links) != width:
        raise BadRequestData(f"links: {len(plan.links)} given, but the phases' states have {width} signal indices "
                             "(one link per index, null for one that drives no lane; leave `links` out for a plan "
                             "without detector lanes)")


ZONE_KINDS = {"advance": "advance", "stopline": "stop-line"}  # plan member → what an error calls it


def zone_detectors(doc: dict[str, Any], kind: str) -> dict[str, tuple[str, float]]:
    """The plan's `kind` detectors (`advance` or `stopline`): incoming lane → (detector device, metres it reaches
    up from the stop line)."""
    return {a["lane"]: (a["detector"], float(a["distance"])) for a in doc.get(kind) or []}


def check_zone_detectors(plan: models.PlanIn) -> None:
    """Refuse advance or stop-line detectors that name no incoming lane of the plan's links, two of a kind for one
    lane, a device that is already another detector (of this plan's zones or lanes: one reading would be read
    twice over different lengths), or a stop-line zone reaching as far up as the lane's advance detector."""
    connections = [pair for link in plan.used_links() for pair in link.connections()]
    lane_devices = {lane_detector(lane) for pair in connections for lane in pair}  # the lanes' own detectors
    incoming = {lane_in for lane_in, _ in connections}
    devices: set[str] = set()
    reach: dict[str, dict[str, float]] = {}  # lane → kind → metres
    for kind, called in ZONE_KINDS.items():
        detectors: list[models.AdvanceDetectorIn] = list(getattr(plan, kind) or [])
        if detectors and not plan.links:
            raise BadRequestData(f"{called} detectors need the plan's links (the lanes they watch)")
        for detector in detectors:
            if detector.lane not in incoming:
                raise BadRequestData(f"{called} detector {detector.detector}: lane {detector.lane!r} is not an "
                                     "incoming lane of the plan's links")
            if kind in reach.get(detector.lane, {}):
                raise BadRequestData(f"lane {detector.lane!r} has more than one {called} detector")
            if not models.DETECTOR_NAME.match(detector.detector):
                raise BadRequestData(f"{called} detector {detector.detector[:64]!r}: a device name is letters, "
                                     "digits, '_', '.' or '-' (at most 64)")
            if detector.detector in devices or detector.detector in lane_devices:
                raise BadRequestData(f"{called} detector {detector.detector!r} is already another detector of "
                                     "this plan")
            devices.add(detector.detector)
            reach.setdefault(detector.lane, {})[kind] = float(detector.distance)
    for lane, zones in reach.items():
        if "advance" in zones and "stopline" in zones and zones["stopline"] >= zones["advance"]:
            raise BadRequestData(f"lane {lane!r}: the stop-line detector must end nearer the stop line than the "
                                 "advance detector")


def supervisor_at(plan: SignalPlan, row: Any, now: dt.datetime) -> SignalSupervisor:
    """A safety supervisor standing where the signal in `row` stands at `now`: in its green, or in the yellow or
    all-red of the change leading to it (the database keeps when that green starts)."""
    supervisor = SignalSupervisor(plan, FixedTimeController(plan))
    supervisor.phase = supervisor.target = row.phase
    green = as_utc(row.green_since).timestamp()
    left = green - now.timestamp()
    if left <= 0:
        supervisor.stage, supervisor.stage_start = "green", green
    elif left <= plan.all_red:
        supervisor.stage, supervisor.stage_start = "all_red", green - plan.all_red
    else:
        supervisor.stage, supervisor.stage_start = "yellow", green - plan.all_red - plan.yellow
    return supervisor


def lane_zones(doc: dict[str, Any]) -> dict[str, LaneZones]:
    """The plan's incoming lanes that have an advance or a stop-line detector, with them."""
    advance, stopline = zone_detectors(doc, "advance"), zone_detectors(doc, "stopline")
    return {lane: LaneZones(advance.get(lane), stopline.get(lane)) for lane in {*advance, *stopline}}


def phase_detectors(doc: dict[str, Any], plan: SignalPlan, phase: int) -> dict[str, LaneZones]:
    """The incoming lanes `phase` serves (through any connection of its links), each with its zone detectors; {} for
    a phase the plan does not have."""
    if not 0 <= phase < len(plan.phases):
        return {}
    zones = lane_zones(doc)
    return {m.in_lane: zones.get(m.in_lane, LaneZones())
            for m in movements_of(doc, plan, every_connection=True)[phase]}


def queue_on(doc: dict[str, Any], plan: SignalPlan, phase: int, found: dict[str, Any], now: dt.datetime,
             stale_after: float) -> float | None:
    """Vehicles on the fullest incoming lane that `phase` serves, from the fresh readings among `found` (the lane's
    detector, or its stop-line or advance detector where that counts more), or None when none of them is known."""
    lanes = phase_detectors(doc, plan, phase)
    own: dict[str, LaneReading] = {}
    for lane in lanes:
        if (reading := fresh_reading(found, lane_detector(lane), now, stale_after)) is not None:
            own[lane] = reading.reading
    zones = zone_readings(found, lanes, now, stale_after)
    approaches = approach_readings(tuple(lanes), own, zones.advance, zones.stopline)
    return max((a.vehicles for a in approaches.values()), default=None)


def detector_ids(doc: dict[str, Any], plan: SignalPlan, phase: int) -> list[str]:
    """The hub entities of the detectors on the incoming lanes `phase` serves (the lanes', stop-line, advance)."""
    lanes = phase_detectors(doc, plan, phase)
    return [detector_entity(name) for name in (*map(lane_detector, lanes),
                                               *(d for zones in lanes.values() for d in zones.devices()))]


class TrafficService:
    def __init__(self, engine: AsyncEngine, write_lock: asyncio.Lock | None = None,
                 detectors: EntityReader | None = None) -> None:
        self.engine = engine
        self._write_lock = write_lock or asyncio.Lock()
        # The hub's detector entities, for pre-emption's clear-ahead lead (None: the fixed lead only).
        self.detectors = detectors

    @contextlib.asynccontextmanager
    async def _write(self) -> AsyncIterator[AsyncConnection]:
        async with write_transaction(self.engine, self._write_lock) as conn:
            yield conn

    async def register(self, principal: Principal | None, tenant: str, spec: models.SignalIn) -> dict[str, Any]:
        check_allowed(principal, "traffic.manage", tenant)
        if not models.SIGNAL_ID.match(spec.id):
            raise BadRequestData("id must be letters, digits, '_', '.', ':' or '-' (at most 128)")
        if spec.controller not in API_CONTROLLERS:
            raise BadRequestData(f"controller must be one of {', '.join(API_CONTROLLERS)}")
        plan = spec.plan.to_plan()
        try:
            validate_plan(plan)
        except PlanError as exc:
            raise BadRequestData(f"unsafe signal plan: {exc}") from exc
        check_links(spec.plan, plan.links)
        check_zone_detectors(spec.plan)
        doc = spec.plan.model_dump(by_alias=True)
        now = clock.now()
        try:
            async with self._write() as conn:
                await conn.execute(insert(models.signals).values(
                    tenant=tenant, signal_id=spec.id, name=spec.name or spec.id, device=spec.device,
                    controller=spec.controller, plan=doc, phase=0, green_since=now, fallback=0, created_at=now))
        except IntegrityError as exc:
            raise AlreadyExists(f"signal {spec.id} is already registered") from exc
        return await self.get(principal, tenant, spec.id)

    async def _row(self, conn: AsyncConnection, tenant: str, signal_id: str) -> Any:
        row = (await conn.execute(select(models.signals).where(and_(
            models.signals.c.tenant == tenant, models.signals.c.signal_id == signal_id)))).first()
        if row is None:
            raise ResourceNotFound(f"no signal {signal_id}")
        return row

    async def get(self, principal: Principal | None, tenant: str, signal_id: str) -> dict[str, Any]:
        check_allowed(principal, "traffic.read", tenant)
        async with self.engine.connect() as conn:
            row = await self._row(conn, tenant, signal_id)
        return self._with_state(row)

    def _with_state(self, row: Any) -> dict[str, Any]:
        doc = models.signal_doc(row)
        plan = plan_from_doc(row.plan)
        now = clock.now()
        since = as_utc(row.green_since)
        if now < since:  # the change to this phase is still clearing
            clearing = (since - now).total_seconds()
            old = plan.phases[(row.phase - 1) % len(plan.phases)]
            doc["stage"] = "yellow" if clearing > plan.all_red else "all_red"
            doc["state"] = transition_states(old.state, plan.phases[row.phase].state)[doc["stage"] == "all_red"]
            doc["greenElapsed"] = 0.0
        else:
            doc["stage"], doc["state"] = "green", plan.phases[row.phase].state
            doc["greenElapsed"] = round((now - since).total_seconds(), 1)
        return doc

    async def list_signals(self, principal: Principal | None, tenant: str, limit: int = 100) -> list[dict[str, Any]]:
        check_allowed(principal, "traffic.read", tenant)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(models.signals).where(models.signals.c.tenant == tenant)
                                       .order_by(models.signals.c.signal_id).limit(limit))).all()
        return [self._with_state(r) for r in rows]

    async def movements(self, principal: Principal | None, tenant: str
                        ) -> dict[str, tuple[tuple[Movement, ...], ...]]:
        """{signal: the movements (incoming → outgoing lane) each phase serves, every connection of its links}, for
        routing through them."""
        check_allowed(principal, "traffic.read", tenant)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(models.signals.c.signal_id, models.signals.c.plan)
                                       .where(models.signals.c.tenant == tenant))).all()
        return {r.signal_id: movements_of(r.plan, plan_from_doc(r.plan), every_connection=True) for r in rows}

    async def command_phase(self, principal: Principal | None, tenant: str, signal_id: str, phase: object,
                            send: RpcSender | None, source: str = "operator") -> dict[str, Any]:
        """Ask for a green phase; refused (400/409, recorded) when the safety rules forbid it now."""
        outcome = (await self.command_phases(principal, tenant, [(signal_id, phase, source)],
                                             None if send is None else one_by_one(send)))[0]
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    async def command_phases(self, principal: Principal | None, tenant: str,
                             wanted: Sequence[tuple[str, object, str]], send: RpcBatchSender | None
                             ) -> list[dict[str, Any] | Exception]:
        """`command_phase` for many signals at once, (signal, phase, source) each, in order: the change, or the
        refusal (BadRequestData, Conflict: recorded), or ResourceNotFound for an unknown signal, in its place.
        The signals are read in one query, their devices sent one batch of RPC and the changes and
        refusals written in one transaction (per-command round trips serialise behind the ingest's commits on
        a busy database: a control round for hundreds of signals took tens of seconds)."""
        check_allowed(principal, "traffic.control", tenant)
        who = (principal.username or principal.id) if principal is not None else None
        now = clock.now()
        table = models.signals
        async with self.engine.connect() as conn:
            rows = {r.signal_id: r for r in (await conn.execute(select(table).where(
                table.c.tenant == tenant, table.c.signal_id.in_(sorted({w[0] for w in wanted}))))).all()}
        outcomes: list[dict[str, Any] | Exception] = []
        records: list[dict[str, Any]] = []
        # (position in `wanted`, signal row, phase, its phase_commands record, the lamps' sequence, when the
        # green starts)
        changes: list[tuple[int, Any, int, dict[str, Any], list[dict[str, Any]], dt.datetime]] = []
        for position, (signal_id, phase, source) in enumerate(wanted):
            row = rows.get(signal_id)
            if row is None:
                outcomes.append(ResourceNotFound(f"no signal {signal_id}"))
                continue
            plan = plan_from_doc(row.plan)
            refusal = phase_refusal(plan, row, phase, now)
            record = {"tenant": tenant, "signal_id": signal_id, "phase": phase if isinstance(phase, int) else None,
                      "source": source, "detail": None, "rpc_id": None, "rpc_status": None, "requested_by": who,
                      "requested_at": now}
            if refusal is not None:
                records.append({**record, "outcome": "refused", "detail": refusal[1]})
                outcomes.append(refusal[0](refusal[1]))
                continue
            assert isinstance(phase, int)
            if phase == row.phase:
                records.append({**record, "outcome": "held"})
                outcomes.append({"signal": signal_id, "phase": phase, "outcome": "held", "rpc": None})
                continue
            yellow, all_red = transition_states(plan.phases[row.phase].state, plan.phases[phase].state)
            sequence: list[dict[str, Any]] = [
                {"state": yellow, "seconds": plan.yellow}, {"state": all_red, "seconds": plan.all_red},
                {"state": plan.phases[phase].state, "seconds": None}]
            outcomes.append({})  # filled in below, once the RPC is sent
            changes.append((position, row, phase, record, sequence,
                            now + dt.timedelta(seconds=plan.yellow + plan.all_red)))
        to_send = [(position, row, phase, sequence) for position, row, phase, _, sequence, _ in changes
                   if row.device and send is not None]
        rpcs: dict[int, dict[str, Any] | Exception] = {}
        if to_send:
            assert send is not None
            sent = await send([(row.device, "setPhase", {"signal": row.signal_id, "phase": phase,
                                                         "sequence": sequence})
                               for _, row, phase, sequence in to_send])
            rpcs = {position: answer for (position, *_), answer in zip(to_send, sent, strict=True)}
        updates = []
        for position, row, phase, record, sequence, green_at in changes:
            rpc = rpcs.get(position)
            if isinstance(rpc, Exception):  # the command never reached the device: nothing changed
                outcomes[position] = rpc
                continue
            updates.append({"u_signal": row.signal_id, "u_phase": phase, "u_green": green_at,
                            "u_fallback": int(record["source"] == "fallback")})
            records.append({**record, "outcome": "applied", "rpc_id": rpc.get("id") if rpc else None,
                            "rpc_status": rpc.get("status") if rpc else None})
            outcomes[position] = {"signal": row.signal_id, "phase": phase, "outcome": "applied", "sequence": sequence,
                                  "greenAt": green_at.isoformat(), "rpc": rpc}
        if records or updates:
            async with self._write() as conn:
                if updates:
                    await conn.execute(update(table).where(table.c.tenant == tenant,
                                                           table.c.signal_id == bindparam("u_signal"))
                                       .values(phase=bindparam("u_phase"), green_since=bindparam("u_green"),
                                               fallback=bindparam("u_fallback")), updates)
                if records:
                    await conn.execute(insert(models.phase_commands), records)
        return outcomes

    async def preempt(self, principal: Principal | None, tenant: str, spec: models.PreemptIn,
                      send: RpcSender | None) -> dict[str, Any]:
        """Green wave for an emergency vehicle: the signals it reaches within the lead time get its phase.

        Called as the vehicle moves (each call carries the signals still ahead). Every command goes
        through `command_phase`, so minimum green and clearances still hold: a signal whose minimum
        green is not served yet answers `waiting` and is asked again on the next call.

        Each signal's lead is the simulator's clear-ahead lead (`preemption.clear_ahead_lead`): the time its
        route phase needs to come up through minimum green and clearances from where the signal stands
        (`seconds_to_green`), plus the discharge of the vehicles on the fullest lane that phase serves, as its
        latest fresh detector readings count them. A signal none of whose detectors for that phase has a fresh
        reading is asked at the fixed `LEAD_S` (`leadBasis` says which one each signal got).

        A vehicle that reports standing `BLOCKED_AT_GREEN_S` or longer while the next signal shows its phase is held
        up by something that phase does not serve: that signal is asked for the report's `flushPhase` (the whole
        approach) from then on, for the rest of the run (`flushing` in the run's signals), as in the simulator.

        A signal already showing the vehicle's phase for so long that its maximum green would end it before the
        vehicle arrives is asked for its shortest other phase instead, when the vehicle's phase can come back
        through it in time (`preemption.early_cycle`, `earlyCycle` in the answer), as in the simulator.
        """
        check_allowed(principal, "traffic.control", tenant)
        async with self.engine.connect() as conn:
            rows = {ahead.signal: await self._row(conn, tenant, ahead.signal)  # 404 before any command
                    for ahead in spec.signals}
        now = clock.now()
        plans = {signal: plan_from_doc(row.plan) for signal, row in rows.items()}
        found: dict[str, Any] = {}
        if self.detectors is not None:
            found = await self.detectors(tenant, list(dict.fromkeys(
                ident for a in spec.signals for ident in detector_ids(rows[a.signal].plan, plans[a.signal], a.phase))))
        stale_after = stale_seconds(0.0)
        leads: dict[str, tuple[float, str]] = {}

        def lead_of(signal: RouteSignal, _eta: float) -> float:
            row, plan = rows[signal.tls], plans[signal.tls]
            queue = queue_on(row.plan, plan, signal.phase, found, now, stale_after)
            if queue is None:
                leads[signal.tls] = (LEAD_S, "fixed")
            else:
                to_green = seconds_to_green(supervisor_at(plan, row, now), signal.phase, now.timestamp())
                leads[signal.tls] = (clear_ahead_lead(queue, to_green), "clear-ahead")
            return leads[signal.tls][0]

        wave = GreenWave(spec.vehicle, [RouteSignal(a.signal, a.phase, i, float(a.distance),
                                                    flush_phase=a.flush_phase if a.flush_phase != a.phase else None)
                                        for i, a in enumerate(spec.signals)])
        wave.flushing = await self._flushing(tenant, spec.vehicle, now)
        first = wave.signals[0]
        wave.held_up(first, supervisor_at(plans[first.tls], rows[first.tls], now), float(spec.stopped_for))
        wanted = wave.requests(0, 0.0, float(spec.speed), lead_of=lead_of,
                               shown=lambda tls: supervisor_at(plans[tls], rows[tls], now), now=now.timestamp())
        results = []
        commanded: set[str] = set()
        for ahead in spec.signals:
            eta = round(float(ahead.distance) / max(float(spec.speed), APPROACH_SPEED_M_S), 1)
            lead, basis = leads.get(ahead.signal, (LEAD_S, "fixed"))
            phase = wanted[ahead.signal][0] if ahead.signal in wanted else ahead.phase
            entry: dict[str, Any] = {"signal": ahead.signal, "phase": phase, "eta": eta,
                                     "lead": round(lead, 1), "leadBasis": basis}
            if ahead.signal in wave.flushing and ahead.flush_phase is not None:
                entry["flushing"] = True
            elif phase != ahead.phase:
                entry["earlyCycle"] = True  # its green would end at its maximum first: ended now, back in time
            if ahead.signal not in wanted or ahead.signal in commanded:
                entry["outcome"] = "later"  # a signal crossed twice is served for the nearer crossing first
            else:
                commanded.add(ahead.signal)
                try:
                    command = await self.command_phase(principal, tenant, ahead.signal, phase, send,
                                                       source="preemption")
                    entry["outcome"], entry["rpc"] = command["outcome"], command.get("rpc")
                except Conflict as exc:
                    entry["outcome"], entry["detail"] = "waiting", exc.detail
                except BadRequestData as exc:
                    entry["outcome"], entry["detail"] = "refused", exc.detail
            results.append(entry)
        await self._record_run(tenant, spec, [{"signal": e["signal"], "outcome": e["outcome"], "eta": e["eta"],
                                               **({"flushing": True} if e.get("flushing") else {})}
                                              for e in results])
        return {"vehicle": spec.vehicle, "incident": spec.incident, "leadSeconds": wave.lead_s, "signals": results}

    async def _flushing(self, tenant: str, vehicle: str, now: dt.datetime) -> set[str]:
        """The signals the vehicle's run in progress already asks for their flush phase."""
        runs = models.preemption_runs
        async with self.engine.connect() as conn:
            latest = (await conn.execute(select(runs.c.signals).where(
                runs.c.tenant == tenant, runs.c.vehicle == vehicle,
                runs.c.updated_at >= now - dt.timedelta(seconds=PREEMPTION_ACTIVE_S))
                .order_by(runs.c.updated_at.desc()).limit(1))).scalar()
        return {str(s["signal"]) for s in latest or [] if isinstance(s, dict) and s.get("flushing")}

    async def _record_run(self, tenant: str, spec: models.PreemptIn, signals: list[dict[str, Any]]) -> None:
        """The vehicle's run in progress takes this report; with none (or after a gap of more than
        `PREEMPTION_ACTIVE_S`) a new run starts, and the tenant's runs finished long ago are pruned."""
        runs = models.preemption_runs
        now = clock.now()
        async with self._write() as conn:
            await lock_vehicle(conn, tenant, spec.vehicle)
            current = (await conn.execute(select(runs.c.id, runs.c.reports).where(
                runs.c.tenant == tenant, runs.c.vehicle == spec.vehicle,
                runs.c.updated_at >= now - dt.timedelta(seconds=PREEMPTION_ACTIVE_S))
                .order_by(runs.c.updated_at.desc()).limit(1))).first()
            report = {"incident": spec.incident, "speed": float(spec.speed), "signals": signals, "updated_at": now}
            if current is not None:
                await conn.execute(update(runs).where(runs.c.id == current.id)
                                   .values(**report, reports=current.reports + 1))
                return
            await conn.execute(insert(runs).values(tenant=tenant, vehicle=spec.vehicle, reports=1, started_at=now,
                                                   **report))
            await conn.execute(delete(runs).where(runs.c.tenant == tenant,
                                                  runs.c.updated_at < now - PREEMPTION_HISTORY))

    async def active_preemptions(self, principal: Principal | None, tenant: str) -> list[dict[str, Any]]:
        """Emergency runs in progress: each vehicle's signals ahead (as last reported) and their outcome."""
        check_allowed(principal, "traffic.read", tenant)
        runs = models.preemption_runs
        since = clock.now() - dt.timedelta(seconds=PREEMPTION_ACTIVE_S)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(runs).where(runs.c.tenant == tenant, runs.c.updated_at >= since)
                                       .order_by(runs.c.vehicle, runs.c.updated_at.desc()))).all()
        latest: dict[str, Any] = {}
        for row in rows:  # a vehicle has one run in progress; should two workers have raced, the newest
            latest.setdefault(row.vehicle, row)
        return [{"vehicle": r.vehicle, "incident": r.incident, "speed": r.speed, "signals": r.signals,
                 "updatedAt": clock.iso(as_utc(r.updated_at))} for r in latest.values()]

    async def finished_preemptions(self, principal: Principal | None, tenant: str,
                                   limit: int = 100) -> list[dict[str, Any]]:
        """Emergency runs over (no report for `PREEMPTION_ACTIVE_S`), newest first, with their timings:
        kept `PREEMPTION_HISTORY`."""
        check_allowed(principal, "traffic.read", tenant)
        runs = models.preemption_runs
        until = clock.now() - dt.timedelta(seconds=PREEMPTION_ACTIVE_S)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(runs).where(runs.c.tenant == tenant, runs.c.updated_at < until)
                                       .order_by(runs.c.updated_at.desc(), runs.c.id.desc()).limit(limit))).all()
        out = []
        for r in rows:
            started, ended = as_utc(r.started_at), as_utc(r.updated_at)
            out.append({"vehicle": r.vehicle, "incident": r.incident, "speed": r.speed, "signals": r.signals,
                        "updatedAt": clock.iso(ended), "startedAt": clock.iso(started), "endedAt": clock.iso(ended),
                        "seconds": round((ended - started).total_seconds(), 1), "reports": r.reports})
        return out

    async def commands(self, principal: Principal | None, tenant: str, signal_id: str,
                       limit: int = 100) -> list[dict[str, Any]]:
        check_allowed(principal, "traffic.read", tenant)
        table = models.phase_commands
        async with self.engine.connect() as conn:
            await self._row(conn, tenant, signal_id)
            rows = (await conn.execute(select(table).where(and_(table.c.tenant == tenant,
                                                                  table.c.signal_id == signal_id))
                                       .order_by(table.c.id.desc()).limit(limit))).all()
        return [{"phase": r.phase, "source": r.source, "outcome": r.outcome, "detail": r.detail,
                 "rpcId": r.rpc_id, "rpcStatus": r.rpc_status, "ackedMs": r.acked_ms,
                 "requestedAt": as_utc(r.requested_at).isoformat()} for r in rows]

    async def signals_with_controllers(self, tenant: str, controllers: tuple[str, ...]) -> list[Any]:
        """The tenant's signal rows run by one of `controllers` (for the platform's control loop)."""
        table = models.signals
        async with self.engine.connect() as conn:
            return list((await conn.execute(select(table).where(table.c.tenant == tenant,
                                                                table.c.controller.in_(controllers))
                                            .order_by(table.c.signal_id))).all())

    async def record_acknowledgements(self, tenant: str,
                                      answers: Sequence[tuple[str, int, str, float | None]]) -> None:
        """The devices' answers to phase commands, (signal, RPC id, final RPC status, ms from the decision
        to the acknowledgement or None), in one transaction."""
        if not answers:
            return
        table = models.phase_commands
        async with self._write() as conn:
            await conn.execute(update(table).where(table.c.tenant == tenant,
                                                   table.c.signal_id == bindparam("answer_signal"),
                                                   table.c.rpc_id == bindparam("answer_rpc"))
                               .values(rpc_status=bindparam("answer_status"), acked_ms=bindparam("answer_ms")),
                               [{"answer_signal": signal_id, "answer_rpc": rpc_id, "answer_status": status[:16],
                                 "answer_ms": acked_ms} for signal_id, rpc_id, status, acked_ms in answers])

    async def set_fallbacks(self, tenant: str, fallbacks: dict[str, bool]) -> None:
        """Show that the fixed-time fallback runs (True) or no longer runs (False) for these signals, before
        their next phase change; one statement."""
        if not fallbacks:
            return
        table = models.signals
        async with self._write() as conn:
            await conn.execute(update(table).where(table.c.tenant == tenant, table.c.signal_id == bindparam("f_signal"))
                               .values(fallback=bindparam("f_on")),
                               [{"f_signal": signal, "f_on": int(on)} for signal, on in fallbacks.items()])

    async def decide(self, principal: Principal | None, tenant: str, signal_id: str, spec: models.DecideIn,
                     send: RpcSender | None) -> dict[str, Any]:
        """Run the signal's controller on detector readings; with `apply`, command the phase it asks for."""
        check_allowed(principal, "traffic.control" if spec.apply else "traffic.read", tenant)
        async with self.engine.connect() as conn:
            row = await self._row(conn, tenant, signal_id)
        plan = plan_from_doc(row.plan)
        movements = movements_of(row.plan, plan)  # the controllers' view: each link's first connection
        known = {lane for moves in movements_of(row.plan, plan, every_connection=True) for m in moves
                 for lane in (m.in_lane, m.out_lane)}
        lanes: dict[str, LaneReading] = {}
        for lane, r in spec.lanes.items():
            if lane not in known:
                raise BadRequestData(f"lane {lane[:128]!r} is not a detector lane of signal {signal_id}")
            try:
                lanes[lane] = check_reading(LaneReading(
                    vehicles=float(r.vehicles), halting=float(r.halting), mean_speed=float(r.speed),
                    occupancy=float(r.occupancy), waiting=float(r.waiting), length=float(r.length)))
            except PlanError as exc:
                raise BadRequestData(f"lane {lane}: {exc}") from exc
        now = clock.now()
        elapsed = max(0.0, (now - as_utc(row.green_since)).total_seconds())
        view = View(now.timestamp(), row.phase, elapsed, lanes, movements)
        source = "controller"
        try:
            wanted = make_controller(row.controller, plan).decide(view)
            if isinstance(wanted, bool) or not isinstance(wanted, int) or not 0 <= wanted < len(plan.phases):
                raise PlanError(f"controller answered {wanted!r}")
        except Exception:  # a failing controller never leaves the junction without a plan
            source = "fallback"
            wanted = FixedTimeController(plan).decide(view)
        result: dict[str, Any] = {"signal": signal_id, "phase": row.phase, "requested": wanted, "source": source}
        if spec.apply and wanted != row.phase:
            current = plan.phases[row.phase]
            if elapsed < current.earliest_end:
                result["outcome"] = "held"
                result["detail"] = "minimum green not served yet"
            else:
                result["command"] = await self.command_phase(principal, tenant, signal_id, wanted, send, source)
                result["outcome"] = result["command"]["outcome"]
        else:
            result["outcome"] = "advice" if not spec.apply else "held"
        return result


async def lock_vehicle(conn: AsyncConnection, tenant: str, vehicle: str) -> None:
    """On PostgreSQL, serialise one vehicle's reports across API workers until the transaction ends, so two
    workers taking its reports at once extend one run rather than start two (SQLite has one writer anyway)."""
    if conn.dialect.name != "postgresql":
        return
    digest = hashlib.sha256(f"traffic-run\x00{tenant}\x00{vehicle}".encode()).digest()
    await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"),
                       {"key": int.from_bytes(digest[:8], "big", signed=True)})
