"""Security HTTP API and the FastAPI dependencies other routers use.

    POST /auth/token                      OAuth 2.0 token endpoint (form-encoded, RFC 6749):
                                          grant_type=password (username, password, totp),
                                          client_credentials (HTTP Basic or client_id/client_secret),
                                          refresh_token (refresh_token; rotated on use),
                                          urn:ietf:params:oauth:grant-type:jwt-bearer (assertion = a token
                                          of the trusted OIDC issuer, RFC 7523)
    POST /auth/revoke                     RFC 7009 (token)
    POST /auth/totp/enroll|confirm        TOTP enrolment (username, password, enrolment_code | totp)
    GET  /auth/me                         the caller's principal
    GET|POST /auth/users, POST /auth/users/{username}/unlock|disable|enable|enrolment-code|totp/reset,
    PUT  /auth/users/{username}/role      {"role", "department"?}
    GET|POST /auth/clients, POST /auth/clients/{client_id}/disable
    POST /auth/approvals, GET /auth/approvals[/{id}], POST /auth/approvals/{id}/approve|refuse|execute
    GET  /audit, /audit/export (ndjson|csv), /audit/verify     auditors; values masked
    GET  /.well-known/jwks.json, /.well-known/openid-configuration
"""

from __future__ import annotations

import base64
import csv
import io
import ipaddress
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import parse_qs

import orjson
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import Response, StreamingResponse

from cityos.core import clock
from cityos.core.errors import BadRequestData, ResourceNotFound, TooLarge, UnsupportedMediaType
from cityos.core.responses import json_response, read_json_object
from cityos.security.accounts import AccountService
from cityos.security.approvals import ApprovalService
from cityos.security.audit import OUTCOMES, AuditEvent, AuditLog, AuditQuery, ts_text
from cityos.security.audit_anchor import Checkpointer, CheckpointStore, checkpoint_store, verify_anchored
from cityos.security.audit_intents import AuditIntents
from cityos.security.crypto import load_keyring
from cityos.security.errors import Forbidden, Unauthorized
from cityos.security.logins import OAuthError
from cityos.security.policy import Principal, Resource, authorize, effective_tenant
from cityos.security.service import SecurityService
from cityos.security.settings import SecuritySettings
from cityos.security.tokens import InvalidToken, OidcTrust, TokenIssuer, load_signing_keys

_TENANT = re.compile(r"^[A-Za-z0-9_\-.]{1,64}$")
MAX_FORM_BYTES = 16 * 1024
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
DEVICE_COOKIE = "cityos_device"


@dataclass
class SecurityState:
    settings: SecuritySettings
    service: SecurityService
    approvals: ApprovalService
    audit: AuditLog
    checkpoints: CheckpointStore | None = None  # signed checkpoints of the audit chain (audit_anchor)
    intents: AuditIntents | None = None  # audit records announced in the writes' transactions

    @property
    def accounts(self) -> AccountService:
        return self.approvals.accounts


async def start_security(app: FastAPI, settings: SecuritySettings | None = None,
                         write_lock: Any = None) -> Callable[[], Awaitable[None]]:
    """Build the security services on `app.state.engine`; returns the shutdown function."""
    settings = settings or SecuritySettings()
    engine = app.state.engine
    audit = AuditLog(engine, write_lock=write_lock)
    oidc = None
    if settings.oidc_issuer:
        oidc = OidcTrust(settings.oidc_issuer, settings.oidc_audience or settings.audience,
                         outbound=getattr(app.state, "outbound", None))
    service = SecurityService(engine, settings, TokenIssuer(settings, load_signing_keys(settings)),
                              load_keyring(settings), audit, oidc, write_lock)
    await service.startup()
    await audit.start()
    checkpoints = checkpoint_store(settings)
    checkpointer = Checkpointer(engine, checkpoints)
    checkpointer.start()
    intents = AuditIntents(engine, audit, write_lock)
    intents.start()
    app.state.security = SecurityState(settings, service, ApprovalService(service), audit, checkpoints, intents)

    async def stop() -> None:
        await intents.stop()
        await audit.stop()
        await checkpointer.stop()  # after the writer's last commit, so that the checkpoint covers it
        service.close()

    return stop


