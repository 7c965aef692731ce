"""Security: identity, tokens, access policy, data classes and masking, field crypto, audit chain, approvals.

Modules
-------
- ``policy``: `Principal`, `Resource`, `authorize(principal, action, resource) -> Decision`,
  `visible_class(principal, data_class, owning_department)`; the role × action `MATRIX` and the
  data-class `VISIBILITY` table are data.
- ``masking``: `mask_entity(entity, classes, principal, owning_department=None, default="internal")`.
- ``tokens``: Ed25519 JWT access tokens, JWKS, trust in an external OIDC issuer.
- ``service``: `SecurityService`, put together from one mixin per responsibility: ``directory``
  (users, departments, tenants, OAuth clients, external identities), ``passwords`` (hashing in a
  bounded thread pool, bounded login concurrency, zxcvbn password strength), ``sessions``
  (revocation, bearer authentication), ``oauth_grants`` (password with TOTP, client credentials,
  refresh, JWT bearer) and ``logins``; ``errors``: `Forbidden`, `Unauthorized`, `require_allowed`.
  Every name these modules took from ``service`` is still importable from it.
- ``logins``: brute-force defence (sliding windows per account and source, progressive delays,
  known-device tokens that pass lockouts, IP blocks); ``api.client_ip`` believes
  ``X-Forwarded-For`` only from ``CITYOS_TRUSTED_PROXIES``.
- ``accounts``: account lifecycle (disable/enable, role and department, unlock, TOTP enrolment
  codes and reset, OAuth clients, the break-glass recovery code); dept_admins reach only
  department staff of their departments, tenant-wide and admin roles need two persons.
- ``audit``: the SHA-256 hash-chained, append-only audit trail.
- ``crypto``: AES-256-GCM / SM4-GCM field encryption with a key ring.
- ``approvals``: two-person approval (双人双锁).
- ``api``: the router (`/auth/*`, `/audit*`, `/.well-known/*`) and the dependencies
  `current_principal`, `require(action)`, `request_tenant`, `enforce`.

- ``classes``: the data-class registry (IoT profiles' ``dataClass``, domain declarations,
  ``CITYOS_DATA_CLASSES_FILE``, per-tenant ``DataClassPolicy`` hub entities managed through
  ``PUT/GET/DELETE /admin/data-classes/{type}`` with ``tenant.manage``) and owning departments.

Enforcement (issue #5) is wired in:

- every hub route has ``require(entity.read|entity.write|entity.delete)``; subscriptions
  ``subscription.manage``; temporal reads ``entity.read``, writes ``entity.write``/``entity.delete``;
  ``/admin/*`` (retention, data classes) ``tenant.manage``; ``/jsonldContexts`` writes
  ``entity.write`` (delete: ``tenant.manage``); the IoT management API ``device.manage`` (the broker
  hooks keep ``CITYOS_IOT_ADMIN_TOKEN``, the device API its device tokens + ``telemetry.write``);
- ``cityos.hub.access``: per request, the tenant comes from ``request_tenant`` (tampering → 403),
  every record leaving the hub goes through the registry's masking (query, retrieval, batch query,
  GeoJSON, temporal, notifications — masked for the subscription's creator, kept with it), a
  record the caller may see nothing of is withheld (404 / absent), and writes are checked per
  entity in the hub service's transaction (department / owner scopes; ``DataClassPolicy`` needs
  ``tenant.manage``) via the ``write_guard`` context variable;
- audit: every write after its commit, every refusal (401 bad token, 403), every sensitive or
  confidential value shown in clear (``entity.read.sensitive``, ``entity.notify.sensitive``);
- verified tokens are cached by token until they expire (revocation is still checked each time);
- filters (``q``, ``attrs``, geo-queries' ``geoproperty``, batch and temporal ``q``) on an attribute
  the caller cannot see are refused (403, audited); masked attributes may be tested for existence
  only; discovery (``/types``, ``/attributes``) and ``NGSILD-Results-Count`` show only what the
  caller sees (the count is omitted where visibility depends on each entity's department);
- ``device.manage`` and ``subscription.manage`` are department-scoped for dept_admin / official.

Domains declare the classes of the entity types they publish at start-up::

    from cityos.security.classes import class_registry
    class_registry(app).declare("Alert", {"description": "internal", "reporterPhone": "sensitive"},
                                default="public", department="ops")

Tests: on PostgreSQL the audit table refuses DELETE; `tests/conftest.py::_clean` runs
``SET LOCAL session_replication_role = replica`` before its DELETEs (superuser).
"""
