"""一数一源: each field of a dataset has one authoritative source (a department and a system).

The data office declares the source of an entity type's attributes (writes through the hub) or of a
registered dataset's fields (department uploads), with a policy: `refuse` (a write from another source
is refused: 403 at the hub, 409 for an upload) or `flag` (the write goes through and the conflict is
listed). Declared rules are kept in the hub's in-memory `SourcePolicies` (checked by the write guard in
the write transaction) and reloaded from `data_field_sources` periodically, so every API worker agrees
within the reload interval.

Conflicts (refused and flagged writes) are stored in `data_source_conflicts` for the data office:
flags in the write's own transaction, refusals after their transaction rolled back.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

from sqlalchemy import delete, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from cityos.core import clock
from cityos.core.db import write_transaction
from cityos.core.errors import BadRequestData, Conflict
from cityos.data.models import SOURCE_FLAG, SOURCE_REFUSE, field_sources, source_conflicts
from cityos.hub.sources import ANY, SourceConflict, SourcePolicies, SourceRule

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:/#-]{0,199}$|^\*$")
DEPARTMENT = re.compile(r"^[a-z0-9][a-z0-9_-]{0,127}$")
MAX_LISTED = 1000


class SourceRefused(Conflict):
    """An upload of fields whose authoritative source is another department or system."""


class Sources:
    def __init__(self, engine: AsyncEngine, lock: asyncio.Lock, policies: SourcePolicies, expand: Any) -> None:
        self.engine = engine
        self.lock = lock
        self.policies = policies
        self.expand = expand  # term → IRI with the tenant's classes (ClassRegistry.expand)

    # ------------------------------------------------------------------ rules

    async def load(self) -> None:
        """All declared rules into the hub's in-memory policies."""
        async with self.engine.connect() as conn:
            found = (await conn.execute(select(field_sources))).all()
        rules: dict[str, dict[str, dict[str, SourceRule]]] = {}
        for row in found:
            rules.setdefault(row.tenant, {}).setdefault(row.subject, {})[row.field] = SourceRule(
                row.department, row.system, row.policy)
        self.policies.replace(rules)

    def subject_of(self, body: dict[str, Any]) -> tuple[str, bool]:
        """(subject, is an entity type) from {entityType} or {dataset}."""
        entity_type, dataset = body.get("entityType"), body.get("dataset")
        if (entity_type is None) == (dataset is None):
            raise BadRequestData("give exactly one of entityType (hub writes) or dataset (a registered dataset)")
        value = entity_type if entity_type is not None else dataset
        if not isinstance(value, str) or not NAME.match(value) or value == ANY:
            raise BadRequestData("entityType / dataset must be a name of 1-200 letters, digits or _.:/#-")
        return (self.expand(value), True) if entity_type is not None else (value, False)

    async def declare(self, tenant: str, body: dict[str, Any], declared_by: str) -> dict[str, Any]:
        subject, is_type = self.subject_of(body)
        field, department = body.get("field", ANY), body.get("department")
        system, policy = body.get("system", ANY), body.get("policy", SOURCE_REFUSE)
        if not isinstance(field, str) or not NAME.match(field):
            raise BadRequestData('field is an attribute or field name, or "*" for all')
        if not isinstance(department, str) or not DEPARTMENT.match(department):
            raise BadRequestData("department is a department code (lower-case letters, digits, - or _)")
        if not isinstance(system, str) or not NAME.match(system):
            raise BadRequestData('system names the source system (e.g. iot, hub, upload) or "*"')
        if policy not in (SOURCE_REFUSE, SOURCE_FLAG):
            raise BadRequestData("policy is refuse or flag")
        key = self.expand(field) if is_type and field != ANY else field
        async with write_transaction(self.engine, self.lock) as conn:
            await conn.execute(delete(field_sources).where(
                field_sources.c.tenant == tenant, field_sources.c.subject == subject, field_sources.c.field == key))
            await conn.execute(insert(field_sources).values(
                tenant=tenant, subject=subject, field=key, department=department, system=system, policy=policy,
                declared_by=declared_by[:256], declared_at=clock.now()))
        await self.load()
        return {"subject": subject, "field": key, "department": department, "system": system, "policy": policy}

    async def rules(self, tenant: str) -> list[dict[str, Any]]:
        async with self.engine.connect() as conn:
            found = (await conn.execute(select(field_sources).where(field_sources.c.tenant == tenant)
                                        .order_by(field_sources.c.subject, field_sources.c.field))).all()
        return [{"subject": r.subject, "field": r.field, "department": r.department, "system": r.system,
                 "policy": r.policy, "declaredBy": r.declared_by,
                 "declaredAt": clock.iso(clock.as_utc(r.declared_at))} for r in found]

    # ------------------------------------------------------------------ uploads

    async def check_upload(self, tenant: str, code: str, provider: str, fields: list[dict[str, Any]],
                           principal: str) -> None:
        """A department's upload of `code`: fields with another authoritative source are refused (409) or
        flagged, as declared."""
        declared = self.policies.declared(tenant, code)
        if not declared:
            return
        refused: list[SourceConflict] = []
        flagged: list[SourceConflict] = []
        for f in fields:
            rule = declared.get(f["id"]) or declared.get(ANY)
            system = str((f.get("source") or {}).get("system", "upload"))
            if rule is None or rule.admits(provider, frozenset({provider}), system):
                continue
            conflict = SourceConflict(tenant, code, code, f["id"], rule.label, f"{provider}/{system}", principal,
                                      "refused" if rule.policy == SOURCE_REFUSE else "flagged")
            (refused if rule.policy == SOURCE_REFUSE else flagged).append(conflict)
        await self.record(refused + flagged)
        if refused:
            names = ", ".join(f"{c.field} (authoritative source {c.authority})" for c in refused[:5])
            raise SourceRefused(f"一数一源: {provider} is not the authoritative source of {names}; "
                                "the data office lists this conflict")

    # ------------------------------------------------------------------ conflicts

    async def on_commit(self, conn: AsyncConnection, tenant: str, changes: list[Any]) -> None:
        """The hub's in-transaction listener: store the flags of the committed changes."""
        flagged = self.policies.take_flagged({c.entity_id for c in changes})
        if flagged:
            await conn.execute(insert(source_conflicts), [_row(c) for c in flagged])

    async def flush(self) -> None:
        """Store the hub's refused writes (their own transactions rolled back) and the flags of committed
        history writes (the temporal API writes outside the change pipeline)."""
        await self.record(self.policies.take_refused() + self.policies.take_settled_flags())

    async def record(self, conflicts: list[SourceConflict]) -> None:
        if not conflicts:
            return
        async with write_transaction(self.engine, self.lock) as conn:
            await conn.execute(insert(source_conflicts), [_row(c) for c in conflicts])

    async def conflicts(self, tenant: str, outcome: str | None = None, limit: int = 200) -> list[dict[str, Any]]:
        await self.flush()
        stmt = select(source_conflicts).where(source_conflicts.c.tenant == tenant)
        if outcome is not None:
            stmt = stmt.where(source_conflicts.c.outcome == outcome)
        stmt = stmt.order_by(source_conflicts.c.id.desc()).limit(min(limit, MAX_LISTED))
        async with self.engine.connect() as conn:
            found = (await conn.execute(stmt)).all()
        return [{"subject": r.subject, "record": r.record, "field": r.field, "authority": r.authority,
                 "writer": r.writer, "principal": r.principal, "outcome": r.outcome,
                 "at": clock.iso(clock.as_utc(r.at))} for r in found]


def _row(c: SourceConflict) -> dict[str, Any]:
    return {"tenant": c.tenant, "subject": c.subject[:512], "record": c.record[:512], "field": c.field[:512],
            "authority": c.authority[:300], "writer": c.writer[:300], "principal": c.principal[:256],
            "outcome": c.outcome, "at": clock.now()}
