"""HTTP API of traffic signal control (信号控制).

    POST /api/traffic/signals                      SignalIn (traffic.manage) → 201 the signal; 400 unsafe plan
                                                   (conflicting greens, max < min green, …) or malformed links
                                                   (`links[i]`: {"in", "out", "also"?: [{"in", "out"}, …]}, every
                                                   connection the link controls, each once; or null, a link that
                                                   drives no lane, not every one; one link per signal index
                                                   of the phase states, or `links` left out), 409 known id
    GET  /api/traffic/signals                      the tenant's signals with their current stage and state
    GET  /api/traffic/signals/{id}                 one signal; 404 unknown
    POST /api/traffic/signals/{id}/phase           {"phase": n} (traffic.control) → the change (yellow, all-red,
                                                   green) sent to the signal's IoT device as RPC `setPhase`,
                                                   with the RPC's id and status; 400 no such phase, 409 minimum
                                                   green or pedestrian clearance not served
    GET  /api/traffic/signals/{id}/commands        the signal's phase commands, refused ones included
    POST /api/traffic/signals/{id}/decide          {"lanes": {lane: reading}, "apply": bool} → the phase the
                                                   signal's controller asks for from these detector readings
                                                   (400 impossible readings or unknown lanes); with apply
                                                   (traffic.control) the phase is commanded as above
    POST /api/traffic/preemptions                  PreemptIn (traffic.control): an emergency vehicle's progress
                                                   (signals ahead with the phase serving its route and the
                                                   distance) → each signal it reaches within 25 s is commanded
                                                   to that phase as above (outcome applied / held / waiting for
                                                   minimum green / later); 404 unknown signal
    GET  /api/traffic/preemptions                  emergency runs in progress (progress within 2 minutes):
                                                   vehicle, incident, the signals ahead and their outcome
                                                   (traffic.read); with `?finished=true` the runs over (kept
                                                   30 days), newest first, with startedAt, endedAt, seconds
                                                   and reports. Runs are rows of `traffic_preemption_runs`:
                                                   every API worker lists the same, a restart keeps them

Started with the app: the live accident detector on the hub's detector readings (`accident_watch`) and the
fire engines' green wave on dispatched fire incidents (`emergency`), both event-bus consumers; and, with
`CITYOS_TRAFFIC_CONTROL_SECONDS` > 0, the closed control loop (`control_loop`): adaptive signals decided
from their detectors' readings in the hub, phases sent as device RPC and their acknowledgements recorded.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.responses import Response

from cityos.core.db import write_lock_of
from cityos.core.responses import json_response
from cityos.security.api import request_tenant, require
from cityos.security.policy import Principal
from cityos.traffic.accident_watch import AccidentWatch
from cityos.traffic.accidents import AccidentDetector, Thresholds
from cityos.traffic.control_loop import start_control_loop
from cityos.traffic.emergency import EmergencyRoutes
from cityos.traffic.models import DecideIn, PhaseCommandIn, PreemptIn, SignalIn
from cityos.traffic.service import RpcBatchSender, RpcSender, TrafficService

if TYPE_CHECKING:
    from cityos.iot.models import RpcIn

router = APIRouter(prefix="/api/traffic", tags=["traffic"])
routers: list[APIRouter] = [router]


def traffic_of(request: Request) -> TrafficService:
    service: TrafficService = request.app.state.traffic
    return service


def rpc_sender(request: Request) -> RpcSender | None:
    """The IoT device command path (MQTT RPC, recorded and acknowledged), if the app has one."""
    return rpc_sender_of(request.app.state)


def rpc_sender_of(state: Any) -> RpcSender | None:
    commands = getattr(state, "iot_commands", None)
    return None if commands is None else command_sender(commands)


def phase_rpc(method: str, params: dict[str, Any]) -> RpcIn:
    """The IoT RPC request of a phase command: the cabinet must acknowledge it within 5 s."""
    from cityos.iot.models import RpcIn

    return RpcIn(method=method, params=params, timeout=5000)


def command_sender(commands: Any) -> RpcSender:
    """Phase commands as RPC through an IoT `CommandSender` (acknowledged within 5 s)."""

    async def send(device: str, method: str, params: dict[str, Any]) -> dict[str, Any]:
        answer: dict[str, Any] = await commands.send(device, phase_rpc(method, params))
        return {"id": answer.get("id"), "status": answer.get("status")}

    return send


def batch_sender_of(state: Any) -> RpcBatchSender | None:
    """The app's IoT device command path for many phase commands at once, if the app has one."""
    commands = getattr(state, "iot_commands", None)
    return None if commands is None else command_batch_sender(commands)


def command_batch_sender(commands: Any) -> RpcBatchSender:
    """Phase commands as one batch of RPC through an IoT `CommandSender` (each acknowledged within 5 s)."""

    async def send(requests: list[tuple[str, str, dict[str, Any]]]) -> list[dict[str, Any] | Exception]:
        answers = await commands.send_many([(device, phase_rpc(method, params)) for device, method, params in requests])
        return [answer if isinstance(answer, Exception) else {"id": answer.get("id"), "status": answer.get("status")}
                for answer in answers]

    return send


@router.post("/signals", status_code=201)
async def register_signal(request: Request, spec: SignalIn,
                          principal: Principal | None = Depends(require("traffic.manage"))) -> Response:
    tenant = request_tenant(request, principal)
    return json_response(await traffic_of(request).register(principal, tenant, spec), 201)


