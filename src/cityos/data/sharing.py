"""Sharing between departments (共享): request → negative list → owner's decision (approve, narrow or
reject; sensitive fields also need the two-person approval `export_sensitive` of the security domain)
→ a grant of exactly the granted fields until it expires or is revoked. Every read under a grant is
audited with the grant id.

Rules:
- the negative list (负面清单) is checked first: a dataset or field on it is refused whoever asks;
- confidential fields are never shared (不予共享); a sensitive field must carry a justification
  (minimum necessary: what the requester needs it for);
- the usage pledge (承诺书) is a declaration the requester accepts; its text, the signer's identity,
  the time and the address are recorded with the request;
- a department does not request its own data.
"""

from __future__ import annotations

import hashlib
import uuid
from datetime import timedelta
from typing import Any

from sqlalchemy import delete, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from cityos.core import clock
from cityos.core.db import write_transaction
from cityos.core.errors import BadRequestData, Conflict, ResourceNotFound
from cityos.data.catalogue import Catalogue
from cityos.data.datastore import RowQuery, Source, search_rows
from cityos.data.models import negative_list, share_requests
from cityos.security.policy import Principal, Resource, authorize
from cityos.security.service import Forbidden

PLEDGE_TEXT = ("本部门承诺：共享数据仅用于申请所述用途，不向第三方提供，按期删除，接受审计。 "
               "We use the shared data only for the stated purpose, give it to no third party, delete it when the "
               "grant ends, and accept audit.")
MAX_DAYS = 365


class Refused(Forbidden):
    """A request the rules refuse (negative list, confidential field)."""


def _iso(value: Any) -> str | None:
    return clock.iso(clock.as_utc(value)) if value is not None else None


def shape(row: Any) -> dict[str, Any]:
    return {"id": row.id, "dataset": row.dataset, "owner": row.owner, "requester": row.requester_name,
            "requesterDepartment": row.requester_department, "purpose": row.purpose, "fields": row.fields,
            "justification": row.justification, "days": row.days, "pledge": row.pledge, "status": row.status,
            "grantedFields": row.granted_fields, "approvalId": row.approval_id, "decidedBy": row.decided_by,
            "decisionNote": row.decision_note, "createdAt": _iso(row.created_at), "decidedAt": _iso(row.decided_at),
            "expiresAt": _iso(row.expires_at), "revokedAt": _iso(row.revoked_at), "reads": row.reads}


