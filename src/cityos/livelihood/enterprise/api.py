"""HTTP API of the companies' side of 一网协同 (惠企). Thin: the services check access and do the work.

    GET  /api/livelihood/me/policy-match                every company policy: eligible, score, why (own)
    POST /api/livelihood/me/policy-match                {"whatIf": {field: value}}: the same with inputs
                                                        the company tries (not stored, nobody notified)
    GET  /api/livelihood/finance/products               banks' loan products (public listing)
    POST /api/livelihood/finance/products               publish one (livelihood.finance.product.manage)
    POST /api/livelihood/finance/products/{id}/withdraw
    GET  /api/livelihood/finance/me/needs               the company's needs with matching products (audited)
    POST /api/livelihood/finance/me/needs               {amount (万元), term (months), purpose}
    POST /api/livelihood/finance/me/needs/{id}/contact  {"product": id}: ask the bank to call (audited)
    GET  /api/livelihood/finance/desk                   bank / financial office: products, matched needs,
                                                        contacts of the departments reached (audited)
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from cityos.core import clock
from cityos.core.responses import json_response
from cityos.livelihood.enterprise.financing import FinancingService, product_view
from cityos.livelihood.enterprise.matching import match, parse_what_if
from cityos.security.api import current_principal, enforce, request_tenant, require
from cityos.security.audit import AuditEvent
from cityos.security.policy import Principal, Resource, Scope, scope_for
from cityos.security.service import Unauthorized

router = APIRouter(prefix="/api/livelihood", tags=["livelihood"])


def _livelihood(request: Request) -> Any:
    return request.app.state.livelihood


def financing_of(request: Request) -> FinancingService:
    found: FinancingService | None = getattr(request.app.state, "financing", None)
    if found is None:
        found = request.app.state.financing = FinancingService(_livelihood(request))
    return found


async def _body(request: Request) -> Any:
    from cityos.livelihood.api import json_body

    return await json_body(request)


async def _signed_in(request: Request, action: str) -> tuple[Principal, str]:
    principal = await current_principal(request)
    if principal is None:
        raise Unauthorized(f"{action} needs a bearer token")
    return principal, request_tenant(request, principal)


async def _policy_match(request: Request, what_if: dict[str, Any]) -> Response:
    principal, tenant = await _signed_in(request, "livelihood.services.read")
    await enforce(request, principal, "livelihood.services.read", Resource("livelihood", tenant, owner=principal.id))
    svc = _livelihood(request)
    subject = await svc.my_subject(tenant, principal)
    if subject.kind != "company":
        from cityos.core.errors import ResourceNotFound

        raise ResourceNotFound("no company profile is linked to this account")
    catalogue = await svc.catalogue(tenant)
    async with svc.engine.connect() as conn:
        facts = await svc.store.facts(conn, tenant, subject.id)
    from cityos.livelihood.proactive.service import local_day, policy_view

    by_id = {p.id: p for p in catalogue}
    items = [{**item, "policy": policy_view(by_id[item["policy"]])}
             for item in match(catalogue, facts, local_day(clock.now()), what_if)]
    await svc.audit.record(AuditEvent.of(principal, "livelihood.policy.match", f"subject:{subject.id}",
                                         tenant=tenant, whatIf=sorted(what_if)))
    return json_response({"company": subject.id, "whatIf": what_if, "items": items,
                          "eligible": sum(1 for i in items if i["eligible"])})


@router.get("/me/policy-match")
async def policy_match(request: Request) -> Response:
    return await _policy_match(request, {})


@router.post("/me/policy-match")
async def policy_match_what_if(request: Request) -> Response:
    return await _policy_match(request, parse_what_if(await _body(request)))


@router.get("/finance/products")
async def products(request: Request,
                   principal: Principal | None = Depends(require("livelihood.finance.read"))) -> Response:
    tenant = request_tenant(request, principal)
    return json_response({"items": [product_view(p) for p in await financing_of(request).products(tenant)]})


@router.post("/finance/products", status_code=201)
async def publish_product(request: Request,
                          principal: Principal | None = Depends(require("livelihood.finance.product.manage"))
                          ) -> Response:
    assert principal is not None
    tenant = request_tenant(request, principal)
    made = await financing_of(request).publish_product(principal, tenant, await _body(request))
    return json_response(made, status=201)


@router.post("/finance/products/{product_id}/withdraw")
async def withdraw_product(product_id: str, request: Request,
                           principal: Principal | None = Depends(require("livelihood.finance.product.manage"))
                           ) -> Response:
    assert principal is not None
    tenant = request_tenant(request, principal)
    return json_response(await financing_of(request).withdraw_product(principal, tenant, product_id[:32]))


@router.get("/finance/me/needs")
async def my_needs(request: Request) -> Response:
    principal, tenant = await _signed_in(request, "livelihood.finance.need")
    return json_response(await financing_of(request).my_needs(principal, tenant))


@router.post("/finance/me/needs", status_code=201)
async def post_need(request: Request) -> Response:
    principal, tenant = await _signed_in(request, "livelihood.finance.need")
    body = await _body(request)
    return json_response(await financing_of(request).post_need(principal, tenant, body), status=201)


@router.post("/finance/me/needs/{need_id}/contact", status_code=201)
async def request_contact(need_id: str, request: Request) -> Response:
    principal, tenant = await _signed_in(request, "livelihood.finance.need")
    body = await _body(request)
    made = await financing_of(request).request_contact(principal, tenant, need_id[:32], body)
    return json_response(made, status=201)


@router.get("/finance/desk")
async def desk(request: Request,
               principal: Principal | None = Depends(require("livelihood.finance.broker"))) -> Response:
    assert principal is not None
    tenant = request_tenant(request, principal)
    reach = principal.departments if scope_for(principal.role, "livelihood.finance.broker") is Scope.DEPARTMENT \
        else None
    return json_response(await financing_of(request).desk(principal, tenant, reach))