def security_of(request: Request) -> SecurityState:
    state: SecurityState = request.app.state.security
    return state


def parse_networks(spec: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """`CITYOS_TRUSTED_PROXIES`: comma-separated addresses or CIDRs; a bad entry stops the start."""
    nets = []
    for part in spec.split(","):
        if part.strip():
            try:
                nets.append(ipaddress.ip_network(part.strip(), strict=False))
            except ValueError as exc:
                raise RuntimeError(f"CITYOS_TRUSTED_PROXIES: {part.strip()!r} is not an address or CIDR") from exc
    return tuple(nets)


_NETS: dict[str, tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]] = {}


def _trusted(address: str, spec: str) -> bool:
    nets = _NETS.get(spec)
    if nets is None:
        nets = _NETS[spec] = parse_networks(spec)
    try:
        ip = ipaddress.ip_address(address.strip().strip("[]"))
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in net for net in nets)


def client_ip(request: Request) -> str:
    """The caller's address. `X-Forwarded-For` is believed only when the peer is a trusted proxy
    (`CITYOS_TRUSTED_PROXIES`); then the right-most address that is not a trusted proxy is the
    client (addresses further left were written by the client and prove nothing)."""
    peer = (request.client.host if request.client else "") or "unknown"
    state = getattr(request.app.state, "security", None)
    spec = state.settings.trusted_proxies if state is not None else ""
    if not spec or not _trusted(peer, spec):
        return peer
    hops = [h.strip() for value in request.headers.getlist("X-Forwarded-For") for h in value.split(",")]
    for hop in reversed([h for h in hops if h]):
        if not _trusted(hop, spec):
            try:
                return str(ipaddress.ip_address(hop.strip("[]")))
            except ValueError:
                return peer  # garbage in the header: fall back to the proxy's own address
    return peer


# ---------------------------------------------------------------------------------- dependencies


async def current_principal(request: Request) -> Principal | None:
    """The caller: None when no Authorization header (anonymous); 401 on a bad or revoked token."""
    cached = getattr(request.state, "principal", ...)
    if cached is not ...:
        return cached
    header = request.headers.get("Authorization")
    principal: Principal | None = None
    if header:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("the Authorization header must be 'Bearer <token>'")
        try:
            principal = await security_of(request).service.authenticate(token.strip())
        except InvalidToken as exc:
            await security_of(request).service.record(AuditEvent(
                "auth.token", request.url.path[:256], "denied", ip=client_ip(request),
                detail={"reason": exc.detail, "method": request.method}))
            raise
    request.state.principal = principal
    return principal


def header_tenant(request: Request) -> str | None:
    raw = request.headers.get("NGSILD-Tenant")
    if raw is None or raw == "":
        return None
    if not _TENANT.match(raw):
        raise BadRequestData("NGSILD-Tenant must be 1-64 letters, digits, '-', '_' or '.'")
    return raw


def request_tenant(request: Request, principal: Principal | None) -> str:
    """The tenant of the request. A header naming another tenant than the token's is refused (403)."""
    try:
        return effective_tenant(principal, header_tenant(request))
    except PermissionError as exc:
        raise Forbidden(str(exc)) from exc


async def enforce(request: Request, principal: Principal | None, action: str, resource: Resource) -> None:
    """`authorize` + audit of a refusal + 401/403. Service code calls this with the real resource."""
    decision = authorize(principal, action, resource)
    if decision:
        return
    await security_of(request).service.record(AuditEvent.of(
        principal, action, f"{resource.kind}:{resource.id or ''}", "denied", ip=client_ip(request),
        tenant=resource.tenant, reason=decision.reason, path=request.url.path))
    if principal is None:
        raise Unauthorized(f"{action} needs a bearer token")
    raise Forbidden(f"{action}: {decision.reason}")