@router.get("/signals")
async def list_signals(request: Request, limit: int = Query(100, ge=1, le=1000),
                       principal: Principal | None = Depends(require("traffic.read"))) -> Response:
    tenant = request_tenant(request, principal)
    return json_response(await traffic_of(request).list_signals(principal, tenant, limit))


@router.get("/signals/{signal_id}")
async def get_signal(request: Request, signal_id: str,
                     principal: Principal | None = Depends(require("traffic.read"))) -> Response:
    tenant = request_tenant(request, principal)
    return json_response(await traffic_of(request).get(principal, tenant, signal_id))


@router.post("/signals/{signal_id}/phase")
async def command_phase(request: Request, signal_id: str, spec: PhaseCommandIn,
                        principal: Principal | None = Depends(require("traffic.control"))) -> Response:
    tenant = request_tenant(request, principal)
    return json_response(await traffic_of(request).command_phase(principal, tenant, signal_id, spec.phase,
                                                                 rpc_sender(request)))


@router.get("/signals/{signal_id}/commands")
async def list_commands(request: Request, signal_id: str, limit: int = Query(100, ge=1, le=1000),
                        principal: Principal | None = Depends(require("traffic.read"))) -> Response:
    tenant = request_tenant(request, principal)
    return json_response(await traffic_of(request).commands(principal, tenant, signal_id, limit))


@router.post("/signals/{signal_id}/decide")
async def decide(request: Request, signal_id: str, spec: DecideIn,
                 principal: Principal | None = Depends(require("traffic.read"))) -> Response:
    tenant = request_tenant(request, principal)
    return json_response(await traffic_of(request).decide(principal, tenant, signal_id, spec, rpc_sender(request)))


@router.post("/preemptions")
async def preempt(request: Request, spec: PreemptIn,
                  principal: Principal | None = Depends(require("traffic.control"))) -> Response:
    tenant = request_tenant(request, principal)
    return json_response(await traffic_of(request).preempt(principal, tenant, spec, rpc_sender(request)))


@router.get("/preemptions")
async def preemptions(request: Request, finished: bool = Query(False), limit: int = Query(100, ge=1, le=1000),
                      principal: Principal | None = Depends(require("traffic.read"))) -> Response:
    tenant = request_tenant(request, principal)
    if finished:
        return json_response(await traffic_of(request).finished_preemptions(principal, tenant, limit))
    return json_response(await traffic_of(request).active_preemptions(principal, tenant))


def accident_alert_departments() -> list[str]:
    """Who is told of a detected accident besides the incident's own department (transport): 公安交警."""
    raw = os.environ.get("CITYOS_TRAFFIC_ACCIDENT_ALERT", "public-security")
    return [d.strip() for d in raw.split(",") if d.strip()]


def accident_lane_shift_p() -> float:
    """The lane-shift test's threshold in the live watch; 0 (the default) leaves it off. On held-out SUMO runs it
    raised detection within 5 minutes from 64 % to 72 % at 1e-5 but false alarms from 0.14 to 0.60 per detector-
    day (bench/RESULTS.md, 2026-12-06): each alarm opens an incident and alerts the police, so a city turns it on
    where its operators can confirm alarms first. With detectors that have learned the network (the bench's warm-up
    protocol, 2026-12-06 14:47) 1e-6 is the measured operating point."""
    raw = os.environ.get("CITYOS_TRAFFIC_ACCIDENT_LANE_SHIFT_P", "0").strip() or "0"
    try:
        value = float(raw)
    except ValueError as exc:
        raise ValueError(f"CITYOS_TRAFFIC_ACCIDENT_LANE_SHIFT_P must be a probability, not {raw!r}") from exc
    if not 0 <= value < 1:
        raise ValueError(f"CITYOS_TRAFFIC_ACCIDENT_LANE_SHIFT_P must be in [0, 1), not {raw!r}")
    return value


async def alert_departments(app: FastAPI, tenant: str, event: dict[str, Any]) -> list[str]:
    notifier = getattr(app.state, "notifier", None)
    if notifier is None:
        return []
    alarm = event["alarm"]
    told: list[str] = []
    for department in accident_alert_departments():
        told += await notifier.notify_department(tenant, department, "交通事故警情 Traffic accident",
                                                 str(alarm.get("message") or ""), link="/cockpit")
    return told


async def start(app: FastAPI) -> Callable[[], Awaitable[None]]:
    """Build `app.state.traffic`; returns the shutdown function."""
    app.state.traffic = TrafficService(app.state.engine, write_lock=write_lock_of(app),
                                       detectors=app.state.hub.service.retrieve_many)
    # Detector stations' readings in the hub feed the accident detector (a detection opens an incident).
    watch = AccidentWatch(app.state.bus, alert=lambda tenant, event: alert_departments(app, tenant, event),
                          detector=AccidentDetector(Thresholds(shift_p=accident_lane_shift_p())))
    app.state.accident_watch = watch
    # A dispatched fire incident requests pre-emption along its engine's route.
    routes = EmergencyRoutes(app.state.bus, app.state.hub.service, app.state.hub.resolver.core, app.state.traffic,
                             lambda: rpc_sender_of(app.state))
    app.state.emergency_routes = routes
    unsubscribe = [watch.subscribe(), routes.subscribe()]
    control = start_control_loop(app)
    app.state.traffic_control = control

    async def stop() -> None:
        for cancel in unsubscribe:
            cancel()
        if control is not None:
            await control.stop()

    return stop
