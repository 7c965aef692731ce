"""Security: identity, tokens, access policy, data classes and masking, field crypto, audit chain, approvals.

Modules
-------
- ``policy``: `Principal`, `Resource`, `authorize(principal, action, resource) -> Decision`,
  `visible_class(principal, data_class, owning_department)`; the role × action `MATRIX` and the
  data-class `VISIBILITY` table are data.
- ``masking``: `mask_entity(entity, classes, principal, owning_department=None, default="internal")`.
- ``tokens``: Ed25519 JWT access tokens, JWKS, trust in an external OIDC issuer.
- ``service``: users, departments, tenants, OAuth clients, grants, TOTP, brute-force defence.
- ``audit``: the SHA-256 hash-chained, append-only audit trail.
- ``crypto``: AES-256-GCM / SM4-GCM field encryption with a key ring.
- ``approvals``: two-person approval (双人双锁).
- ``api``: the router (`/auth/*`, `/audit*`, `/.well-known/*`) and the dependencies
  `current_principal`, `require(action)`, `request_tenant`, `enforce`.

Authentication is NOT enforced on the hub, IoT or other APIs yet. Wiring it in is one step:

1. Routers. Add the coarse gate to each router (FastAPI dependencies run before the handler)::

       from fastapi import Depends
       from cityos.security.api import require
       # hub/api.py: reads and writes differ, so per route, e.g.
       @router.get("/entities", dependencies=[Depends(require("entity.read"))])
       @router.post("/entities", dependencies=[Depends(require("entity.write"))])
       @router.delete("/entities/{entity_id}", dependencies=[Depends(require("entity.delete"))])
       # hub/subscriptions/api.py: APIRouter(..., dependencies=[Depends(require("subscription.manage"))])
       # hub/temporal/api.py: router → require("entity.read"); admin_router → require("tenant.manage")
       # iot/api.py: router (management) → require("device.manage"); device_router keeps its device
       #   tokens and builds `Principal.device(device_id, tenant, department, district)` for `authorize`.

   `require` also refuses (403) an ``NGSILD-Tenant`` header naming another tenant than the token's
   (only sys_admin may name any tenant); handlers then read the tenant with
   ``request_tenant(request, await current_principal(request))`` instead of ``hub.http.tenant_of``.

2. Policy in the service layer, with the real resource (department-scoped actions)::

       from cityos.security.api import enforce, current_principal
       from cityos.security.policy import Resource
       await enforce(request, principal, "entity.write",
                     Resource("entity", tenant, id=entity_id, department=dept, district=district, owner=owner))

3. Masking. Call `mask_entity` on every entity leaving the hub: `respond_entities`/`retrieve_entity`
   (after `entity_out`, before `render`), notification payloads in `hub/subscriptions/delivery.py`,
   temporal results and exports::

       from cityos.security.masking import mask_entity_report
       result = mask_entity_report(entity, classes, principal, owning_department=dept)
       if result.revealed:   # sensitive/confidential shown in clear → audit the read
           await security.service.record(AuditEvent.of(principal, "entity.read.sensitive", entity["id"],
                                                        attrs=result.revealed))

   `classes` maps attribute names to data classes (from the IoT profiles' ``dataClass`` or a
   per-type registry); unlisted attributes default to "internal" (fail-closed; pass
   ``default="public"`` for types whose unlisted attributes are public).

4. Audit writes: after each committed write, ``await app.state.security.service.record(
   AuditEvent.of(principal, "entity.write", entity_id, ip=client_ip(request)))``. Never call it
   while holding the hub store's SQLite write lock (the audit log shares that lock).

5. Tests: on PostgreSQL the audit table refuses DELETE; `tests/conftest.py::_clean` must run
   ``SET LOCAL session_replication_role = replica`` before its DELETEs (superuser), or call
   `cityos.security.audit.purge_for_tests(engine)`.
"""