def require(action: str) -> Callable[[Request], Awaitable[Principal | None]]:
    """A dependency: the caller may perform `action` in the request's tenant (coarse gate).

    Department-scoped actions are checked again in the service with the resource's department
    (`enforce(request, principal, action, Resource(...))`).
    """

    async def dependency(request: Request) -> Principal | None:
        if getattr(request.app.state, "hub_access_unenforced", False) and request.url.path.startswith("/ngsi-ld/"):
            return None  # `cityos.hub.access.disable_for_benchmark`: the security-off side of a benchmark
        principal = await current_principal(request)
        try:
            tenant = request_tenant(request, principal)
        except Forbidden:
            await security_of(request).service.record(AuditEvent.of(
                principal, action, f"tenant:{request.headers.get('NGSILD-Tenant', '')[:64]}", "denied",
                ip=client_ip(request), reason="tenant header does not match the token"))
            raise
        # Coarse: "may the caller do this to anything here?" An own-scope action passes for the caller's
        # own resources; the service checks the real resource (department, owner) again.
        owner = principal.id if principal is not None else None
        await enforce(request, principal, action, Resource(kind=action.split(".")[0], tenant=tenant, owner=owner))
        return principal

    return dependency


# ---------------------------------------------------------------------------------- helpers




def _no_store(payload: Any) -> Response:
    return json_response(payload, headers={"Cache-Control": "no-store", "Pragma": "no-cache"})


async def _form(request: Request) -> dict[str, str]:
    media = request.headers.get("Content-Type", "").split(";")[0].strip().lower()
    if media != "application/x-www-form-urlencoded":
        raise UnsupportedMediaType("the token endpoint takes application/x-www-form-urlencoded (RFC 6749)")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise TooLarge(f"the form is larger than {MAX_FORM_BYTES} bytes")
    try:
        parsed = parse_qs(body.decode(), keep_blank_values=True, strict_parsing=False, max_num_fields=32)
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadRequestData("malformed form body") from exc
    form: dict[str, str] = {}
    for key, values in parsed.items():
        if len(values) != 1:
            raise OAuthError("invalid_request", f"parameter {key!r} is repeated")
        form[key] = values[0]
    return form


def _need(form: dict[str, str], *names: str) -> list[str]:
    missing = [n for n in names if not form.get(n)]
    if missing:
        raise OAuthError("invalid_request", f"missing {', '.join(missing)}")
    return [form[n] for n in names]




def _str(doc: dict[str, Any], key: str, required: bool = True, limit: int = 256) -> str | None:
    value = doc.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value or len(value) > limit:
        raise BadRequestData(f"{key} must be a non-empty string of at most {limit} characters")
    return value


def _body(media: str, required: list[str], fields: dict[str, str]) -> dict[str, Any]:
    """`openapi_extra` describing a request body these routes read by hand (form fields or JSON members)."""
    properties = {name: {"type": "boolean" if text.startswith("bool:") else "string",
                         "description": text.removeprefix("bool:")} for name, text in fields.items()}
    return {"requestBody": {"required": True, "content": {media: {"schema": {
        "type": "object", "required": required, "properties": properties}}}}}


FORM = "application/x-www-form-urlencoded"
TOKEN_BODY = _body(FORM, ["grant_type"], {
    "grant_type": f"password | client_credentials | refresh_token | {JWT_BEARER}",
    "username": "password grant", "password": "password grant",
    "totp": "password / jwt-bearer grant: TOTP code (staff)",
    "device_token": "password grant: this browser's known-device token (optional)",
    "client_id": "client_credentials (or HTTP Basic)", "client_secret": "client_credentials (or HTTP Basic)",
    "refresh_token": "refresh_token grant (rotated on use)",
    "assertion": "jwt-bearer grant: a token of the trusted issuer"})
REVOKE_BODY = _body(FORM, ["token"], {"token": "a refresh token (its session ends) or an access token"})
ENROLL_BODY = _body(FORM, ["username", "password"], {
    "username": "the account", "password": "its password (the first one when it has none yet)",
    "enrolment_code": "the one-time code an administrator issued (staff)"})
CONFIRM_BODY = _body(FORM, ["username", "password", "totp"], {
    "username": "the account", "password": "its password", "totp": "a code from the authenticator app"})
USER_BODY = _body("application/json", ["username", "password", "role"], {
    "username": "1-128 letters, digits or ._-@", "password": "checked for strength",
    "role": "citizen | enterprise | official | operator | dept_admin | auditor | sys_admin",
    "department": "department id (officials)", "display_name": "shown name", "phone": "field-encrypted",
    "id_number": "field-encrypted", "totp": "bool:enrol TOTP now (the answer has otpauth_uri)"})
