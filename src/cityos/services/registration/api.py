"""Citizens' and companies' self-registration and password reset (anonymous callers, rate-limited).

    POST /api/services/registration/phone-code      {"phone", "purpose": "register"|"reset"} → 202
    POST /api/services/registration                 {"kind": "citizen"|"company", "username", "password",
                                                     "name", "idNumber" | "creditCode", "phone", "code"} → 201
    POST /api/services/registration/password-reset  {"phone", "code", "newPassword"} → 200

The tenant is the city's (CITYOS_REGISTRATION_TENANT, default ""). Policy actions: account.register,
account.recover (anonymous may). Errors are ProblemDetails: 400 bad data or code, 409 an account
exists for the identity or phone, 429 too many requests (Retry-After).
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import Response

from cityos.core.db import write_lock_of
from cityos.core.responses import json_response, read_json_object
from cityos.security.api import client_ip, current_principal, enforce
from cityos.security.policy import Resource
from cityos.services.registration.service import Registration

router = APIRouter(prefix="/api/services/registration", tags=["registration"])
routers: list[APIRouter] = [router]


def registration_of(request: Request) -> Registration:
    service: Registration = request.app.state.registration
    return service


def city_tenant() -> str:
    return os.environ.get("CITYOS_REGISTRATION_TENANT", "")


async def _guard(request: Request, action: str, what: str) -> str:
    tenant = city_tenant()
    await enforce(request, await current_principal(request), action, Resource("account", tenant))
    await registration_of(request).limit(what, client_ip(request))
    return tenant


@router.post("/phone-code", status_code=202, openapi_extra={"requestBody": {"required": True, "content": {
    "application/json": {"schema": {"type": "object", "required": ["phone"], "properties": {
        "phone": {"type": "string", "example": "13800138000"},
        "purpose": {"type": "string", "enum": ["register", "reset"], "default": "register"}}}}}}})
async def phone_code(request: Request) -> Response:
    tenant = await _guard(request, "account.register", "code")
    body = await read_json_object(request, limit=16 * 1024)
    return json_response(await registration_of(request).send_code(tenant, body), status=202)


@router.post("", status_code=201, openapi_extra={"requestBody": {"required": True, "content": {
    "application/json": {"schema": {"type": "object", "required": ["username", "password", "name", "phone", "code"],
                                    "properties": {
                                        "kind": {"type": "string", "enum": ["citizen", "company"]},
                                        "username": {"type": "string"}, "password": {"type": "string"},
                                        "name": {"type": "string"},
                                        "idNumber": {"type": "string", "description": "GB 11643 resident ID"},
                                        "creditCode": {"type": "string", "description": "GB 32100 USCC"},
                                        "phone": {"type": "string"}, "code": {"type": "string"}}}}}}})
async def register(request: Request) -> Response:
    tenant = await _guard(request, "account.register", "register")
    body = await read_json_object(request, limit=16 * 1024)
    return json_response(await registration_of(request).register(tenant, body), status=201)


@router.post("/password-reset", openapi_extra={"requestBody": {"required": True, "content": {
    "application/json": {"schema": {"type": "object", "required": ["phone", "code", "newPassword"],
                                    "properties": {"phone": {"type": "string"}, "code": {"type": "string"},
                                                   "newPassword": {"type": "string"}}}}}}})
async def password_reset(request: Request) -> Response:
    tenant = await _guard(request, "account.recover", "reset")
    body = await read_json_object(request, limit=16 * 1024)
    return json_response(await registration_of(request).reset_password(tenant, body))


async def start(app: FastAPI) -> Callable[[], Awaitable[None]]:
    security = app.state.security
    app.state.registration = Registration(app.state.engine, security.service, security.accounts, app.state.notifier,
                                          write_lock=write_lock_of(app))

    async def stop() -> None:
        return None

    return stop
