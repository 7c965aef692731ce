"""The service desk's one-thing bundles (一件事): one form and one set of materials submitted as
several applications, and the case view over them."""

from __future__ import annotations

import uuid
from typing import Any

from jsonschema import Draft202012Validator
from sqlalchemy import select

from cityos.core import clock
from cityos.core.clock import as_utc
from cityos.core.errors import ResourceNotFound
from cityos.security.policy import STAFF_ROLES, Principal, Resource
from cityos.services import models as m
from cityos.services.catalogue import Service
from cityos.services.desk import Check, FieldErrors, form_errors
from cityos.services.submission import SubmissionDesk


class BundlesDesk(SubmissionDesk):
    """Bundles: submitting a one-thing case and reading it."""

    async def submit_bundle(self, principal: Principal, tenant: str, body: Any, check: Check) -> dict[str, Any]:
        if not isinstance(body, dict) or not isinstance(body.get("bundleCode"), str):
            raise FieldErrors([{"field": "bundleCode", "message": "required"}])
        bundle = self.bundles.get(body["bundleCode"])
        if bundle is None:
            raise ResourceNotFound(f"no bundle {body['bundleCode']!r}")
        await check("application.submit", Resource("application", tenant, owner=principal.id))
        form = body.get("form")
        if not isinstance(form, dict):
            raise FieldErrors([{"field": "form", "message": "must be an object"}])
        errors = form_errors(Draft202012Validator(bundle.form), form)
        plans: list[tuple[Service, dict[str, Any], list[dict[str, Any]]]] = []
        given = body.get("materials") or []
        if not isinstance(given, list):
            raise FieldErrors([{"field": "materials", "message": "must be a list"}])
        for member in bundle.definition.services:
            svc = self.services[member.code]
            wanted = set(svc.definition.form.get("properties", {}))
            sub_form = {k: v for k, v in form.items() if k in wanted}
            for target, source in member.map.items():
                if source in form:
                    sub_form[target] = form[source]
            names = {mat.name for mat in svc.definition.materials}
            sub_materials = [g for g in given if isinstance(g, dict) and g.get("name") in names]
            materials, sub_errors = await self._validate_submission(svc, principal, tenant, sub_form, sub_materials,
                                                                    prefix=f"{member.code}.")
            errors.extend(e for e in sub_errors if e not in errors)
            plans.append((svc, sub_form, materials))
        if errors:
            raise FieldErrors(errors)
        case_id = uuid.uuid4().hex
        now = clock.now()
        ids = []
        rows = []
        for svc, sub_form, materials in plans:
            row = await self._start(svc, principal, tenant, sub_form, materials, body.get("channel", "online"), case_id)
            ids.append(row["id"])
            rows.append((row, svc))
        async with self.write() as conn:
            await conn.execute(m.bundles.insert().values(id=case_id, tenant=tenant, bundle_code=bundle.code,
                                                         applicant=principal.id, application_ids=ids, created_at=now))
        views = [await self._after_change(row, svc, principal, submitted=True) for row, svc in rows]
        return self._bundle_view(case_id, bundle, principal.id, views, now)

    async def bundle(self, principal: Principal | None, tenant: str, case_id: str, check: Check) -> dict[str, Any]:
        async with self._read() as conn:
            row = (await conn.execute(select(m.bundles).where(
                m.bundles.c.id == case_id, m.bundles.c.tenant == tenant))).mappings().first()
            if row is None:
                raise ResourceNotFound(f"no case {case_id!r}")
            apps = (await conn.execute(select(m.applications).where(
                m.applications.c.id.in_(list(row["application_ids"]))))).mappings().all()
        bundle = self.bundles.get(row["bundle_code"])
        if bundle is None:
            raise ResourceNotFound(f"bundle {row['bundle_code']!r} is no longer offered")
        if principal is not None and principal.role in STAFF_ROLES:
            department = next((a["department"] for a in apps if a["department"] in principal.departments), None)
        else:
            department = None
        await check("application.read", Resource("application", tenant, id=case_id, owner=row["applicant"],
                                                 department=department or (apps[0]["department"] if apps else None)))
        order = {app_id: i for i, app_id in enumerate(row["application_ids"])}
        views = [self.view(dict(a)) for a in sorted(apps, key=lambda a: order[a["id"]])]
        return self._bundle_view(case_id, bundle, row["applicant"], views, as_utc(row["created_at"]))