CLIENT_BODY = _body("application/json", ["client_id", "role"], {
    "client_id": "1-128 letters, digits or ._-", "role": "a non-administrator role, e.g. operator",
    "department": "department id (optional)"})

async def _rate_limited(request: Request) -> None:
    state = security_of(request)
    await state.service.rate_limit(f"{request.url.path}:{client_ip(request)}", state.settings.auth_rate_per_minute)


# ---------------------------------------------------------------------------------- router

router = APIRouter(tags=["security"])


@router.get("/.well-known/jwks.json")
async def jwks(request: Request) -> Response:
    return json_response(security_of(request).service.issuer.jwks(), headers={"Cache-Control": "max-age=300"})


@router.get("/.well-known/openid-configuration")
async def openid_configuration(request: Request) -> Response:
    base = security_of(request).settings.issuer
    return json_response({
        "issuer": base, "token_endpoint": f"{base}/auth/token", "jwks_uri": f"{base}/.well-known/jwks.json",
        "revocation_endpoint": f"{base}/auth/revoke", "userinfo_endpoint": f"{base}/auth/me",
        "grant_types_supported": ["password", "client_credentials", "refresh_token", JWT_BEARER],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        "id_token_signing_alg_values_supported": ["EdDSA"], "response_types_supported": ["token"],
        "subject_types_supported": ["public"], "scopes_supported": ["openid"],
        "claims_supported": ["sub", "usr", "role", "tnt", "dep", "deps", "dis", "sid", "mfa"]})


@router.post("/auth/token", dependencies=[Depends(_rate_limited)], openapi_extra=TOKEN_BODY)
async def token(request: Request) -> Response:
    service = security_of(request).service
    form = await _form(request)
    ip = client_ip(request)
    grant = form.get("grant_type", "")
    if grant == "password":
        username, password = _need(form, "username", "password")
        device = form.get("device_token") or request.cookies.get(DEVICE_COOKIE)
        tokens = await service.password_grant(username, password, form.get("totp"), ip, device=device)
        response = _no_store(tokens)
        if tokens.get("device_token"):
            # OWASP device cookie: this browser passes lockouts that strangers' failures cause.
            response.set_cookie(DEVICE_COOKIE, tokens["device_token"], max_age=service.settings.device_token_seconds,
                                path="/auth/token", secure=service.settings.issuer.startswith("https://"),
                                httponly=True, samesite="strict")
        return response
    if grant == "client_credentials":
        client_id, secret = form.get("client_id"), form.get("client_secret")
        auth = request.headers.get("Authorization", "")
        if auth.lower().startswith("basic "):
            try:
                client_id, _, secret = base64.b64decode(auth[6:], validate=True).decode().partition(":")
            except (ValueError, UnicodeDecodeError) as exc:
                raise OAuthError("invalid_client", "malformed Basic credentials", 401) from exc
        if not client_id or not secret:
            raise OAuthError("invalid_client", "client authentication needed", 401,
                             headers={"WWW-Authenticate": 'Basic realm="cityos"'})
        return _no_store(await service.client_credentials_grant(client_id, secret, ip))
    if grant == "refresh_token":
        (refresh,) = _need(form, "refresh_token")
        return _no_store(await service.refresh_grant(refresh, ip))
    if grant == JWT_BEARER:
        (assertion,) = _need(form, "assertion")
        return _no_store(await service.jwt_bearer_grant(assertion, form.get("totp"), ip))
    raise OAuthError("unsupported_grant_type", "grant_type must be password, client_credentials, refresh_token "
                                               f"or {JWT_BEARER}")


@router.post("/auth/revoke", dependencies=[Depends(_rate_limited)], openapi_extra=REVOKE_BODY)
async def revoke(request: Request) -> Response:
    form = await _form(request)
    (value,) = _need(form, "token")
    await security_of(request).service.revoke(value, client_ip(request), await current_principal(request))
    return Response(status_code=200)


