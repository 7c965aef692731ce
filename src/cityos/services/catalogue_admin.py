"""The service desk's catalogue: looking services up, search, guides, and the tenant-managed
services (defined through the API, stored in `svc_services`) beside the shipped catalogue."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select, update

from cityos.core import clock
from cityos.core.errors import AlreadyExists, BadRequestData, ResourceNotFound
from cityos.security.audit import AuditEvent
from cityos.security.policy import Principal, Resource
from cityos.security.service import Forbidden
from cityos.services import models as m
from cityos.services.catalogue import CATALOGUE_DIR, CatalogueError, Service, build_service, matches
from cityos.services.desk import Check, DeskCore


class CatalogueDesk(DeskCore):
    """Services by code (shipped or managed), search, guides, and managing a tenant's own services."""

    async def service(self, tenant: str, code: str) -> Service:
        if code in self.services:
            return self.services[code]
        async with self._read() as conn:
            row = (await conn.execute(select(m.services).where(
                m.services.c.tenant == tenant, m.services.c.code == code))).mappings().first()
        if row is None:
            raise ResourceNotFound(f"no service {code!r}")
        cached = self._managed.get((tenant, code))
        if cached is None or cached.version != row["version"]:
            cached = build_service(row["doc"], CATALOGUE_DIR, code, "api", row["version"], tenant)
            self._managed[(tenant, code)] = cached
        return cached

    async def _managed_services(self, tenant: str) -> list[Service]:
        async with self._read() as conn:
            rows = (await conn.execute(select(m.services.c.code).where(m.services.c.tenant == tenant))).all()
        return [await self.service(tenant, code) for (code,) in rows]

    async def search(self, tenant: str, q: str | None, life_event: str | None, audience: str | None,
                     department: str | None = None) -> dict[str, Any]:
        found = [*self.services.values(), *await self._managed_services(tenant)]
        items: list[dict[str, Any]] = []
        for svc in found:
            d = svc.definition
            if life_event and life_event not in d.life_events:
                continue
            if audience and audience not in d.audience:
                continue
            if department and department != d.department:
                continue
            if matches(svc.text(), q):
                items.append(svc.summary())
        bundles = []
        for bundle in self.bundles.values():
            d2 = bundle.definition
            if (life_event and life_event not in d2.life_events) or (audience and audience not in d2.audience):
                continue
            text = " ".join([d2.code, d2.name, d2.name_en or "", *d2.keywords, *d2.life_events]).lower()
            if matches(text, q):
                bundles.append({"code": d2.code, "name": d2.name, "nameEn": d2.name_en, "bundle": True,
                                "services": bundle.services, "lifeEvents": d2.life_events})
        items.sort(key=lambda s: s["code"])
        return {"items": items, "bundles": bundles, "total": len(items)}

    async def guide(self, tenant: str, code: str) -> dict[str, Any]:
        if code in self.bundles:
            return self.bundles[code].guide(self.services)
        return (await self.service(tenant, code)).guide()

    async def put_service(self, principal: Principal | None, tenant: str, doc: Any, check: Check,
                          code: str | None = None, ip: str = "") -> dict[str, Any]:
        if not isinstance(doc, dict):
            raise BadRequestData("a service definition is a JSON object")
        if code is not None and doc.get("code", code) != code:
            raise BadRequestData("the code in the body differs from the one in the path")
        if code is not None:
            doc = {**doc, "code": code}
        decisions = doc.get("decisions") if isinstance(doc.get("decisions"), list) else []
        for value in (doc.get("process"), *decisions):
            if not isinstance(value, str) or not value.lstrip().startswith("<"):
                raise BadRequestData("process and decisions must be inline BPMN/DMN XML")
        department = doc.get("department") if isinstance(doc.get("department"), str) else None
        await check("service.manage", Resource("service", tenant, id=doc.get("code"), department=department))
        try:
            svc = build_service(doc, CATALOGUE_DIR, str(doc.get("code", "definition")), "api", 1, tenant)
        except CatalogueError as exc:
            raise BadRequestData(str(exc)) from exc
        if svc.code in self.services:
            raise AlreadyExists(f"service {svc.code!r} is defined by the shipped catalogue")
        now = clock.now()
        async with self.write() as conn:
            row = (await conn.execute(select(m.services.c.version, m.services.c.doc).where(
                m.services.c.tenant == tenant, m.services.c.code == svc.code))).first()
            if code is None and row is not None:
                raise AlreadyExists(f"service {svc.code!r} exists; PUT /api/services/catalogue/{svc.code} replaces it")
            if code is not None and row is None:
                raise ResourceNotFound(f"no service {code!r}")
            if row is not None and row[1].get("department") != svc.definition.department:
                await check("service.manage", Resource("service", tenant, id=svc.code, department=row[1]["department"]))
            version = (row[0] + 1) if row is not None else 1
            values = {"version": version, "doc": doc, "updated_at": now,
                      "updated_by": principal.id if principal else None}
            if row is None:
                await conn.execute(m.services.insert().values(tenant=tenant, code=svc.code, **values))
            else:
                await conn.execute(update(m.services).where(m.services.c.tenant == tenant,
                                                           m.services.c.code == svc.code).values(**values))
            await self._audit_in(conn, AuditEvent.of(principal, "service.manage", f"service:{svc.code}", ip=ip,
                                                     tenant=tenant, op="create" if row is None else "replace",
                                                     version=version))
        svc.version = version
        self._managed[(tenant, svc.code)] = svc
        return svc.guide()

    async def delete_service(self, tenant: str, code: str, check: Check, principal: Principal | None = None,
                             ip: str = "") -> None:
        if code in self.services:
            raise Forbidden(f"service {code!r} is part of the shipped catalogue; change it in the repository")
        svc = await self.service(tenant, code)
        await check("service.manage", Resource("service", tenant, id=code, department=svc.definition.department))
        async with self.write() as conn:
            await conn.execute(m.services.delete().where(m.services.c.tenant == tenant, m.services.c.code == code))
            await self._audit_in(conn, AuditEvent.of(principal, "service.manage", f"service:{code}", ip=ip,
                                                     tenant=tenant, op="delete"))
        self._managed.pop((tenant, code), None)
