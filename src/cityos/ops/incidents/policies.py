"""Incidents: SLA policies (the shipped defaults plus a tenant's own) and the deadlines they set."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, insert, select, update

from cityos.core import clock
from cityos.core.errors import ResourceNotFound
from cityos.ops.incidents.core import Actor, parse_id
from cityos.ops.incidents.models import sla_policies
from cityos.ops.incidents.places import IncidentPlaces
from cityos.ops.incidents.routing import Policy, best_policy
from cityos.security.audit import AuditEvent
from cityos.security.policy import Principal


class IncidentPolicies(IncidentPlaces):
    """SLA policies: read (cached), set, delete; deadlines."""

    async def policies(self, tenant: str) -> list[Policy]:
        """Defaults from `sla_defaults.yaml` plus the tenant's custom policies (cached 5 s)."""
        cached = self._policy_cache.get(tenant)
        moment = asyncio.get_running_loop().time()
        if cached is not None and moment - cached[0] < 5.0:
            return cached[1]
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(sla_policies).where(sla_policies.c.tenant == tenant)
                                       .order_by(sla_policies.c.id))).all()
        custom = [Policy(r.category, r.level, r.response_minutes, r.resolution_minutes, "custom", r.id) for r in rows]
        overridden = {(p.category, p.level) for p in custom}
        merged = [p for p in self.defaults if (p.category, p.level) not in overridden] + custom
        self._policy_cache[tenant] = (moment, merged)
        return merged

    async def policy_for(self, tenant: str, category: str, level: str) -> Policy | None:
        return best_policy(await self.policies(tenant), category, level)

    async def set_policy(self, tenant: str, category: str, level: str, response: float,
                         resolution: float | None, by: Principal | None) -> dict[str, Any]:
        now = clock.now()
        actor = Actor.of(by)
        async with self.write() as conn:
            found = (await conn.execute(select(sla_policies.c.id).where(
                sla_policies.c.tenant == tenant, sla_policies.c.category == category,
                sla_policies.c.level == level))).first()
            values = {"response_minutes": response, "resolution_minutes": resolution, "updated_at": now,
                      "updated_by": actor.label[:256]}
            if found is None:
                policy_id = (await conn.execute(insert(sla_policies).values(
                    tenant=tenant, category=category, level=level, **values).returning(sla_policies.c.id))).scalar_one()
            else:
                policy_id = found.id
                await conn.execute(update(sla_policies).where(sla_policies.c.id == policy_id).values(**values))
        self._policy_cache.pop(tenant, None)
        await self.security.record(AuditEvent.of(by, "sla.policy.set", f"sla-policy:{policy_id}", tenant=tenant,
                                                 category=category, level=level, response=response,
                                                 resolution=resolution))
        return Policy(category, level, response, resolution, "custom", policy_id).to_json()

    async def delete_policy(self, tenant: str, policy_id: str, by: Principal | None) -> None:
        ident = parse_id(policy_id)
        async with self.write() as conn:
            result = await conn.execute(delete(sla_policies).where(sla_policies.c.tenant == tenant,
                                                                   sla_policies.c.id == ident))
        if not result.rowcount:
            raise ResourceNotFound(f"SLA policy {policy_id} not found")
        self._policy_cache.pop(tenant, None)
        await self.security.record(AuditEvent.of(by, "sla.policy.delete", f"sla-policy:{ident}", tenant=tenant))

    def _deadlines(self, policy: Policy | None, start: datetime) -> tuple[datetime | None, datetime | None]:
        if policy is None:
            return None, None
        response = start + timedelta(minutes=policy.response_minutes)
        resolution = start + timedelta(minutes=policy.resolution_minutes) if policy.resolution_minutes else None
        return response, resolution
