"""Two-person approval (双人双锁) for core operations.

request → approve or refuse by a second authorised person (never the requester) → execute (by
the requester, once, before the request expires). Every step is audited.

- export_sensitive (action data.export_sensitive; params {"dataset", "department"?}): a one-time
  grant valid 1 h;
- delete_tenant (tenant.delete; {"tenant"}): tenant marked deleted, its users disabled, the
  domains' `tenant_deletion_hooks` run;
- rotate_keys (keys.rotate; {}): a new active data key (file-backed ring), re-encryption;
- assign_admin_role (role.assign_admin; {"username", "role"}): role set, sessions revoked;
- assign_role (role.assign_tenant_wide; {"username", "role", "department"?}): a tenant-wide role
  (operator, auditor, an official without a department) set, sessions revoked;
- create_user (role.assign_admin or role.assign_tenant_wide by role; {"username", "role",
  "department"?, "display_name"?}): the account is created without a password and the execution's
  answer carries a one-time enrolment code (shown once, never stored in the approval), with which
  the new user sets a password and enrols TOTP (POST /auth/totp/enroll).

The approver must be allowed `approval.decide` and the kind's action on the same resource; for
role appointments (三权分立) the second person is another sys_admin or a dept_admin of the tenant
(`role.approve`), never the person appointed. When no second administrator exists yet, the
break-glass recovery code created with the first administrator stands in for the second person
(`approve_with_recovery_code`, CLI `cityos user approve --recovery-code`).
An export grant is consumed by the exporting code: `await approvals.consume_grant(grant_id, principal)`.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

from sqlalchemy import insert, select, update

from cityos.core import clock
from cityos.core.errors import BadRequestData, Conflict, ResourceNotFound
from cityos.security import crypto
from cityos.security.accounts import AccountService
from cityos.security.audit import AuditEvent
from cityos.security.errors import Forbidden, Unauthorized
from cityos.security.models import approvals, grants
from cityos.security.policy import ADMIN_ROLES, USER_ROLES, Principal, Resource, appointment_approval, authorize
from cityos.security.service import SecurityService

KINDS: dict[str, str] = {
    "export_sensitive": "data.export_sensitive",
    "delete_tenant": "tenant.delete",
    "rotate_keys": "keys.rotate",
    "assign_admin_role": "role.assign_admin",
    "assign_role": "role.assign_tenant_wide",
    "create_user": "role.assign_tenant_wide",
}
ROLE_KINDS = frozenset({"assign_admin_role", "assign_role", "create_user"})
# Keys of an executor's result that are shown once to the executing requester and never stored.
ONCE_KEYS = frozenset({"enrolment_code"})

Executor = Callable[[dict[str, Any], dict[str, Any]], Awaitable[dict[str, Any]]]


def _resource(kind: str, tenant: str, params: dict[str, Any]) -> Resource:
    dept = params.get("department")
    if kind in ROLE_KINDS:
        dept = None  # the appointment is tenant-wide business whatever the department
    return Resource(kind=kind, tenant=tenant, department=str(dept) if dept else None)


def _action(kind: str, params: dict[str, Any]) -> str:
    """The action a request of `kind` needs from its requester."""
    if kind == "create_user" and params.get("role") in ADMIN_ROLES:
        return "role.assign_admin"
    return KINDS[kind]


def _approver_actions(kind: str, params: dict[str, Any]) -> tuple[str, ...]:
    if kind in ROLE_KINDS:
        return ("approval.decide", "role.approve")
    return ("approval.decide", _action(kind, params))


def _clean_params(kind: str, params: dict[str, Any]) -> dict[str, Any]:
    if kind == "export_sensitive":
        if not isinstance(params.get("dataset"), str) or not params["dataset"]:
            raise BadRequestData("export_sensitive needs params.dataset")
        return {"dataset": params["dataset"][:256],
                **({"department": str(params["department"])[:128]} if params.get("department") else {})}
    if kind == "delete_tenant":
        if not isinstance(params.get("tenant"), str):
            raise BadRequestData("delete_tenant needs params.tenant")
        return {"tenant": params["tenant"][:256]}
    if kind == "assign_admin_role":
        if not isinstance(params.get("username"), str) or params.get("role") not in ADMIN_ROLES:
            raise BadRequestData(f"assign_admin_role needs params.username and params.role in {sorted(ADMIN_ROLES)}")
        return {"username": params["username"][:128], "role": params["role"]}
    if kind in ("assign_role", "create_user"):
        department = params.get("department")
        if department is not None and (not isinstance(department, str) or not department):
            raise BadRequestData("params.department must be a non-empty string")
        role = params.get("role")
        needed = appointment_approval(str(role), department) if role in USER_ROLES else None
        allowed = (needed is not None) if kind == "create_user" else (needed == "role.assign_tenant_wide")
        if not isinstance(params.get("username"), str) or not params["username"] or not allowed:
            raise BadRequestData(f"{kind} needs params.username and a role that needs two persons "
                                 "(operator, auditor, an official without department"
                                 f"{', dept_admin, sys_admin' if kind == 'create_user' else ''})")
        out: dict[str, Any] = {"username": params["username"][:128], "role": role}
        if department:
            out["department"] = department[:128]
        if kind == "create_user" and isinstance(params.get("display_name"), str):
            out["display_name"] = params["display_name"][:256]
        return out
    return {}


class ApprovalService:
    def __init__(self, security: SecurityService, accounts: AccountService | None = None) -> None:
        self.security = security
        self.accounts = accounts or AccountService(security)
        self.executors: dict[str, Executor] = {
            "export_sensitive": self._grant_export,
            "delete_tenant": self._delete_tenant,
            "rotate_keys": self._rotate_keys,
            "assign_admin_role": self._assign_admin,
            "assign_role": self._assign_admin,
            "create_user": self._create_user,
        }

    async def _audit(self, principal: Principal, action: str, approval_id: str, outcome: str = "success",
                     **detail: Any) -> None:
        await self.security.record(AuditEvent.of(principal, action, f"approval:{approval_id}", outcome, **detail))

    async def request(self, principal: Principal | None, kind: str, params: dict[str, Any], reason: str,
                      tenant: str | None = None) -> dict[str, Any]:
        if principal is None:
            raise Unauthorized()
        if kind not in KINDS:
            raise BadRequestData(f"unknown approval kind {kind!r}; one of {', '.join(KINDS)}")
        params = _clean_params(kind, params)
        tenant = principal.tenant if tenant is None else tenant
        resource = _resource(kind, tenant, params)
        for action in ("approval.request", _action(kind, params)):
            decision = authorize(principal, action, resource)
            if not decision:
                await self._audit(principal, f"approval.request.{kind}", "-", "denied", reason=decision.reason)
                raise Forbidden(f"{action}: {decision.reason}")
        approval_id = uuid.uuid4().hex
        now = clock.now()
        row = {"id": approval_id, "kind": kind, "tenant": tenant, "params": params, "reason": reason[:2000],
               "requested_by": principal.id, "requested_at": now,
               "expires_at": now + timedelta(seconds=self.security.settings.approval_ttl), "status": "pending"}
        async with self.security.write() as conn:
            await conn.execute(insert(approvals).values(**row))
        await self._audit(principal, f"approval.request.{kind}", approval_id, params=params)
        return await self.get(approval_id)

    async def get(self, approval_id: str) -> dict[str, Any]:
        async with self.security.engine.connect() as conn:
            row = (await conn.execute(select(approvals).where(approvals.c.id == approval_id[:64]))).mappings().first()
        if row is None:
            raise ResourceNotFound(f"no approval {approval_id!r}")
        out = dict(row)
        for key in ("requested_at", "expires_at", "decided_at", "executed_at"):
            out[key] = clock.iso(out[key]) if out[key] is not None else None
        return out

    async def list(self, status: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        stmt = select(approvals.c.id).order_by(approvals.c.requested_at.desc()).limit(limit)
        if status is not None:
            stmt = stmt.where(approvals.c.status == status)
        async with self.security.engine.connect() as conn:
            ids = [r[0] for r in await conn.execute(stmt)]
        return [await self.get(i) for i in ids]

    async def decide(self, principal: Principal | None, approval_id: str, approve: bool) -> dict[str, Any]:
        if principal is None:
            raise Unauthorized()
        item = await self.get(approval_id)
        verb = "approve" if approve else "refuse"
        if item["requested_by"] == principal.id:
            await self._audit(principal, f"approval.{verb}", approval_id, "denied", reason="self-approval")
            raise Forbidden("the requester cannot decide their own request (two-person rule)")
        if item["kind"] in ROLE_KINDS and principal.username == item["params"].get("username"):
            await self._audit(principal, f"approval.{verb}", approval_id, "denied", reason="own appointment")
            raise Forbidden("the person appointed cannot decide their own appointment")
        resource = _resource(item["kind"], item["tenant"], item["params"])
        for action in _approver_actions(item["kind"], item["params"]):
            decision = authorize(principal, action, resource)
            if not decision:
                await self._audit(principal, f"approval.{verb}", approval_id, "denied", reason=decision.reason)
                raise Forbidden(f"{action}: {decision.reason}")
        return await self._decide(principal, item, approve)

    async def _decide(self, principal: Principal, item: dict[str, Any], approve: bool) -> dict[str, Any]:
        approval_id, verb = item["id"], "approve" if approve else "refuse"
        now = clock.now()
        async with self.security.write() as conn:
            changed = (await conn.execute(update(approvals).where(
                approvals.c.id == approval_id, approvals.c.status == "pending", approvals.c.expires_at > now)
                .values(status="approved" if approve else "refused", decided_by=principal.id, decided_at=now))).rowcount
        if changed != 1:
            raise Conflict(f"approval {approval_id} is {item['status']} or expired")
        await self._audit(principal, f"approval.{verb}", approval_id, kind=item["kind"])
        return await self.get(approval_id)

    async def approve_with_recovery_code(self, approval_id: str, code: str) -> dict[str, Any]:
        """Break-glass: the offline recovery code stands in for the second person of a role appointment.

        Only role appointments, only while pending; the code is spent (once) and the step audited.
        """
        item = await self.get(approval_id)
        if item["kind"] not in ROLE_KINDS:
            raise Forbidden("the recovery code only approves role appointments")
        if item["status"] != "pending":
            raise Conflict(f"approval {approval_id} is {item['status']}")
        await self.accounts.use_recovery_code(code, approval_id)
        glass = Principal(id="break-glass", kind="service", role="sys_admin", username="break-glass")
        return await self._decide(glass, item, True)

    async def execute(self, principal: Principal | None, approval_id: str) -> dict[str, Any]:
        if principal is None:
            raise Unauthorized()
        item = await self.get(approval_id)
        if item["requested_by"] != principal.id:
            raise Forbidden("only the requester executes an approved request")
        now = clock.now()
        async with self.security.write() as conn:
            changed = (await conn.execute(update(approvals).where(
                approvals.c.id == approval_id, approvals.c.status == "approved", approvals.c.expires_at > now)
                .values(status="executing", executed_at=now))).rowcount
        if changed != 1:
            await self._audit(principal, "approval.execute", approval_id, "denied", status=item["status"])
            raise Conflict(f"approval {approval_id} is {item['status']}, not approved (or it expired)")
        try:
            shown = await self.executors[item["kind"]](item["params"], item)
            result = {k: v for k, v in shown.items() if k not in ONCE_KEYS}
        except Exception as exc:
            async with self.security.write() as conn:
                await conn.execute(update(approvals).where(approvals.c.id == approval_id)
                                   .values(status="failed", result={"error": str(exc)[:500]}))
            await self._audit(principal, "approval.execute", approval_id, "error", kind=item["kind"],
                              error=str(exc)[:500])
            raise
        async with self.security.write() as conn:
            await conn.execute(update(approvals).where(approvals.c.id == approval_id)
                               .values(status="executed", result=result))
        await self._audit(principal, "approval.execute", approval_id, kind=item["kind"], result=result)
        return {**await self.get(approval_id), "result": shown}

    # ------------------------------------------------------------------ executors

    async def _grant_export(self, params: dict[str, Any], item: dict[str, Any]) -> dict[str, Any]:
        grant_id = uuid.uuid4().hex
        expires = clock.now() + timedelta(hours=1)
        async with self.security.write() as conn:
            await conn.execute(insert(grants).values(id=grant_id, kind="export_sensitive",
                                                     principal=item["requested_by"], approval=item["id"],
                                                     params=params, expires_at=expires))
        return {"grant": grant_id, "expires_at": clock.iso(expires)}

    async def consume_grant(self, grant_id: str, principal: Principal, kind: str = "export_sensitive"
                            ) -> dict[str, Any]:
        """Use a grant once; returns its params. Raises Forbidden when it is not this principal's or spent."""
        now = clock.now()
        async with self.security.write() as conn:
            row = (await conn.execute(select(grants).where(grants.c.id == grant_id[:64]))).mappings().first()
            ok = (row is not None and row["kind"] == kind and row["principal"] == principal.id
                  and (await conn.execute(update(grants).where(
                      grants.c.id == grant_id, grants.c.used_at.is_(None), grants.c.expires_at > now)
                      .values(used_at=now))).rowcount == 1)
        await self.security.record(AuditEvent.of(principal, f"grant.use.{kind}", f"grant:{grant_id[:64]}",
                                                 "success" if ok else "denied"))
        if not ok or row is None:
            raise Forbidden("no usable grant")
        return dict(row["params"])

    async def _delete_tenant(self, params: dict[str, Any], _item: dict[str, Any]) -> dict[str, Any]:
        return await self.security.delete_tenant(params["tenant"])

    async def _rotate_keys(self, _params: dict[str, Any], _item: dict[str, Any]) -> dict[str, Any]:
        ring = self.security.keyring
        added = ring.add_key() if ring.path is not None else None
        report = await crypto.reencrypt(self.security.engine, ring)
        return {"active": report.active, "added": added, "rewritten": report.rewritten}

    async def _assign_admin(self, params: dict[str, Any], item: dict[str, Any]) -> dict[str, Any]:
        # assign_role names the department the role has (none: tenant-wide); an admin keeps theirs.
        department = params.get("department") if item["kind"] == "assign_role" else ...
        await self.accounts.set_role(params["username"], params["role"], allow_admin=True, department=department)
        return {"username": params["username"], "role": params["role"]}

    async def _create_user(self, params: dict[str, Any], item: dict[str, Any]) -> dict[str, Any]:
        await self.security.create_user(params["username"], None, params["role"], tenant=item["tenant"],
                                        department=params.get("department"),
                                        display_name=params.get("display_name"), allow_admin=True)
        code = await self.accounts.issue_enrolment_code(params["username"])
        return {"username": params["username"], "role": params["role"], **code}
