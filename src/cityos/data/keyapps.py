"""Applications for API keys (有条件开放): an outside developer applies for conditionally open datasets with a
purpose and a rate limit; the data office approves (possibly at a lower rate) or rejects; the applicant
claims the key once.

Why a claim code rather than mailing the key: the applicant needs no account, and the platform never
stores or re-sends a key. The claim code is shown once at application time and only its hash is kept;
the key is made at the moment of the (single) claim, so the application row never holds a secret.

Datasets that are unknown or not open answer the same "no open dataset" (nothing about closed data
leaks to an anonymous caller).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import uuid
from typing import Any

from sqlalchemy import func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from cityos.core import clock
from cityos.core.db import write_transaction
from cityos.core.errors import BadRequestData, Conflict, ResourceNotFound
from cityos.data.models import OPEN_NONE, key_applications
from cityos.data.opendata import MAX_RATE, OpenData, RateLimited
from cityos.security.policy import Principal, Resource, authorize
from cityos.security.service import Forbidden

MAX_ASKED_RATE = 600  # calls a minute an applicant may ask for; the office may grant up to MAX_RATE
MAX_DATASETS = 20
MAX_PENDING_PER_ADDRESS = 20  # a flood of applications from one address waits for decisions first
CODE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,127}$")
CONTROL = re.compile(r"[\x00-\x1f\x7f]")
STATUSES = ("pending", "approved", "rejected", "issued")


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _text(body: dict[str, Any], name: str, low: int, high: int, multiline: bool = False) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not low <= len(value.strip()) <= high:
        raise BadRequestData(f"{name} is required ({low}-{high} characters)")
    if CONTROL.search(value.replace("\n", "") if multiline else value):
        raise BadRequestData(f"{name} has control characters")
    return value.strip()


def _rate(value: Any, high: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= high:
        raise BadRequestData(f"ratePerMinute must be an integer from 1 to {high}")
    return value


def _iso(value: Any) -> str | None:
    return clock.iso(clock.as_utc(value)) if value is not None else None


def shape(row: Any) -> dict[str, Any]:
    return {"id": row.id, "applicant": row.applicant, "contact": row.contact, "purpose": row.purpose,
            "datasets": row.datasets, "ratePerMinute": row.rate_per_minute, "status": row.status,
            "createdAt": _iso(row.created_at), "decidedBy": row.decided_by, "decidedAt": _iso(row.decided_at),
            "note": row.decision_note, "keyId": row.key_id}


class KeyApplications:
    def __init__(self, engine: AsyncEngine, open_data: OpenData) -> None:
        self.engine = engine
        self.open = open_data
        self.lock = open_data.catalogue.lock

    async def apply(self, tenant: str, body: dict[str, Any], ip: str) -> dict[str, Any]:
        applicant = _text(body, "applicant", 2, 256)
        contact = _text(body, "contact", 3, 256)
        purpose = _text(body, "purpose", 10, 2000, multiline=True)
        codes = body.get("datasets")
        if not isinstance(codes, list) or not 1 <= len(codes) <= MAX_DATASETS \
                or not all(isinstance(c, str) and CODE.match(c) for c in codes) or len(set(codes)) != len(codes):
            raise BadRequestData(f"datasets is a list of 1-{MAX_DATASETS} distinct dataset codes")
        rate = _rate(body.get("ratePerMinute", 60), MAX_ASKED_RATE)
        for code in codes:
            try:
                ds = await self.open.catalogue.get(tenant, code)
            except ResourceNotFound:
                ds = None
            if ds is None or ds["open_type"] == OPEN_NONE:
                raise ResourceNotFound(f"no open dataset {code!r}")
        async with self.engine.connect() as conn:
            pending = (await conn.execute(select(func.count()).select_from(key_applications).where(
                key_applications.c.tenant == tenant, key_applications.c.ip == ip[:64],
                key_applications.c.status == "pending"))).scalar_one()
        if pending >= MAX_PENDING_PER_ADDRESS:
            raise RateLimited(f"{pending} applications from this address await a decision; wait for them")
        claim = "cka_" + secrets.token_urlsafe(24)
        app_id = uuid.uuid4().hex
        async with write_transaction(self.engine, self.lock) as conn:
            await conn.execute(insert(key_applications).values(
                id=app_id, tenant=tenant, applicant=applicant, contact=contact, purpose=purpose, datasets=codes,
                rate_per_minute=rate, claim_hash=_hash(claim), status="pending", ip=ip[:64], created_at=clock.now()))
        return {**await self.get(tenant, app_id), "claim": claim}

    async def get(self, tenant: str, app_id: str) -> dict[str, Any]:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(key_applications).where(
                key_applications.c.tenant == tenant, key_applications.c.id == str(app_id)[:32]))).first()
        if row is None:
            raise ResourceNotFound(f"no key application {str(app_id)[:32]!r}")
        return shape(row)

    async def listing(self, tenant: str, principal: Principal | None, status: str | None) -> list[dict[str, Any]]:
        self._check(principal, tenant)
        if status is not None and status not in STATUSES:
            raise BadRequestData(f"status is one of {', '.join(STATUSES)}")
        stmt = select(key_applications).where(key_applications.c.tenant == tenant)
        if status is not None:
            stmt = stmt.where(key_applications.c.status == status)
        async with self.engine.connect() as conn:
            found = await conn.execute(stmt.order_by(key_applications.c.created_at.desc()).limit(500))
            return [shape(r) for r in found]

    async def decide(self, tenant: str, principal: Principal | None, app_id: str,
                     body: dict[str, Any]) -> dict[str, Any]:
        self._check(principal, tenant)
        item = await self.get(tenant, app_id)
        verdict, note = body.get("decision"), body.get("note")
        if verdict not in ("approve", "reject"):
            raise BadRequestData("decision is approve or reject")
        if note is not None and (not isinstance(note, str) or len(note) > 2000):
            raise BadRequestData("note is a string of at most 2000 characters")
        values: dict[str, Any] = {"decided_by": principal.label if principal else "system",
                                  "decided_at": clock.now(), "decision_note": note}
        if verdict == "approve":
            # The office may lower the asked rate, not raise it past what was asked (or the platform's cap).
            rate = _rate(body.get("ratePerMinute", item["ratePerMinute"]), min(item["ratePerMinute"], MAX_RATE))
            values |= {"status": "approved", "rate_per_minute": rate}
        else:
            values["status"] = "rejected"
        await self._move(tenant, item["id"], "pending", values)
        return await self.get(tenant, item["id"])

    async def claim(self, tenant: str, app_id: str, claim: Any) -> dict[str, Any]:
        """The application's state for its claim code; the key itself, once, when it is approved."""
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(key_applications).where(
                key_applications.c.tenant == tenant, key_applications.c.id == str(app_id)[:32]))).first()
        if row is None or not isinstance(claim, str) or len(claim) > 100 \
                or not hmac.compare_digest(row.claim_hash, _hash(claim)):
            raise ResourceNotFound("no key application with this id and claim code")
        item = shape(row)
        public = {k: item[k] for k in ("id", "status", "datasets", "ratePerMinute", "note", "decidedAt")}
        if row.status != "approved":
            return public
        await self._move(tenant, row.id, "approved", {"status": "issued"})
        try:
            made = await self.open.issue_key(tenant, row.applicant, row.purpose, list(row.datasets),
                                             row.rate_per_minute, f"application:{row.id}")
        except Exception:
            await self._move(tenant, row.id, "issued", {"status": "approved"})
            raise
        await self._move(tenant, row.id, "issued", {"key_id": made["id"]})
        return {**public, "status": "issued", "key": made["key"], "keyId": made["id"]}

    async def _move(self, tenant: str, app_id: str, expected: str, values: dict[str, Any]) -> None:
        async with write_transaction(self.engine, self.lock) as conn:
            done = await conn.execute(update(key_applications).where(
                key_applications.c.tenant == tenant, key_applications.c.id == app_id,
                key_applications.c.status == expected).values(**values))
        if done.rowcount != 1:
            raise Conflict(f"the application is no longer {expected}")

    @staticmethod
    def _check(principal: Principal | None, tenant: str) -> None:
        decision = authorize(principal, "data.key.manage", Resource("data", tenant))
        if not decision:
            raise Forbidden(f"data.key.manage: {decision.reason}")