class Sharing:
    def __init__(self, engine: AsyncEngine, catalogue: Catalogue, approvals: Any) -> None:
        self.engine = engine
        self.catalogue = catalogue
        self.approvals = approvals  # security's ApprovalService

    def _check(self, principal: Principal, action: str, tenant: str, department: str | None) -> None:
        decision = authorize(principal, action, Resource("share", tenant, department=department))
        if not decision:
            raise Forbidden(f"{action}: {decision.reason}")

    # ------------------------------------------------------------------ negative list

    async def add_negative(self, tenant: str, principal: Principal, dataset: str, field: str | None,
                           reason: str) -> dict[str, Any]:
        self._check(principal, "data.negative.manage", tenant, None)
        if dataset != "*":
            await self.catalogue.get(tenant, dataset)
        elif not field:
            raise BadRequestData("a '*' entry names a field (that field on every dataset)")
        if len(reason.strip()) < 2 or len(reason) > 2000:
            raise BadRequestData("reason is required (2-2000 characters)")
        async with write_transaction(self.engine, self.catalogue.lock) as conn:
            made = await conn.execute(insert(negative_list).values(
                tenant=tenant, dataset=dataset, field=field or None, reason=reason.strip(),
                created_by=principal.label, created_at=clock.now()))
            new_id = made.inserted_primary_key[0] if made.inserted_primary_key else None
        return {"id": new_id, "dataset": dataset, "field": field, "reason": reason.strip()}

    async def remove_negative(self, tenant: str, principal: Principal, entry_id: str) -> dict[str, Any]:
        """Take an entry off the negative list (the data office); requests refused by it stay refused."""
        self._check(principal, "data.negative.manage", tenant, None)
        if not (entry_id.isascii() and entry_id.isdecimal()) or len(entry_id) > 18:
            raise ResourceNotFound(f"no negative-list entry {entry_id[:20]!r}")
        async with write_transaction(self.engine, self.catalogue.lock) as conn:
            row = (await conn.execute(select(negative_list).where(
                negative_list.c.tenant == tenant, negative_list.c.id == int(entry_id)))).first()
            if row is None:
                raise ResourceNotFound(f"no negative-list entry {entry_id!r}")
            await conn.execute(delete(negative_list).where(negative_list.c.id == row.id))
        return {"id": row.id, "dataset": row.dataset, "field": row.field, "reason": row.reason}

    async def negatives(self, tenant: str) -> list[dict[str, Any]]:
        async with self.engine.connect() as conn:
            found = await conn.execute(select(negative_list).where(negative_list.c.tenant == tenant)
                                       .order_by(negative_list.c.id))
            return [{"id": r.id, "dataset": r.dataset, "field": r.field, "reason": r.reason,
                     "createdBy": r.created_by, "createdAt": _iso(r.created_at)} for r in found]

    async def _negative_hits(self, tenant: str, dataset: str, fields: list[str]) -> list[str]:
        async with self.engine.connect() as conn:
            found = (await conn.execute(select(negative_list).where(
                negative_list.c.tenant == tenant,
                or_(negative_list.c.dataset == dataset, negative_list.c.dataset == "*")))).all()
        hits = []
        for row in found:
            if row.field is None and row.dataset == dataset:
                hits.append(f"dataset {dataset} ({row.reason})")
            elif row.field in fields:
                hits.append(f"field {row.field} ({row.reason})")
        return hits

    # ------------------------------------------------------------------ requests

    async def request(self, tenant: str, principal: Principal, body: dict[str, Any], ip: str) -> dict[str, Any]:
        department = principal.department
        self._check(principal, "data.share.request", tenant, department)
        if not department:
            raise BadRequestData("a sharing request is made by a department: the caller has none")
        code = body.get("dataset")
        fields = body.get("fields")
        purpose = body.get("purpose")
        days = body.get("days")
        justification = body.get("justification") or {}
        pledge = body.get("pledge")
        if not isinstance(code, str) or not code:
            raise BadRequestData("dataset is required")
        if not isinstance(fields, list) or not fields or not all(isinstance(f, str) for f in fields) \
                or len(set(fields)) != len(fields):
            raise BadRequestData("fields must be a non-empty list of distinct field ids")
        # The negative list first, before anything about the dataset is told.
        hits = await self._negative_hits(tenant, code, fields)
        if hits:
            raise Refused(f"on the negative list (负面清单): {'; '.join(hits)}")
        ds = await self.catalogue.get(tenant, code)
        if ds["provider"] == department:
            raise BadRequestData("a department does not request its own dataset")
        classes = {f["id"]: f["class"] for f in ds["fields"]}
        unknown = [f for f in fields if f not in classes]
        if unknown:
            raise BadRequestData(f"fields not in the dataset: {', '.join(unknown[:5])}")
        confidential = [f for f in fields if classes[f] == "confidential"]
        if confidential:
            raise Refused(f"confidential fields are not shared (不予共享): {', '.join(confidential)}")
        if not isinstance(purpose, str) or not 4 <= len(purpose.strip()) <= 2000:
            raise BadRequestData("purpose is required (4-2000 characters)")
        if not isinstance(days, int) or isinstance(days, bool) or not 1 <= days <= MAX_DAYS:
            raise BadRequestData(f"days must be an integer from 1 to {MAX_DAYS}")
        if not isinstance(justification, dict) or not all(isinstance(v, str) for v in justification.values()):
            raise BadRequestData("justification maps a field to why it is needed")
        unjustified = [f for f in fields if classes[f] == "sensitive" and len(justification.get(f, "").strip()) < 4]
        if unjustified:
            raise BadRequestData("minimum necessary: each sensitive field needs a justification "
                                 f"({', '.join(unjustified)})")
        if not isinstance(pledge, dict) or pledge.get("accepted") is not True:
            raise BadRequestData("the usage pledge (承诺书) must be accepted: pledge.accepted = true")
        now = clock.now()
        signed = {"text": PLEDGE_TEXT, "sha256": hashlib.sha256(PLEDGE_TEXT.encode()).hexdigest(),
                  "signer": principal.username or principal.id, "signerId": principal.id,
                  "department": department, "signedAt": clock.iso(now), "ip": ip}
        request_id = uuid.uuid4().hex
        async with write_transaction(self.engine, self.catalogue.lock) as conn:
            await conn.execute(insert(share_requests).values(
                id=request_id, tenant=tenant, dataset=code, owner=ds["provider"], requester=principal.id,
                requester_name=principal.username or principal.id, requester_department=department,
                purpose=purpose.strip(), fields=fields, days=days, pledge=signed, status="pending",
                justification={k: v[:1000] for k, v in justification.items() if k in fields},
                created_at=now, reads=0))
        return await self.get(tenant, request_id)

    async def get(self, tenant: str, request_id: str) -> dict[str, Any]:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(share_requests).where(
                share_requests.c.tenant == tenant, share_requests.c.id == str(request_id)[:32]))).first()
        if row is None:
            raise ResourceNotFound(f"no sharing request {str(request_id)[:32]!r}")
        return shape(row)

    async def listing(self, tenant: str, principal: Principal) -> list[dict[str, Any]]:
        """Requests of the caller's departments, made or received."""
        async with self.engine.connect() as conn:
            stmt = select(share_requests).where(share_requests.c.tenant == tenant)
            if principal.role not in ("sys_admin", "operator", "auditor"):
                deps = list(principal.departments)
                stmt = stmt.where(or_(share_requests.c.owner.in_(deps),
                                      share_requests.c.requester_department.in_(deps)))
            found = await conn.execute(stmt.order_by(share_requests.c.created_at.desc()).limit(500))
            return [shape(r) for r in found]

    async def decide(self, tenant: str, principal: Principal, request_id: str, body: dict[str, Any]) -> dict[str, Any]:
        item = await self.get(tenant, request_id)
        self._check(principal, "data.share.decide", tenant, item["owner"])
        if item["status"] != "pending":
            raise Conflict(f"the request is {item['status']}")
        verdict = body.get("decision")
        note = body.get("note")
        if verdict not in ("approve", "reject"):
            raise BadRequestData("decision is approve or reject")
        if note is not None and (not isinstance(note, str) or len(note) > 2000):
            raise BadRequestData("note is a string of at most 2000 characters")
        now = clock.now()
        if verdict == "reject":
            await self._set(tenant, request_id, "pending", status="rejected", decided_by=principal.label,
                            decided_at=now, decision_note=note)
            return await self.get(tenant, request_id)
        granted = body.get("fields", item["fields"])
        if not isinstance(granted, list) or not granted or not set(granted) <= set(item["fields"]):
            raise BadRequestData("the granted fields narrow the requested ones (a non-empty subset)")
        ds = await self.catalogue.get(tenant, item["dataset"])
        classes = {f["id"]: f["class"] for f in ds["fields"]}
        # The negative list may have grown since the request.
        hits = await self._negative_hits(tenant, item["dataset"], granted)
        if hits:
            raise Refused(f"on the negative list (负面清单): {'; '.join(hits)}")
        sensitive = [f for f in granted if classes.get(f) == "sensitive"]
        if sensitive:
            # Two persons: the owner's approval is a request for `export_sensitive`; a second person of the
            # owning department decides it in the security domain, then the owner activates the grant.
            approval = await self.approvals.request(principal, "export_sensitive",
                                                    {"dataset": item["dataset"], "department": item["owner"]},
                                                    f"share:{request_id} fields {', '.join(sensitive)}", tenant)
            await self._set(tenant, request_id, "pending", status="awaiting_second", granted_fields=granted,
                            approval_id=approval["id"], decided_by=principal.label, decided_at=now,
                            decision_note=note)
            return await self.get(tenant, request_id)
        await self._set(tenant, request_id, "pending", status="approved", granted_fields=granted,
                        decided_by=principal.label, decided_at=now, decision_note=note,
                        expires_at=now + timedelta(days=item["days"]))
        return await self.get(tenant, request_id)

    async def activate(self, tenant: str, principal: Principal, request_id: str) -> dict[str, Any]:
        """After the second person approved: the owner executes the approval and the grant starts."""
        item = await self.get(tenant, request_id)
        self._check(principal, "data.share.decide", tenant, item["owner"])
        if item["status"] != "awaiting_second" or not item["approvalId"]:
            raise Conflict(f"the request is {item['status']}, not awaiting a second approval")
        executed = await self.approvals.execute(principal, item["approvalId"])
        grant = (executed.get("result") or {}).get("grant")
        if grant:
            await self.approvals.consume_grant(grant, principal)
        now = clock.now()
        await self._set(tenant, request_id, "awaiting_second", status="approved",
                        expires_at=now + timedelta(days=item["days"]))
        return await self.get(tenant, request_id)

    async def revoke(self, tenant: str, principal: Principal, request_id: str) -> dict[str, Any]:
        item = await self.get(tenant, request_id)
        self._check(principal, "data.share.decide", tenant, item["owner"])
        if item["status"] != "approved":
            raise Conflict(f"the request is {item['status']}")
        await self._set(tenant, request_id, "approved", status="revoked", revoked_at=clock.now())
        return await self.get(tenant, request_id)

    async def _set(self, tenant: str, request_id: str, expected: str, **values: Any) -> None:
        async with write_transaction(self.engine, self.catalogue.lock) as conn:
            done = await conn.execute(update(share_requests).where(
                share_requests.c.tenant == tenant, share_requests.c.id == request_id,
                share_requests.c.status == expected).values(**values))
        if done.rowcount != 1:
            raise Conflict("the request changed meanwhile")

    # ------------------------------------------------------------------ reading under a grant

    async def read(self, tenant: str, principal: Principal, request_id: str, query: RowQuery) -> dict[str, Any]:
        item = await self.get(tenant, request_id)
        self._check(principal, "data.share.read", tenant, item["requesterDepartment"])
        if item["status"] != "approved":
            raise Forbidden(f"the grant is {item['status']}")
        expires = clock.parse_iso(item["expiresAt"]) if item["expiresAt"] else None
        if expires is None or expires <= clock.now():
            raise Forbidden("the grant has expired")
        granted = list(item["grantedFields"] or [])
        outside = [f for f in (query.fields or []) + list(query.filters) + [s for s, _d in query.sort]
                   if f not in granted and f != "_id"]
        if outside:
            raise Forbidden(f"fields outside the grant: {', '.join(sorted(set(outside))[:5])}")
        ds = await self.catalogue.get(tenant, item["dataset"])
        version = await self.catalogue.version_as_of(tenant, ds["id"], None)
        types = {f["id"]: f["type"] for f in ds["fields"]}
        history = ds["source_kind"] == "readings"
        key_field = "entityId" if history else ("id" if ds["source_kind"] == "entities" else "_key")
        src = Source(tenant, ds["id"], 0 if history else int(version or 0), types, key_field,
                     "observedAt" if history else None, subkey_field="attribute" if history else None)
        found, total = await search_rows(self.engine, src, query)
        shown = set(query.fields or granted) & set(granted)
        records = [{k: v for k, v in r.items() if k in shown or k == "_id"} for r in found]
        async with write_transaction(self.engine, self.catalogue.lock) as conn:
            await conn.execute(update(share_requests).where(share_requests.c.id == request_id)
                               .values(reads=share_requests.c.reads + 1))
        return {"grant": request_id, "dataset": ds["id"], "fields": sorted(shown), "records": records,
                "total": total}

    async def rate(self, tenant: str) -> dict[str, Any]:
        """Sharing KPIs: approved grants per requesting department; datasets shared at least once."""
        async with self.engine.connect() as conn:
            found = (await conn.execute(select(share_requests.c.requester_department, share_requests.c.dataset,
                                               share_requests.c.status, share_requests.c.reads)
                                        .where(share_requests.c.tenant == tenant))).all()
        by_dept: dict[str, dict[str, int]] = {}
        shared: set[str] = set()
        for dept, dataset, status, reads in found:
            entry = by_dept.setdefault(dept, {"requests": 0, "granted": 0, "reads": 0})
            entry["requests"] += 1
            entry["reads"] += int(reads or 0)
            if status in ("approved", "revoked"):
                entry["granted"] += 1
                shared.add(dataset)
        return {"departments": by_dept, "datasetsShared": len(shared)}