@router.post("/auth/totp/enroll", dependencies=[Depends(_rate_limited)], openapi_extra=ENROLL_BODY)
async def totp_enroll(request: Request) -> Response:
    form = await _form(request)
    username, password = _need(form, "username", "password")
    new = await security_of(request).accounts.totp_enroll(username, password, client_ip(request),
                                                           form.get("enrolment_code"))
    return _no_store({"secret": new.totp_secret, "otpauth_uri": new.totp_uri(),
                      "next": "POST /auth/totp/confirm with username, password and totp"})


@router.post("/auth/totp/confirm", dependencies=[Depends(_rate_limited)], openapi_extra=CONFIRM_BODY)
async def totp_confirm(request: Request) -> Response:
    form = await _form(request)
    username, password, code = _need(form, "username", "password", "totp")
    await security_of(request).accounts.totp_confirm(username, password, code, client_ip(request))
    return json_response({"totp_enabled": True})


@router.get("/auth/me")
async def me(principal: Principal | None = Depends(current_principal)) -> Response:
    if principal is None:
        raise Unauthorized()
    out = asdict(principal)
    out["departments"], out["districts"] = sorted(principal.departments), sorted(principal.districts)
    return json_response(out)


@router.get("/auth/users")
async def list_users(request: Request, principal: Principal | None = Depends(require("user.read"))) -> Response:
    assert principal is not None
    tenant = None if principal.role == "sys_admin" else principal.tenant
    rows = await security_of(request).service.list_users(tenant)
    if principal.role == "dept_admin":
        rows = [r for r in rows if r["department"] in principal.departments]
    return json_response(rows)


@router.post("/auth/users", status_code=201, openapi_extra=USER_BODY)
async def create_user(request: Request, principal: Principal | None = Depends(require("user.manage"))) -> Response:
    assert principal is not None
    doc = await read_json_object(request)
    department = _str(doc, "department", required=False, limit=128)
    tenant = request_tenant(request, principal)
    await enforce(request, principal, "user.manage", Resource("user", tenant, department=department))
    new = await security_of(request).service.create_user(
        _str(doc, "username", limit=128) or "", _str(doc, "password", limit=1024), _str(doc, "role", limit=32) or "",
        tenant=tenant, department=department, display_name=_str(doc, "display_name", required=False),
        phone=_str(doc, "phone", required=False, limit=32), id_number=_str(doc, "id_number", required=False, limit=32),
        with_totp=bool(doc.get("totp")), by=principal)
    return json_response({"id": new.id, "username": new.username, "otpauth_uri": new.totp_uri()}, 201)


async def _target(request: Request, principal: Principal | None, username: str) -> dict[str, Any]:
    """The user `username` if in the caller's tenant (a sys_admin reaches every tenant); 404 otherwise."""
    assert principal is not None
    user = await security_of(request).service.get_user(username[:128])
    if principal.role != "sys_admin" and user["tenant"] != principal.tenant:
        raise ResourceNotFound(f"no user {username!r}")
    return user


@router.post("/auth/users/{username}/unlock")
async def unlock_user(username: str, request: Request,
                      principal: Principal | None = Depends(require("user.manage"))) -> Response:
    await _target(request, principal, username)
    await security_of(request).accounts.unlock(username, by=principal)
    return Response(status_code=204)


@router.post("/auth/users/{username}/disable")
async def disable_user(username: str, request: Request,
                       principal: Principal | None = Depends(require("user.disable"))) -> Response:
    await _target(request, principal, username)
    doc = await read_json_object(request) if request.headers.get("Content-Length", "0") != "0" else {}
    reason = _str(doc, "reason", required=False, limit=500) or ""
    return json_response(await security_of(request).accounts.disable(username, by=principal, reason=reason))


@router.post("/auth/users/{username}/enable")
async def enable_user(username: str, request: Request,
                      principal: Principal | None = Depends(require("user.disable"))) -> Response:
    await _target(request, principal, username)
    return json_response(await security_of(request).accounts.enable(username, by=principal))


@router.put("/auth/users/{username}/role")
async def set_user_role(username: str, request: Request,
                        principal: Principal | None = Depends(require("user.manage"))) -> Response:
    await _target(request, principal, username)
    doc = await read_json_object(request)
    role = _str(doc, "role", limit=32) or ""
    department = _str(doc, "department", required=False, limit=128)
    await security_of(request).accounts.set_role(username, role, by=principal, department=department)
    user = await security_of(request).service.get_user(username)
    return json_response({"username": username, "role": user["role"], "department": user["department"]})


