"""Financing matchmaking (融资对接): companies post needs, banks' products are listed, rules suggest
matches (amount range, term, GB/T 4754 industry section, tax credit grade), a company asks to be
contacted about a product. Every view of matches and every contact request is in the audit chain.

Who: a company account (role enterprise) posts and reads its own needs; staff of a bank's department
(officials, below the financial office's department) publish products; the financial office sees
needs matched to the products of the departments it reaches, and the contacts asked. The company's
credit grade is confidential (tax): the matching uses it, the bank sees only whether it is enough.
The company's facts are used only when shared for the ``enterprise-support`` purpose (consent).
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from cityos.core import clock
from cityos.core.clock import as_utc
from cityos.core.errors import BadRequestData, Conflict, ResourceNotFound
from cityos.livelihood.enterprise import models as fm
from cityos.livelihood.profiles.fields import CREDIT_GRADES, INDUSTRY_SECTIONS
from cityos.livelihood.profiles.service import Fact
from cityos.security.audit import AuditEvent
from cityos.security.policy import Principal, Resource
from cityos.security.service import require_allowed

PURPOSE = "enterprise-support"
MAX_AMOUNT = 1_000_000.0  # 万元 (100 亿元): beyond any single loan
MAX_TERM = 360  # months
LIST_LIMIT = 200


def _text(body: dict[str, Any], key: str, limit: int, required: bool = True) -> str | None:
    value = body.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip() or len(value) > limit:
        raise BadRequestData(f"{key}: a text of 1-{limit} characters")
    if any(ord(c) < 32 for c in value):
        raise BadRequestData(f"{key}: control characters are not allowed")
    return value.strip()


def _number(body: dict[str, Any], key: str, low: float, high: float, integer: bool = False) -> float:
    value = body.get(key)
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or not low <= value <= high:
        what = "an integer" if integer else "a number"
        raise BadRequestData(f"{key}: {what} from {low:g} to {high:g}")
    return value


def parse_product(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise BadRequestData("a product is a JSON object {bank, name, amountMin, amountMax, termMin, termMax, "
                             "industries, minCredit, rate, department}")
    amount_min = _number(body, "amountMin", 0.0, MAX_AMOUNT)
    amount_max = _number(body, "amountMax", 0.0, MAX_AMOUNT)
    term_min = int(_number(body, "termMin", 1, MAX_TERM, integer=True))
    term_max = int(_number(body, "termMax", 1, MAX_TERM, integer=True))
    if amount_max < amount_min or amount_max <= 0:
        raise BadRequestData("amountMax: positive and not below amountMin")
    if term_max < term_min:
        raise BadRequestData("termMax: not below termMin")
    industries = body.get("industries", [])
    if not isinstance(industries, list) or any(i not in INDUSTRY_SECTIONS for i in industries) \
            or len(set(industries)) != len(industries):
        raise BadRequestData(f"industries: distinct GB/T 4754 sections ({''.join(INDUSTRY_SECTIONS)}); [] for all")
    credit = body.get("minCredit", "D")
    if credit not in CREDIT_GRADES:
        raise BadRequestData(f"minCredit: one of {', '.join(CREDIT_GRADES)}")
    return {"bank": _text(body, "bank", 100), "name": _text(body, "name", 100), "amount_min": float(amount_min),
            "amount_max": float(amount_max), "term_min": term_min, "term_max": term_max,
            "industries": sorted(industries), "min_credit": credit, "rate": _text(body, "rate", 100, False),
            "department": _text(body, "department", 64, False)}


def parse_need(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise BadRequestData("a need is a JSON object {amount (万元), term (months), purpose}")
    amount = _number(body, "amount", 0.0, MAX_AMOUNT)
    if amount <= 0:
        raise BadRequestData("amount: a positive number of 万元")
    term = int(_number(body, "term", 1, MAX_TERM, integer=True))
    purpose = _text(body, "purpose", 500)
    assert purpose is not None
    return {"amount": float(amount), "term": term, "purpose": purpose}


@dataclass(frozen=True)
class Company:
    id: str
    industry: str | None
    credit: str | None


def rules(product: Any, need: Any, company: Company) -> list[dict[str, Any]]:
    """The matching rules, each with whether it holds (unknown data never holds)."""
    credit_ok = company.credit is not None and \
        CREDIT_GRADES.index(company.credit) <= CREDIT_GRADES.index(product.min_credit)
    industry_ok = not product.industries or (company.industry is not None and company.industry in product.industries)
    return [
        {"rule": "amount", "held": product.amount_min <= need.amount <= product.amount_max,
         "need": need.amount, "range": [product.amount_min, product.amount_max]},
        {"rule": "term", "held": product.term_min <= need.term <= product.term_max,
         "need": need.term, "range": [product.term_min, product.term_max]},
        {"rule": "industry", "held": industry_ok, "company": company.industry, "accepted": list(product.industries)},
        # the grade itself is confidential (tax): only whether it reaches the product's minimum
        {"rule": "credit", "held": credit_ok, "minimum": product.min_credit, "known": company.credit is not None},
    ]


def product_view(row: Any) -> dict[str, Any]:
    return {"id": row.id, "bank": row.bank, "name": row.name, "department": row.department,
            "amountMin": row.amount_min, "amountMax": row.amount_max, "termMin": row.term_min,
            "termMax": row.term_max, "industries": list(row.industries), "minCredit": row.min_credit,
            "rate": row.rate, "status": row.status, "createdAt": as_utc(row.created_at).isoformat()}


def need_view(row: Any) -> dict[str, Any]:
    return {"id": row.id, "company": row.subject_id, "amount": row.amount, "term": row.term,
            "purpose": row.purpose, "status": row.status, "createdAt": as_utc(row.created_at).isoformat()}


def contact_view(row: Any) -> dict[str, Any]:
    return {"id": row.id, "need": row.need_id, "product": row.product_id, "company": row.subject_id,
            "department": row.department, "status": row.status, "createdAt": as_utc(row.created_at).isoformat()}


class FinancingService:
    """Over the livelihood service (`ProactiveService`): its engine, profile store, audit and write lock."""

    def __init__(self, livelihood: Any) -> None:
        self.lh = livelihood

    # ------------------------------------------------------------------ products (banks)

    async def publish_product(self, principal: Principal, tenant: str, body: Any) -> dict[str, Any]:
        doc = parse_product(body)
        department = doc.pop("department") or principal.department
        if department is None:
            raise BadRequestData("department: the bank's or financial office's department publishing the product")
        require_allowed(principal, "livelihood.finance.product.manage",
                        Resource("loan-product", tenant, department=department))
        row = {"id": uuid.uuid4().hex, "tenant": tenant, "department": department, **doc, "status": "active",
               "created_by": principal.username or principal.id, "created_at": clock.now()}
        try:
            async with self.lh.write() as conn:
                await conn.execute(fm.products.insert().values(**row))
                await self.lh.audit.append_in(conn, [AuditEvent.of(
                    principal, "livelihood.finance.product.manage", f"loan-product:{row['id']}", tenant=tenant,
                    bank=row["bank"], name=row["name"])])
        except IntegrityError as exc:
            raise Conflict(f"{row['bank']} already lists a product named {row['name']!r}") from exc
        return product_view(_Row(row))

    async def withdraw_product(self, principal: Principal, tenant: str, product_id: str) -> dict[str, Any]:
        row = await self._product(tenant, product_id)
        require_allowed(principal, "livelihood.finance.product.manage",
                        Resource("loan-product", tenant, id=row.id, department=row.department))
        async with self.lh.write() as conn:
            await conn.execute(fm.products.update().where(fm.products.c.id == row.id).values(status="withdrawn"))
            await self.lh.audit.append_in(conn, [AuditEvent.of(
                principal, "livelihood.finance.product.manage", f"loan-product:{row.id}", tenant=tenant,
                status="withdrawn")])
        return product_view(await self._product(tenant, product_id))

    async def products(self, tenant: str, active_only: bool = True) -> list[Any]:
        async with self.lh.engine.connect() as conn:
            query = select(fm.products).where(fm.products.c.tenant == tenant)
            if active_only:
                query = query.where(fm.products.c.status == "active")
            return list((await conn.execute(query.order_by(fm.products.c.bank, fm.products.c.name)
                                            .limit(LIST_LIMIT))).all())

    async def _product(self, tenant: str, product_id: str) -> Any:
        async with self.lh.engine.connect() as conn:
            row = (await conn.execute(select(fm.products).where(fm.products.c.tenant == tenant,
                                                                fm.products.c.id == product_id))).first()
        if row is None:
            raise ResourceNotFound(f"no loan product {product_id!r}")
        return row

    # ------------------------------------------------------------------ the company's side

    async def _my_company(self, tenant: str, principal: Principal) -> Any:
        require_allowed(principal, "livelihood.finance.need", Resource("financing", tenant, owner=principal.id))
        subject = await self.lh.my_subject(tenant, principal)
        if subject.kind != "company":
            raise ResourceNotFound("no company profile is linked to this account")
        return subject

    async def _company(self, tenant: str, subject_id: str) -> Company:
        async with self.lh.engine.connect() as conn:
            facts: dict[str, Fact] = await self.lh.store.facts(conn, tenant, subject_id)
        shared = {k: f.value for k, f in facts.items() if PURPOSE in f.purposes}
        return Company(subject_id, shared.get("industry"), shared.get("tax_credit"))

    async def post_need(self, principal: Principal, tenant: str, body: Any) -> dict[str, Any]:
        subject = await self._my_company(tenant, principal)
        return await self.insert_need(principal, tenant, subject.id, parse_need(body))

    async def insert_need(self, principal: Principal, tenant: str, subject_id: str,
                          doc: dict[str, Any]) -> dict[str, Any]:
        """Store a checked need of `subject_id` (the company's own post, or the demo's simulated companies)."""
        dedup = hashlib.sha256(f"{doc['amount']:g}|{doc['term']}|{doc['purpose']}".encode()).hexdigest()[:64]
        row = {"id": uuid.uuid4().hex, "tenant": tenant, "subject_id": subject_id, "user_id": principal.id, **doc,
               "dedup": dedup, "status": "open", "created_at": clock.now()}
        try:
            async with self.lh.write() as conn:
                await conn.execute(fm.needs.insert().values(**row))
                await self.lh.audit.append_in(conn, [AuditEvent.of(
                    principal, "livelihood.finance.need", f"financing-need:{row['id']}", tenant=tenant,
                    amount=doc["amount"], term=doc["term"])])
        except IntegrityError as exc:
            raise Conflict("the same need (amount, term, purpose) is already posted") from exc
        return need_view(_Row(row))

    async def my_needs(self, principal: Principal, tenant: str) -> dict[str, Any]:
        """The company's needs, each with every active product and the rules that hold (suggestions first)."""
        subject = await self._my_company(tenant, principal)
        company = await self._company(tenant, subject.id)
        async with self.lh.engine.connect() as conn:
            rows = (await conn.execute(select(fm.needs).where(fm.needs.c.tenant == tenant,
                                                              fm.needs.c.subject_id == subject.id)
                                       .order_by(fm.needs.c.created_at.desc()).limit(LIST_LIMIT))).all()
            asked = {(c.need_id, c.product_id) for c in (await conn.execute(select(fm.contacts).where(
                fm.contacts.c.tenant == tenant, fm.contacts.c.subject_id == subject.id))).all()}
        products = await self.products(tenant)
        items = []
        for need in rows:
            offers: list[dict[str, Any]] = []
            for product in products:
                checks = rules(product, need, company)
                offers.append({"product": product_view(product), "matched": all(c["held"] for c in checks),
                               "rules": checks, "contactRequested": (need.id, product.id) in asked})
            offers.sort(key=lambda o: (not o["matched"], -sum(c["held"] for c in o["rules"])))
            items.append({**need_view(need), "offers": offers,
                          "matches": sum(1 for o in offers if o["matched"])})
        await self.lh.audit.record(AuditEvent.of(principal, "livelihood.finance.match.view", f"company:{subject.id}",
                                                 tenant=tenant, needs=len(items)))
        return {"company": subject.id, "items": items}

    async def request_contact(self, principal: Principal, tenant: str, need_id: str, body: Any) -> dict[str, Any]:
        subject = await self._my_company(tenant, principal)
        product_id = body.get("product") if isinstance(body, dict) else None
        if not isinstance(product_id, str) or not 0 < len(product_id) <= 32:
            raise BadRequestData('the body is {"product": "<product id>"}')
        async with self.lh.engine.connect() as conn:
            need = (await conn.execute(select(fm.needs).where(
                fm.needs.c.tenant == tenant, fm.needs.c.id == need_id,
                fm.needs.c.subject_id == subject.id))).first()
        if need is None:
            raise ResourceNotFound(f"no financing need {need_id!r} of yours")
        if need.status != "open":
            raise Conflict("the need is closed")
        product = await self._product(tenant, product_id)
        if product.status != "active":
            raise Conflict("the product is withdrawn")
        checks = rules(product, need, await self._company(tenant, subject.id))
        if not all(c["held"] for c in checks):
            failed = ", ".join(c["rule"] for c in checks if not c["held"])
            raise Conflict(f"the product does not match this need ({failed})")
        row = {"id": uuid.uuid4().hex, "tenant": tenant, "need_id": need.id, "product_id": product.id,
               "department": product.department, "subject_id": subject.id, "user_id": principal.id,
               "status": "requested", "created_at": clock.now()}
        try:
            async with self.lh.write() as conn:
                await conn.execute(fm.contacts.insert().values(**row))
                await self.lh.audit.append_in(conn, [AuditEvent.of(
                    principal, "livelihood.finance.contact", f"financing-contact:{row['id']}", tenant=tenant,
                    need=need.id, product=product.id, department=product.department)])
        except IntegrityError as exc:
            raise Conflict("contact about this product for this need was already requested") from exc
        return contact_view(_Row(row))

    # ------------------------------------------------------------------ the bank's and financial office's side

    async def desk(self, principal: Principal, tenant: str, reach: frozenset[str] | None) -> dict[str, Any]:
        """Products of the departments `reach`es (None: the tenant), open needs that match them, and the
        contacts asked about them. Companies appear by their registration id and industry only."""
        products = [p for p in await self.products(tenant, active_only=False)
                    if reach is None or p.department in reach]
        ids = [p.id for p in products]
        async with self.lh.engine.connect() as conn:
            needs = (await conn.execute(select(fm.needs).where(fm.needs.c.tenant == tenant,
                                                               fm.needs.c.status == "open")
                                        .order_by(fm.needs.c.created_at.desc()).limit(LIST_LIMIT))).all()
            contacts = (await conn.execute(select(fm.contacts).where(
                fm.contacts.c.tenant == tenant, fm.contacts.c.product_id.in_(ids))
                .order_by(fm.contacts.c.created_at.desc()).limit(LIST_LIMIT))).all() if ids else []
        active = [p for p in products if p.status == "active"]
        companies: dict[str, Company] = {}
        matched = []
        for need in needs:
            company = companies.get(need.subject_id) or await self._company(tenant, need.subject_id)
            companies[need.subject_id] = company
            fits = [p.id for p in active if all(c["held"] for c in rules(p, need, company))]
            if fits:
                matched.append({**need_view(need), "industry": company.industry, "products": fits})
        await self.lh.audit.record(AuditEvent.of(principal, "livelihood.finance.match.view", "financing-desk",
                                                 tenant=tenant, needs=len(matched), products=len(products)))
        return {"products": [product_view(p) for p in products], "needs": matched,
                "contacts": [contact_view(c) for c in contacts]}


class _Row:
    """A dict read like a result row (for views of rows just inserted)."""

    def __init__(self, values: dict[str, Any]) -> None:
        self.__dict__.update(values)
