"""HTTP API of the evaluation domain (运营评估).

    GET  /api/evaluation/indicators              ?period=day|week|month|quarter&scope=city|district:X|department:Y
                                                 every indicator with its latest value, target, status, or
                                                 "no_data" / "no_source"  (evaluation.read)
    GET  /api/evaluation/indicators/{id}/history ?period&limit (≤ 60) → the trend
    GET  /api/evaluation/indicators/{id}/breakdown ?period → per district and department (drill-down)
    GET  /api/evaluation/radar                   ?period → the 32 radar indicators in 6 categories
    GET  /api/evaluation/maturity                ?period → score, band, coverage, what moved
    POST /api/evaluation/compute                 {"period": "month", "at"?: ISO 8601} (evaluation.compute)
    GET  /api/evaluation/reports/{period}.pdf    the report of the current period (周/月/季)
    GET  /api/evaluation/reports/{period}.xlsx
    GET  /api/evaluation/mystery-shopper/items   the 28 items of the mystery-shopper check
    POST /api/evaluation/mystery-shopper         {"site", "visitedAt", "answers": {item: bool}} (evaluation.assess)
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import Response
from pydantic import ValidationError

from cityos.core import clock
from cityos.core.errors import BadRequestData, ResourceNotFound
from cityos.core.messages import city_zone
from cityos.core.responses import json_response, read_json_object
from cityos.evaluation import reports
from cityos.evaluation.models import PERIOD_KINDS, AssessmentIn
from cityos.evaluation.scheduled import start_schedule
from cityos.evaluation.service import EvaluationError, EvaluationService, catalogue, mystery_items
from cityos.security.api import current_principal, request_tenant, require

router = APIRouter(prefix="/api/evaluation", tags=["evaluation"])
XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
routers: list[APIRouter] = [router]
READ = [Depends(require("evaluation.read"))]
MAX_BODY = 64 * 1024


def evaluation_of(request: Request) -> EvaluationService:
    service: EvaluationService = request.app.state.evaluation
    return service


async def _tenant(request: Request) -> str:
    return request_tenant(request, await current_principal(request))


def _period(request: Request) -> str:
    kind = request.query_params.get("period", "month")
    if kind not in PERIOD_KINDS:
        raise BadRequestData(f"period must be one of {', '.join(PERIOD_KINDS)}")
    return kind


def _scope(raw: str | None) -> tuple[str, str]:
    if not raw or raw == "city":
        return "city", ""
    kind, _, ident = raw.partition(":")
    if kind not in ("district", "department") or not 0 < len(ident) <= 128:
        raise BadRequestData("scope must be city, district:<id> or department:<id>")
    return kind, ident


def _known(indicator_id: str) -> str:
    if indicator_id not in catalogue()[1]:
        raise ResourceNotFound(f"no indicator {indicator_id!r}")
    return indicator_id


@router.get("/indicators", dependencies=READ)
async def indicators(request: Request) -> Response:
    scope_kind, scope_id = _scope(request.query_params.get("scope"))
    return json_response(await evaluation_of(request).latest(await _tenant(request), _period(request),
                                                             scope_kind, scope_id))


@router.get("/indicators/{indicator_id}/history", dependencies=READ)
async def history(indicator_id: str, request: Request) -> Response:
    raw = request.query_params.get("limit", "12")
    if not raw.isdecimal() or not 1 <= int(raw) <= 60:
        raise BadRequestData("limit must be an integer from 1 to 60")
    scope_kind, scope_id = _scope(request.query_params.get("scope"))
    return json_response(await evaluation_of(request).history(
        await _tenant(request), _known(indicator_id), _period(request), int(raw), scope_kind, scope_id))


@router.get("/indicators/{indicator_id}/breakdown", dependencies=READ)
async def breakdown(indicator_id: str, request: Request) -> Response:
    return json_response(await evaluation_of(request).breakdown(await _tenant(request), _known(indicator_id),
                                                                _period(request)))


@router.get("/radar", dependencies=READ)
async def radar(request: Request) -> Response:
    return json_response(await evaluation_of(request).radar(await _tenant(request), _period(request)))


@router.get("/maturity", dependencies=READ)
async def maturity(request: Request) -> Response:
    return json_response(await evaluation_of(request).maturity(await _tenant(request), _period(request)))


@router.post("/compute", dependencies=[Depends(require("evaluation.compute"))])
async def compute(request: Request) -> Response:
    body = await read_json_object(request, MAX_BODY)
    kind = body.get("period", "month")
    if kind not in PERIOD_KINDS:
        raise BadRequestData(f"period must be one of {', '.join(PERIOD_KINDS)}")
    moment = None
    if body.get("at") is not None:
        try:
            moment = clock.parse_iso(str(body["at"]))
        except ValueError as exc:
            raise BadRequestData("at must be an ISO 8601 date-time") from exc
    tenant = await _tenant(request)
    result = await evaluation_of(request).compute(tenant, kind, moment)
    await _audit(request, "evaluation.compute", f"{kind}:{result['period']['start']}")
    return json_response(result)


@router.get("/reports", dependencies=READ)
async def report_archive(request: Request) -> Response:
    """The reports generated on schedule when each week, month and quarter closed."""
    return json_response({"reports": reports.archived(await _tenant(request))})


@router.get("/reports/archive/{name}", dependencies=READ)
async def archived_report(name: str, request: Request) -> Response:
    found = reports.archived_file(await _tenant(request), name)
    if found is None:
        raise ResourceNotFound(f"no archived report {name!r}")
    media = "application/pdf" if name.endswith(".pdf") else XLSX
    await _audit(request, "evaluation.report", f"archive:{name}")
    return Response(found.read_bytes(), media_type=media,
                    headers={"Content-Disposition": f'attachment; filename="{name}"'})


@router.get("/reports/{name}", dependencies=READ)
async def report(name: str, request: Request) -> Response:
    kind, _, extension = name.partition(".")
    if kind not in ("week", "month", "quarter") or extension not in ("pdf", "xlsx"):
        raise ResourceNotFound("reports are week|month|quarter .pdf|.xlsx")
    body, media = await reports.assemble(evaluation_of(request), await _tenant(request), kind, extension)
    stamp = clock.now().astimezone(city_zone()).strftime("%Y%m%d")
    await _audit(request, "evaluation.report", name)
    return Response(body, media_type=media,
                    headers={"Content-Disposition": f'attachment; filename="cityos-{kind}-{stamp}.{extension}"'})


@router.get("/mystery-shopper/items", dependencies=READ)
async def mystery_shopper_items() -> Response:
    return json_response({"items": [{"id": i, "zh": zh, "en": en} for i, zh, en in mystery_items()]})


@router.post("/mystery-shopper", status_code=201, dependencies=[Depends(require("evaluation.assess"))])
async def mystery_shopper(request: Request) -> Response:
    body = await read_json_object(request, MAX_BODY)
    try:
        visit = AssessmentIn.model_validate({"site": body.get("site"), "visited_at": body.get("visitedAt"),
                                             "answers": body.get("answers"), "note": body.get("note")})
    except ValidationError as exc:
        raise BadRequestData("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())) from exc
    principal = await current_principal(request)
    try:
        result = await evaluation_of(request).add_assessment(
            await _tenant(request), principal.username or principal.id if principal else "", visit)
    except EvaluationError as exc:
        raise BadRequestData(str(exc)) from exc
    await _audit(request, "evaluation.assess", result["id"], site=visit.site, score=result["score"])
    return json_response(result, status=201)


async def _audit(request: Request, action: str, resource: str, **detail: Any) -> None:
    from cityos.security.api import client_ip
    from cityos.security.audit import AuditEvent

    principal = await current_principal(request)
    await request.app.state.security.service.record(AuditEvent.of(
        principal, action, resource, ip=client_ip(request), tenant=await _tenant(request), **detail))


async def start(app: FastAPI) -> Callable[[], Awaitable[None]]:
    """Build `app.state.evaluation` from the domains' indicator sources and start the schedule."""
    hub = app.state.hub

    async def publish(tenant: str, entities: list[dict[str, Any]]) -> None:
        if entities:
            await hub.service.batch_write(tenant, entities, hub.resolver.core, "upsert", set())

    service = EvaluationService(app.state.engine, getattr(app.state, "indicator_sources", {}), publish)
    app.state.evaluation = service
    return start_schedule(service)