@router.post("/auth/users/{username}/totp/reset")
async def reset_user_totp(username: str, request: Request,
                          principal: Principal | None = Depends(require("user.reset_totp"))) -> Response:
    await _target(request, principal, username)
    return _no_store(await security_of(request).accounts.reset_totp(username, by=principal))


@router.post("/auth/users/{username}/enrolment-code")
async def enrolment_code(username: str, request: Request,
                         principal: Principal | None = Depends(require("user.enrol"))) -> Response:
    await _target(request, principal, username)
    return _no_store(await security_of(request).accounts.issue_enrolment_code(username, by=principal))


@router.get("/auth/clients")
async def list_clients(request: Request, principal: Principal | None = Depends(require("client.read"))) -> Response:
    assert principal is not None
    return json_response(await security_of(request).accounts.list_clients(request_tenant(request, principal)))


@router.post("/auth/clients", status_code=201, openapi_extra=CLIENT_BODY)
async def create_client(request: Request, principal: Principal | None = Depends(require("client.manage"))) -> Response:
    doc = await read_json_object(request)
    tenant = request_tenant(request, principal)
    client_id = _str(doc, "client_id", limit=128) or ""
    secret = await security_of(request).accounts.create_client(
        client_id, _str(doc, "role", limit=32) or "", tenant=tenant,
        department=_str(doc, "department", required=False, limit=128), by=principal)
    return json_response({"client_id": client_id, "client_secret": secret}, 201,
                         headers={"Cache-Control": "no-store"})


@router.post("/auth/clients/{client_id}/disable")
async def disable_client(client_id: str, request: Request,
                         principal: Principal | None = Depends(require("client.manage"))) -> Response:
    assert principal is not None
    accounts = security_of(request).accounts
    client = await accounts.get_client(client_id)
    if principal.role != "sys_admin" and client["tenant"] != principal.tenant:
        raise ResourceNotFound(f"no client {client_id!r}")
    await accounts.disable_client(client_id, by=principal)
    return Response(status_code=204)


@router.post("/auth/approvals", status_code=201)
async def request_approval(request: Request, principal: Principal | None = Depends(current_principal)) -> Response:
    doc = await read_json_object(request)
    params = doc.get("params") or {}
    if not isinstance(params, dict):
        raise BadRequestData("params must be an object")
    item = await security_of(request).approvals.request(
        principal, _str(doc, "kind", limit=64) or "", params, _str(doc, "reason", limit=2000) or "",
        tenant=request_tenant(request, principal))
    return json_response(item, 201)


@router.get("/auth/approvals")
async def list_approvals(request: Request, status: str | None = None,
                         principal: Principal | None = Depends(require("approval.request"))) -> Response:
    if status is not None and status not in ("pending", "approved", "refused", "executing", "executed", "failed"):
        raise BadRequestData("unknown status")
    assert principal is not None
    items = await security_of(request).approvals.list(status)
    if principal.role != "sys_admin":
        items = [i for i in items if i["tenant"] == principal.tenant]
    return json_response(items)


@router.get("/auth/approvals/{approval_id}")
async def get_approval(approval_id: str, request: Request,
                       principal: Principal | None = Depends(require("approval.request"))) -> Response:
    item = await security_of(request).approvals.get(approval_id)
    assert principal is not None
    if principal.role != "sys_admin" and item["tenant"] != principal.tenant:
        raise Forbidden("another tenant's approval")
    return json_response(item)


@router.post("/auth/approvals/{approval_id}/{verb}")
async def decide_approval(approval_id: str, verb: str, request: Request,
                          principal: Principal | None = Depends(current_principal)) -> Response:
    approvals = security_of(request).approvals
    if verb == "approve":
        return json_response(await approvals.decide(principal, approval_id, True))
    if verb == "refuse":
        return json_response(await approvals.decide(principal, approval_id, False))
    if verb == "execute":
        return json_response(await approvals.execute(principal, approval_id))
    raise BadRequestData("verb must be approve, refuse or execute")


