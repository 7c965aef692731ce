"""HTTP API of elderly care (独居老人关爱).

    PUT  /api/livelihood/care/people                {subject, devices, chain, district?, workerId?} (care.manage)
    POST /api/livelihood/care/readings              {device, observedAt?, values} (reading.write; a device
                                                    sends only its own)
    POST /api/livelihood/care/alerts/{id}/ack       the person called at a step, or care staff (care.act)
    POST /api/livelihood/care/people/{id}/notes     {kind: visit|note, text} (care.act, staff)
    GET  /api/livelihood/care/roster                ?mine=true: the caller's people, today's alerts, notes
    POST /api/livelihood/care/sweep                 escalate what is due now (also run by the schedule)
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, time
from typing import Any

import orjson
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import Response

from cityos.core import clock
from cityos.core.errors import BadRequestData, TooLarge
from cityos.core.messages import city_zone
from cityos.core.responses import json_response
from cityos.hub.service import ENTITY_CHANGED
from cityos.livelihood.eldercare.service import CareService
from cityos.livelihood.profiles.fields import CIVIL_AFFAIRS
from cityos.security.api import current_principal, enforce, request_tenant, require
from cityos.security.policy import STAFF_ROLES, Principal, Resource, Scope, scope_for
from cityos.security.service import Unauthorized

log = logging.getLogger(__name__)
SOURCE_SYSTEM = "eldercare"

router = APIRouter(prefix="/api/livelihood/care", tags=["livelihood: elderly care"])


def care_of(request: Request) -> CareService:
    found: CareService = request.app.state.livelihood_care
    return found


async def _body(request: Request) -> Any:
    raw = await request.body()
    if len(raw) > 64 * 1024:
        raise TooLarge("the body is larger than 64 KiB")
    try:
        return orjson.loads(raw or b"null")
    except orjson.JSONDecodeError as exc:
        raise BadRequestData(f"malformed JSON: {exc}") from exc


@router.put("/people")
async def enrol(request: Request, principal: Principal | None = Depends(require("livelihood.care.manage"))) -> Response:
    tenant = request_tenant(request, principal)
    body = await _body(request)
    district = body.get("district") if isinstance(body, dict) else None
    await enforce(request, principal, "livelihood.care.manage",
                  Resource("care", tenant, district=district if isinstance(district, str) else None))
    return json_response(await care_of(request).enrol(principal, tenant, body))


@router.post("/readings")
async def reading(request: Request,
                  principal: Principal | None = Depends(require("livelihood.reading.write"))) -> Response:
    tenant = request_tenant(request, principal)
    body = await _body(request)
    device = principal.id if principal is not None and principal.kind == "device" else None
    return json_response(await care_of(request).reading(tenant, body, device))


@router.post("/alerts/{alert_id}/ack")
async def acknowledge(alert_id: str, request: Request) -> Response:
    principal = await current_principal(request)
    if principal is None:
        raise Unauthorized("acknowledging needs a bearer token")
    tenant = request_tenant(request, principal)
    care = care_of(request)
    staff = principal.role in STAFF_ROLES
    if staff:
        alert = await care.alert(tenant, alert_id[:32])
        person = await care.person(tenant, alert.subject_id)
        await enforce(request, principal, "livelihood.care.act", Resource("care", tenant, district=person.district))
    else:
        await enforce(request, principal, "livelihood.care.act", Resource("care", tenant, owner=principal.id))
    return json_response(await care.acknowledge(principal, tenant, alert_id[:32], staff))


@router.post("/people/{subject_id}/notes")
async def note(subject_id: str, request: Request,
               principal: Principal | None = Depends(require("livelihood.care.act"))) -> Response:
    assert principal is not None
    tenant = request_tenant(request, principal)
    care = care_of(request)
    person = await care.person(tenant, subject_id[:64])
    if principal.role not in STAFF_ROLES:
        raise BadRequestData("visits and notes are recorded by care staff")
    await enforce(request, principal, "livelihood.care.act", Resource("care", tenant, district=person.district))
    body = await _body(request)
    if not isinstance(body, dict):
        raise BadRequestData("a JSON object {kind: visit|note, text}")
    return json_response(await care.note(principal, tenant, person.subject_id, body.get("text"), body.get("kind")))


@router.get("/roster")
async def roster(request: Request, mine: bool = False,
                 principal: Principal | None = Depends(require("livelihood.care.read"))) -> Response:
    assert principal is not None
    tenant = request_tenant(request, principal)
    districts = principal.districts if scope_for(principal.role, "livelihood.care.read") is Scope.DEPARTMENT \
        else None
    # The city's midnight, in UTC: SQLite stores times as UTC text, and an offset-carrying bound would be
    # compared as its local wall time (between 00:00 and 08:00 CST that hid every alert of the day).
    today = datetime.combine(clock.now().astimezone(city_zone()).date(), time(0), city_zone()).astimezone(UTC)
    return json_response(await care_of(request).roster(tenant, principal.id if mine else None, districts, today))


@router.post("/sweep")
async def sweep(request: Request, principal: Principal | None = Depends(require("livelihood.care.manage"))) -> Response:
    return json_response(await care_of(request).sweep())


def build(app: FastAPI, lock: asyncio.Lock | None) -> CareService:
    """`app.state.livelihood_care`, writing 120 calls into the hub, fed by wristbands' Device entities."""
    security = app.state.security
    hub = app.state.hub

    async def hub_write(tenant: str, entity: dict[str, Any]) -> None:
        # Care is the civil-affairs bureau's service (民政): its Alert entities are held to 一数一源 as
        # (civil-affairs, eldercare), so a declared authoritative source of Alert fields sees them.
        with hub.service.as_source(tenant, CIVIL_AFFAIRS, SOURCE_SYSTEM):
            result = await hub.service.batch_write(tenant, [entity], hub.resolver.core, "upsert", set())
        if not result.errors:
            return
        # A 120 call is never dropped for a governance rule: the refusal is listed for the data office
        # (the conflict was queued when it was judged) and the alert is written as the platform's own.
        log.error("一数一源 refused the 120 alert %s (%s); written anyway for life safety", entity["id"],
                  result.errors[0].get("error", {}).get("detail"))
        retried = await hub.service.batch_write(tenant, [entity], hub.resolver.core, "upsert", set())
        for error in retried.errors:
            log.error("the 120 alert %s did not reach the hub: %s", entity["id"],
                      error.get("error", {}).get("detail"))

    care = CareService(app.state.engine, security.service.keyring, security.audit,
                       getattr(app.state, "notifier", None), hub_write, lock)
    app.state.livelihood_care = care
    care._unsubscribe.append(app.state.bus.subscribe(ENTITY_CHANGED, _wristband_listener(care), group="eldercare"))
    return care


def _wristband_listener(care: CareService) -> Any:
    """Readings of IoT wristbands (profile ``wearable``) arrive as Device entity changes in the hub."""
    watched = ("heartRate", "oxygenSaturation", "fallDetected")

    async def on_change(event: Any) -> None:
        change = event.payload.get("change")
        after = getattr(change, "after", None)
        if after is None or not after.id.startswith("urn:ngsi-ld:Device:"):
            return
        values: dict[str, Any] = {}
        for iri, instances in after.attrs.items():
            name = iri.rsplit("/", 1)[-1].rsplit("#", 1)[-1]
            if name in watched and instances and isinstance(instances[0], dict):
                values[name] = instances[0].get("value")
        if not values:
            return
        tenant = str(event.payload.get("tenant") or "")
        device = after.id[len("urn:ngsi-ld:Device:"):]
        subject = await care._device_owner(tenant, device)
        if subject is not None:
            await care._apply(tenant, subject, device, values, clock.now(), event)

    return on_change
