"""HTTP API of services.licences (电子证照).

    GET  /api/services/licences/public-key       public: JWKS (+ PEMs) of every key that verifies licences
    GET  /api/services/licences/public-key.pem   public: the same keys as PEM
    POST /api/services/licences/verify           public: body = the signed document (or {"document": …},
                                                 or {"compact": "<the QR's JSON text>"}) →
                                                 200 {valid, reason, detail, licence: masked view | null}
    GET  /api/services/licences/verify/{id}      public (the QR link): the stored licence → same shape; 404 unknown
    GET  /api/services/licences/revocations      public: the tenant's revocation list, signed
    GET  /api/services/licences/wallet           the caller's licences (records with the signed documents)
    GET  /api/services/licences/{id}             the holder (or staff who may read the department's
                                                 applications) → the record
    GET  /api/services/licences/{id}/qr.svg      ?content=url|document → image/svg+xml
    POST /api/services/licences/{id}/revoke      {"reason"} licence.revoke in the issuing department (audited)

A failed verification is an answer, not an error: 200 with ``valid: false`` and a ``reason``
(malformed, unknown_key, bad_signature, unknown_licence, revoked, expired, not_yet_valid). A body
that is not JSON is 400.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.responses import Response

from cityos.core.db import write_lock_of
from cityos.core.errors import BadRequestData, ResourceNotFound
from cityos.core.responses import json_response, read_json_object
from cityos.security.api import client_ip, current_principal, enforce, request_tenant, require
from cityos.security.policy import Principal, Resource
from cityos.security.service import Unauthorized
from cityos.services.licences.keys import key_file_path, load_keys
from cityos.services.licences.service import LicenceService, public_view, qr_svg
from cityos.services.licences.verify import Verification, canonical_bytes

MAX_BODY = 64 * 1024
MAX_ID = 64

router = APIRouter(prefix="/api/services/licences", tags=["services: e-licences"])
routers: list[APIRouter] = [router]


def licences_of(request: Request) -> LicenceService:
    service: LicenceService = request.app.state.licences
    return service






def _verification(result: Verification, status: str | None = None) -> Response:
    view = public_view(result.licence, status) if result.licence is not None else None
    return json_response({"valid": result.valid, "reason": result.reason, "detail": result.detail, "licence": view},
                 headers={"Cache-Control": "no-store"})


def _licence_id(licence_id: str) -> str:
    if not licence_id or len(licence_id) > MAX_ID:
        raise ResourceNotFound(f"no licence {licence_id[:MAX_ID]!r}")
    return licence_id


@router.get("/public-key")
async def public_key(request: Request) -> Response:
    return json_response(licences_of(request).public_key_document(), headers={"Cache-Control": "max-age=300"})


@router.get("/public-key.pem")
async def public_key_pem(request: Request) -> Response:
    pems = licences_of(request).public_key_document()["pems"]
    return Response("".join(pems.values()), media_type="application/x-pem-file",
                    headers={"Cache-Control": "max-age=300"})


@router.post("/verify", dependencies=[Depends(require("licence.verify"))])
async def verify(request: Request) -> Response:
    body = await read_json_object(request, MAX_BODY)
    document: Any = body
    if "proof" not in body:
        if isinstance(body.get("document"), dict):
            document = body["document"]
        elif isinstance(body.get("compact"), str):
            try:
                document = orjson.loads(body["compact"])
            except orjson.JSONDecodeError as exc:
                raise BadRequestData("compact is not valid JSON") from exc
    result = await licences_of(request).verify_document(document)
    return _verification(result, "valid" if result.valid else None)


@router.get("/verify/{licence_id}", dependencies=[Depends(require("licence.verify"))])
async def verify_by_id(request: Request, licence_id: str) -> Response:
    result = await licences_of(request).verify_stored(_licence_id(licence_id))
    if result.reason == "unknown_licence":
        raise ResourceNotFound(f"no licence {licence_id!r}")
    return _verification(result, "valid" if result.valid else result.reason)


@router.get("/revocations")
async def revocations(request: Request) -> Response:
    tenant = request_tenant(request, await current_principal(request))
    return json_response(await licences_of(request).revocation_list(tenant), headers={"Cache-Control": "max-age=60"})


async def _caller(request: Request) -> tuple[Principal, str]:
    principal = await current_principal(request)
    if principal is None:
        raise Unauthorized("this needs a bearer token")
    return principal, request_tenant(request, principal)


@router.get("/wallet")
async def wallet(request: Request) -> Response:
    principal, tenant = await _caller(request)
    items = await licences_of(request).wallet(tenant, principal.id)
    return json_response({"total": len(items), "items": items}, headers={"Cache-Control": "no-store"})


async def _readable(request: Request, licence_id: str) -> dict[str, Any]:
    principal, tenant = await _caller(request)
    record = await licences_of(request).get(tenant, _licence_id(licence_id))
    await enforce(request, principal, "application.read",
                  Resource("licence", tenant, id=licence_id, department=record["issuerDepartment"],
                           owner=record["holder"]))
    return record


@router.get("/{licence_id}")
async def get_licence(request: Request, licence_id: str) -> Response:
    return json_response(await _readable(request, licence_id), headers={"Cache-Control": "no-store"})


@router.get("/{licence_id}/qr.svg")
async def licence_qr(request: Request, licence_id: str,
                     content: str = Query("url", pattern="^(url|document)$")) -> Response:
    record = await _readable(request, licence_id)
    data = (licences_of(request).verify_url(record["id"]) if content == "url"
            else canonical_bytes(record["document"]).decode())
    return Response(qr_svg(data), media_type="image/svg+xml", headers={"Cache-Control": "no-store"})


@router.post("/{licence_id}/revoke")
async def revoke(request: Request, licence_id: str,
                 principal: Principal | None = Depends(require("licence.revoke"))) -> Response:
    tenant = request_tenant(request, principal)
    body = await read_json_object(request, MAX_BODY)
    service = licences_of(request)
    record = await service.get(tenant, _licence_id(licence_id))
    await enforce(request, principal, "licence.revoke",
                  Resource("licence", tenant, id=licence_id, department=record["issuerDepartment"]))
    reason = body.get("reason")
    if not isinstance(reason, str) or not reason.strip():
        raise BadRequestData("reason must be a non-empty string")
    revoked = await service.revoke(tenant, licence_id, reason, principal, ip=client_ip(request))
    return json_response({k: v for k, v in revoked.items() if k != "document"})


async def start(app: FastAPI) -> Callable[[], Awaitable[None]]:
    """Build `app.state.licences` with the signing keys from their file; returns the shutdown function."""
    security = app.state.security
    keys = load_keys(key_file_path(security.settings))
    app.state.licences = LicenceService(app.state.engine, keys, security.service.keyring, app.state.bus,
                                        security.settings.issuer, security.service.record,
                                        write_lock_of(app))

    async def stop() -> None:
        return None

    return stop