def _audit_query(request: Request, principal: Principal) -> AuditQuery:
    params = request.query_params
    known = {"actor", "action", "resource", "outcome", "tenant", "since", "until", "limit", "offset", "format"}
    unknown = set(params) - known
    if unknown:
        raise BadRequestData(f"unknown parameters: {', '.join(sorted(unknown))[:200]}")

    def text(name: str) -> str | None:
        value = params.get(name)
        if value is not None and (len(value) > 256 or "\x00" in value):
            raise BadRequestData(f"{name} is too long or has a NUL")
        return value

    def integer(name: str, default: int, low: int, high: int) -> int:
        raw = params.get(name)
        if raw is None:
            return default
        if not raw.isdecimal() or not low <= int(raw) <= high:
            raise BadRequestData(f"{name} must be an integer in {low}..{high}")
        return int(raw)

    def moment(name: str) -> str | None:
        raw = params.get(name)
        if raw is None:
            return None
        try:
            return ts_text(clock.parse_iso(raw))
        except ValueError as exc:
            raise BadRequestData(f"{name} must be an ISO 8601 date-time") from exc

    outcome = text("outcome")
    if outcome is not None and outcome not in OUTCOMES:
        raise BadRequestData(f"outcome must be one of {', '.join(OUTCOMES)}")
    tenant = text("tenant")
    if tenant is not None and tenant != principal.tenant:
        raise Forbidden("auditors search their own tenant")
    return AuditQuery(actor=text("actor"), action=text("action"), resource=text("resource"), outcome=outcome,
                      tenant=principal.tenant, since=moment("since"), until=moment("until"),
                      limit=integer("limit", 100, 1, 1000), offset=integer("offset", 0, 0, 10**9))


@router.get("/audit")
async def search_audit(request: Request, principal: Principal | None = Depends(require("audit.read"))) -> Response:
    assert principal is not None
    state = security_of(request)
    q = _audit_query(request, principal)
    rows = await state.audit.search(q, masked=True)
    await state.service.record(AuditEvent.of(principal, "audit.search", "audit", ip=client_ip(request),
                                             results=len(rows), query={k: v for k, v in asdict(q).items() if v}))
    return json_response(rows)


FORMULA_LEADS = frozenset("=+-@\t\r")


def csv_cell(value: Any) -> Any:
    """One CSV cell with spreadsheet formulas neutralised (CSV injection, OWASP): a text starting
    with = + - @ tab or CR gets a leading apostrophe. An empty text stays empty (a missing field,
    e.g. no IP, must not turn into a stray apostrophe)."""
    if isinstance(value, str) and value and value[0] in FORMULA_LEADS:
        return "'" + value
    return value


@router.get("/audit/export")
async def export_audit(request: Request, principal: Principal | None = Depends(require("audit.export"))) -> Response:
    assert principal is not None
    state = security_of(request)
    q = _audit_query(request, principal)
    fmt = request.query_params.get("format", "ndjson")
    if fmt not in ("ndjson", "csv"):
        raise BadRequestData("format must be ndjson or csv")
    await state.service.record(AuditEvent.of(principal, "audit.export", "audit", ip=client_ip(request), format=fmt))
    columns = ["seq", "ts", "actor", "actor_kind", "role", "tenant", "action", "resource", "outcome", "ip",
               "detail", "prev_hash", "hash"]

    async def body() -> AsyncIterator[bytes]:
        if fmt == "csv":
            yield (",".join(columns) + "\r\n").encode()
        async for row in state.audit.stream(q, masked=True):
            if fmt == "ndjson":
                yield orjson.dumps(row) + b"\n"
            else:
                buf = io.StringIO()
                values = [orjson.dumps(row[c]).decode() if c == "detail" else row[c] for c in columns]
                csv.writer(buf).writerow([csv_cell(v) for v in values])
                yield buf.getvalue().encode()

    media = "application/x-ndjson" if fmt == "ndjson" else "text/csv"
    return StreamingResponse(body(), media_type=media,
                             headers={"Content-Disposition": f'attachment; filename="audit.{fmt}"'})


@router.get("/audit/verify")
async def verify_audit(request: Request, principal: Principal | None = Depends(require("audit.read"))) -> Response:
    state = security_of(request)
    report = await (verify_anchored(state.audit, state.checkpoints) if state.checkpoints is not None
                    else state.audit.verify())
    return json_response(report.to_json())
