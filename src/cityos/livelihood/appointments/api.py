"""HTTP API of appointments (预约), in our JSON and as FHIR R4.

JSON (`/api/appointments`):
    GET  /schedules?kind=&site=                 public list of bookable services (appointment.read)
    POST /schedules                             {"kind", "site", "service", "actor"?, "department"?}
                                                (appointment.manage)
    GET  /schedules/{id}
    POST /schedules/{id}/slots                  {"from", "to", "firstStart", "lastStart", "minutes", "capacity",
                                                "weekdaysOnly"} → {"created", "skipped"} (appointment.manage)
    GET  /schedules/{id}/appointments?day=      the site's list (appointment.manage)
    GET  /slots?scheduleId=&from=&to=&free=true
    POST /appointments                          {"slotId", "note"?} (appointment.book) → 201; 409 full or duplicate;
                                                400 past slot; 403 suspended after no-shows
    GET  /appointments/mine
    GET  /appointments/{id}                     owner or the site's staff
    POST /appointments/{id}/cancel              {"reason"?}; the place goes to the waiting list's first person
    POST /appointments/{id}/reschedule          {"slotId"}
    POST /appointments/{id}/outcome             {"status": "fulfilled" | "noshow"} (appointment.manage)
    POST /waitlist                              {"scheduleId", "day"} → position

FHIR R4 (`/fhir/R4`, application/fhir+json, errors as OperationOutcome):
    GET /metadata; GET /Schedule, /Schedule/{id}; GET /Slot?schedule=Schedule/{id}&status=free&start=ge…&start=lt…;
    GET /Slot/{id}; POST /Appointment; GET /Appointment?patient=Patient/{me}; GET /Appointment/{id};
    PUT /Appointment/{id} with status "cancelled" cancels.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.responses import Response

from cityos.core import clock
from cityos.core.db import write_lock_of
from cityos.core.errors import BadRequestData, ProblemError
from cityos.core.responses import json_response, read_body, read_json_object
from cityos.core.tasks import periodic
from cityos.livelihood.appointments import fhir
from cityos.livelihood.appointments.service import AppointmentService
from cityos.security.api import request_tenant, require
from cityos.security.policy import Principal

router = APIRouter(prefix="/api/appointments", tags=["appointments"])
fhir_router = APIRouter(prefix="/fhir/R4", tags=["appointments (FHIR R4)"])
routers: list[APIRouter] = [router, fhir_router]
MAX_FHIR_BODY = 64 * 1024
REMINDER_INTERVAL_SECONDS = 300.0


def appointments_of(request: Request) -> AppointmentService:
    service: AppointmentService = request.app.state.appointments
    return service


def parse_day(value: str | None, name: str = "day") -> dt.date | None:
    if value is None:
        return None
    try:
        return dt.date.fromisoformat(value)
    except ValueError as exc:
        raise BadRequestData(f"{name} must be an ISO date (YYYY-MM-DD)") from exc


def parse_moment(value: str | None, name: str) -> dt.datetime | None:
    if value is None:
        return None
    try:
        moment = clock.parse_iso(value)
    except ValueError as exc:
        raise BadRequestData(f"{name} must be an ISO 8601 date-time with an offset") from exc
    if moment.tzinfo is None:
        raise BadRequestData(f"{name} must carry a time-zone offset")
    return moment.astimezone(dt.UTC)


def text_member(body: dict[str, Any], name: str, required: bool = True) -> str | None:
    value = body.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value or len(value) > 128:
        raise BadRequestData(f"{name} must be a non-empty string")
    return value


def parse_optional_object(raw: bytes) -> dict[str, Any]:
    """An optional JSON object body (empty means {})."""
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadRequestData("the body is not JSON") from exc
    if not isinstance(body, dict):
        raise BadRequestData("the body must be a JSON object")
    return body


# ---------------------------------------------------------------------- JSON API


@router.get("/schedules")
async def list_schedules(request: Request, kind: str | None = Query(None, max_length=16),
                         site: str | None = Query(None, max_length=256),
                         principal: Principal | None = Depends(require("appointment.read"))) -> Response:
    return json_response(await appointments_of(request).list_schedules(principal, request_tenant(request, principal),
                                                                       kind, site))


@router.post("/schedules", status_code=201)
async def create_schedule(request: Request,
                          principal: Principal | None = Depends(require("appointment.manage"))) -> Response:
    body = await read_json_object(request)
    return json_response(await appointments_of(request).create_schedule(
        principal, request_tenant(request, principal), body), 201)


@router.get("/schedules/{schedule_id}")
async def get_schedule(request: Request, schedule_id: str,
                       principal: Principal | None = Depends(require("appointment.read"))) -> Response:
    return json_response(await appointments_of(request).schedule(principal, request_tenant(request, principal),
                                                                 schedule_id[:64]))


@router.post("/schedules/{schedule_id}/slots", status_code=201)
async def add_slots(request: Request, schedule_id: str,
                    principal: Principal | None = Depends(require("appointment.manage"))) -> Response:
    body = await read_json_object(request)
    return json_response(await appointments_of(request).add_slots(
        principal, request_tenant(request, principal), schedule_id[:64], body), 201)


@router.get("/schedules/{schedule_id}/appointments")
async def schedule_appointments(request: Request, schedule_id: str, day: str | None = Query(None, max_length=10),
                                principal: Principal | None = Depends(require("appointment.manage"))) -> Response:
    return json_response(await appointments_of(request).for_schedule(
        principal, request_tenant(request, principal), schedule_id[:64], parse_day(day)))


@router.get("/slots")
async def list_slots(request: Request, schedule_id: str | None = Query(None, alias="scheduleId", max_length=64),
                     start_from: str | None = Query(None, alias="from", max_length=40),
                     start_to: str | None = Query(None, alias="to", max_length=40),
                     free: bool = Query(False), limit: int = Query(200, ge=1, le=1000),
                     principal: Principal | None = Depends(require("appointment.read"))) -> Response:
    return json_response(await appointments_of(request).list_slots(
        principal, request_tenant(request, principal), schedule_id=schedule_id,
        start_from=parse_moment(start_from, "from"), start_to=parse_moment(start_to, "to"), only_free=free,
        limit=limit))


@router.post("/appointments", status_code=201)
async def book(request: Request, principal: Principal | None = Depends(require("appointment.book"))) -> Response:
    body = await read_json_object(request)
    slot_id = text_member(body, "slotId")
    note = body.get("note")
    assert slot_id is not None
    return json_response(await appointments_of(request).book(principal, request_tenant(request, principal),
                                                             slot_id, note), 201)


@router.get("/appointments/mine")
async def my_appointments(request: Request,
                          principal: Principal | None = Depends(require("appointment.book"))) -> Response:
    return json_response(await appointments_of(request).mine(principal, request_tenant(request, principal)))


@router.get("/appointments/{appointment_id}")
async def get_appointment(request: Request, appointment_id: str,
                          principal: Principal | None = Depends(require("appointment.read"))) -> Response:
    return json_response(await appointments_of(request).appointment(
        principal, request_tenant(request, principal), appointment_id[:64]))


@router.post("/appointments/{appointment_id}/cancel")
async def cancel(request: Request, appointment_id: str,
                 principal: Principal | None = Depends(require("appointment.read"))) -> Response:
    raw = await read_body(request)
    body = parse_optional_object(raw)
    reason = body.get("reason")
    return json_response(await appointments_of(request).cancel(
        principal, request_tenant(request, principal), appointment_id[:64],
        reason if isinstance(reason, str) else None))


@router.post("/appointments/{appointment_id}/reschedule")
async def reschedule(request: Request, appointment_id: str,
                     principal: Principal | None = Depends(require("appointment.read"))) -> Response:
    body = await read_json_object(request)
    slot_id = text_member(body, "slotId")
    assert slot_id is not None
    return json_response(await appointments_of(request).reschedule(
        principal, request_tenant(request, principal), appointment_id[:64], slot_id))


@router.post("/appointments/{appointment_id}/outcome")
async def outcome(request: Request, appointment_id: str,
                  principal: Principal | None = Depends(require("appointment.manage"))) -> Response:
    body = await read_json_object(request)
    status = text_member(body, "status")
    assert status is not None
    return json_response(await appointments_of(request).mark(
        principal, request_tenant(request, principal), appointment_id[:64], status))


@router.post("/waitlist", status_code=201)
async def join_waitlist(request: Request,
                        principal: Principal | None = Depends(require("appointment.book"))) -> Response:
    body = await read_json_object(request)
    schedule_id = text_member(body, "scheduleId")
    day = parse_day(text_member(body, "day"))
    assert schedule_id is not None and day is not None
    return json_response(await appointments_of(request).join_waitlist(
        principal, request_tenant(request, principal), schedule_id, day), 201)


# ---------------------------------------------------------------------- FHIR R4


def fhir_response(body: dict[str, Any], status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps(body, ensure_ascii=False), status_code=status, media_type=fhir.FHIR_JSON,
                    headers=headers)


async def as_fhir(work: Awaitable[dict[str, Any]], status: int = 200,
                  headers: dict[str, str] | None = None) -> Response:
    """FHIR clients read errors as OperationOutcome: our ProblemDetails errors are answered in that shape."""
    try:
        return fhir_response(await work, status, headers)
    except ProblemError as error:
        return fhir_response(fhir.operation_outcome(error), error.status)


def fhir_base(request: Request) -> str:
    return str(request.base_url).rstrip("/") + "/fhir/R4"


def start_bounds(values: list[str]) -> tuple[dt.datetime | None, dt.datetime | None]:
    """FHIR date search prefixes on `start`: ge/gt give the lower bound, le/lt the upper (eq: that day)."""
    lower: dt.datetime | None = None
    upper: dt.datetime | None = None
    for value in values:
        prefix, raw = (value[:2], value[2:]) if value[:2] in ("ge", "gt", "le", "lt", "eq") else ("eq", value)
        if len(raw) == 10:
            day = parse_day(raw, "start")
            assert day is not None
            moment = dt.datetime.combine(day, dt.time(0), tzinfo=dt.UTC)
            if prefix == "eq":
                lower, upper = moment, moment + dt.timedelta(days=1)
                continue
        else:
            parsed = parse_moment(raw, "start")
            assert parsed is not None
            moment = parsed
        if prefix in ("ge", "gt"):
            lower = moment
        elif prefix in ("le", "lt"):
            upper = moment
        else:
            lower, upper = moment, moment + dt.timedelta(seconds=1)
    return lower, upper


@fhir_router.get("/metadata")
async def capability_statement(request: Request) -> Response:
    interactions = [{"code": "read"}, {"code": "search-type"}]
    return fhir_response({
        "resourceType": "CapabilityStatement", "status": "active", "date": clock.iso(clock.now())[:10],
        "kind": "instance", "fhirVersion": "4.0.1", "format": ["json"],
        "implementation": {"description": "CityOS appointments (预约)", "url": fhir_base(request)},
        "rest": [{"mode": "server", "resource": [
            {"type": "Schedule", "interaction": interactions,
             "searchParam": [{"name": "service-type", "type": "token"}, {"name": "active", "type": "token"}]},
            {"type": "Slot", "interaction": interactions,
             "searchParam": [{"name": "schedule", "type": "reference"}, {"name": "status", "type": "token"},
                             {"name": "start", "type": "date"}]},
            {"type": "Appointment", "interaction": [*interactions, {"code": "create"}, {"code": "update"}],
             "searchParam": [{"name": "patient", "type": "reference"}]}]}]})


@fhir_router.get("/Schedule")
async def fhir_schedules(request: Request, service_type: str | None = Query(None, alias="service-type",
                                                                               max_length=256),
                         principal: Principal | None = Depends(require("appointment.read"))) -> Response:
    async def work() -> dict[str, Any]:
        views = await appointments_of(request).list_schedules(principal, request_tenant(request, principal))
        if service_type:
            views = [v for v in views if v["service"] == service_type]
        return fhir.bundle([fhir.schedule_resource(v) for v in views], fhir_base(request))
    return await as_fhir(work())


@fhir_router.get("/Schedule/{schedule_id}")
async def fhir_schedule(request: Request, schedule_id: str,
                        principal: Principal | None = Depends(require("appointment.read"))) -> Response:
    async def work() -> dict[str, Any]:
        view = await appointments_of(request).schedule(principal, request_tenant(request, principal), schedule_id[:64])
        return fhir.schedule_resource(view)
    return await as_fhir(work())


@fhir_router.get("/Slot")
async def fhir_slots(request: Request, schedule: str | None = Query(None, max_length=128),
                     status: str | None = Query(None, max_length=32),
                     count: int = Query(100, alias="_count", ge=1, le=1000),
                     principal: Principal | None = Depends(require("appointment.read"))) -> Response:
    async def work() -> dict[str, Any]:
        if status not in (None, "free", "busy", "busy-unavailable"):
            raise BadRequestData("status must be free, busy or busy-unavailable")
        lower, upper = start_bounds(request.query_params.getlist("start"))
        views = await appointments_of(request).list_slots(
            principal, request_tenant(request, principal),
            schedule_id=fhir.reference_id(schedule, "Schedule") if schedule else None,
            start_from=lower, start_to=upper, only_free=status == "free", limit=count)
        if status:
            views = [v for v in views if v["status"] == status]
        return fhir.bundle([fhir.slot_resource(v) for v in views], fhir_base(request))
    return await as_fhir(work())


@fhir_router.get("/Slot/{slot_id}")
async def fhir_slot(request: Request, slot_id: str,
                    principal: Principal | None = Depends(require("appointment.read"))) -> Response:
    async def work() -> dict[str, Any]:
        return fhir.slot_resource(await appointments_of(request).slot(principal, request_tenant(request, principal),
                                                                      slot_id[:64]))
    return await as_fhir(work())


async def fhir_body(request: Request) -> dict[str, Any]:
    raw = await read_body(request, MAX_FHIR_BODY)
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadRequestData("the body is not JSON") from exc
    if not isinstance(body, dict):
        raise BadRequestData("the body must be a FHIR resource (a JSON object)")
    return body


@fhir_router.post("/Appointment")
async def fhir_book(request: Request,
                    principal: Principal | None = Depends(require("appointment.book"))) -> Response:
    service = appointments_of(request)
    tenant = request_tenant(request, principal)

    async def work() -> dict[str, Any]:
        slot_id, comment = fhir.booking_request(await fhir_body(request), principal.id if principal else "")
        view = await service.book(principal, tenant, slot_id, comment)
        slot = await service.slot(principal, tenant, view["slotId"])
        return fhir.appointment_resource(view, slot["end"])

    response = await as_fhir(work(), 201)
    if response.status_code == 201:
        created = json.loads(bytes(response.body))
        response.headers["Location"] = f"{fhir_base(request)}/Appointment/{created['id']}/_history/1"
    return response


@fhir_router.get("/Appointment")
async def fhir_appointments(request: Request, patient: str | None = Query(None, max_length=300),
                            principal: Principal | None = Depends(require("appointment.book"))) -> Response:
    async def work() -> dict[str, Any]:
        if patient is not None and principal is not None and fhir.reference_id(patient, "Patient") != principal.id:
            raise BadRequestData("you can search only your own appointments (patient=Patient/<your id>)")
        views = await appointments_of(request).mine(principal, request_tenant(request, principal))
        return fhir.bundle([fhir.appointment_resource(v) for v in views], fhir_base(request))
    return await as_fhir(work())


@fhir_router.get("/Appointment/{appointment_id}")
async def fhir_appointment(request: Request, appointment_id: str,
                           principal: Principal | None = Depends(require("appointment.read"))) -> Response:
    async def work() -> dict[str, Any]:
        view = await appointments_of(request).appointment(principal, request_tenant(request, principal),
                                                          appointment_id[:64])
        return fhir.appointment_resource(view)
    return await as_fhir(work())


@fhir_router.put("/Appointment/{appointment_id}")
async def fhir_update(request: Request, appointment_id: str,
                      principal: Principal | None = Depends(require("appointment.read"))) -> Response:
    """The one update we accept is a cancellation (status → cancelled), as FHIR clients send it."""
    service = appointments_of(request)
    tenant = request_tenant(request, principal)

    async def work() -> dict[str, Any]:
        body = await fhir_body(request)
        if body.get("resourceType") != "Appointment" or body.get("id") not in (None, appointment_id):
            raise BadRequestData("the body must be this Appointment")
        current = await service.appointment(principal, tenant, appointment_id[:64])
        if body.get("status") == current["status"]:
            return fhir.appointment_resource(current)
        if body.get("status") != "cancelled":
            raise BadRequestData("only a cancellation (status cancelled) can be sent; to move an appointment "
                                 "book the new slot and cancel this one")
        reason = body.get("cancelationReason", {}).get("text") if isinstance(body.get("cancelationReason"),
                                                                              dict) else None
        view = await service.cancel(principal, tenant, appointment_id[:64], reason)
        return fhir.appointment_resource(view)
    return await as_fhir(work())


# ---------------------------------------------------------------------- lifecycle


async def start(app: FastAPI) -> Callable[[], Awaitable[None]]:
    """Build `app.state.appointments` and start the reminder loop; returns the shutdown function."""
    service = AppointmentService(app.state.engine, write_lock_of(app),
                                 getattr(app.state, "notifier", None), app.state.security.service.audit)
    app.state.appointments = service
    return periodic("appointment reminders", service.send_reminders, REMINDER_INTERVAL_SECONDS, first=5.0)
