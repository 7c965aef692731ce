"""The directory: tenants, departments and their scopes, users (creation, appointment checks,
personal data, the demo administrator, local users for external identities), OAuth clients, and
what a standing grant's owner may do now.

`UserDirectory` is mixed into `SecurityService`; it hashes passwords through `PasswordHashing` and
writes and audits through the service's plumbing (declared on `LoginDefence`).
"""

from __future__ import annotations

import contextlib
import hashlib
import secrets
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

import pyotp
from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from cityos.core import clock
from cityos.core.errors import AlreadyExists, BadRequestData, ResourceNotFound
from cityos.security import crypto
from cityos.security.audit import AuditEvent
from cityos.security.errors import Forbidden
from cityos.security.logins import LoginDefence
from cityos.security.models import clients, departments, tenants, users
from cityos.security.passwords import PasswordHashing, weak_password_reason
from cityos.security.policy import ADMIN_ROLES, USER_ROLES, Principal, Role, appointment_approval, may_manage_user
from cityos.security.tokens import InvalidToken, sha256_hex

USERNAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-@")

crypto.register_encrypted(users, "id", "totp_secret")
crypto.register_encrypted(users, "id", "phone")
crypto.register_encrypted(users, "id", "id_number")


@dataclass
class NewUser:
    id: str
    username: str
    totp_secret: str | None = None

    def totp_uri(self, issuer: str = "CityOS") -> str | None:
        if self.totp_secret is None:
            return None
        return pyotp.TOTP(self.totp_secret).provisioning_uri(name=self.username, issuer_name=issuer)


class UserDirectory(PasswordHashing, LoginDefence):
    """Mixed into `SecurityService`, which provides the key ring and the plumbing."""

    keyring: crypto.KeyRing

    # ------------------------------------------------------------------ tenants and departments

    async def ensure_tenant(self, name: str) -> None:
        async with self.write() as conn:
            await conn.execute(self._insert(tenants).values(name=name, created_at=clock.now())
                               .on_conflict_do_nothing(index_elements=["name"]))

    async def add_department(self, dept_id: str, name: str, tenant: str = "", parent: str | None = None,
                             districts: list[str] | None = None, by: Principal | None = None) -> None:
        async with self.write() as conn:
            if parent is not None and (await conn.execute(
                    select(departments.c.id).where(departments.c.id == parent))).first() is None:
                raise BadRequestData(f"no department {parent!r}")
            found = (await conn.execute(select(departments.c.id).where(departments.c.id == dept_id))).first()
            if found:
                raise AlreadyExists(f"department {dept_id!r} exists")
            await conn.execute(insert(departments).values(id=dept_id, tenant=tenant, name=name, parent=parent,
                                                          districts=list(districts or [])))
        await self.record(AuditEvent.of(by, "department.create", f"department:{dept_id}", tenant=tenant,
                                        parent=parent, districts=districts or []))

    async def department_scope(self, conn: AsyncConnection, dept: str | None) -> tuple[list[str], list[str]]:
        """The department and every department below it, and all their districts."""
        if dept is None:
            return [], []
        rows = (await conn.execute(select(departments.c.id, departments.c.parent, departments.c.districts))).all()
        children: dict[str | None, list[str]] = {}
        districts: dict[str, list[str]] = {}
        for row in rows:
            children.setdefault(row.parent, []).append(row.id)
            districts[row.id] = list(row.districts or [])
        found, stack = [], [dept]
        while stack:
            current = stack.pop()
            if current in found:
                continue
            found.append(current)
            stack.extend(children.get(current, []))
        return found, sorted({d for dep in found for d in districts.get(dep, [])})

    # ------------------------------------------------------------------ users

    def _check_username(self, username: str) -> None:
        if not 1 <= len(username) <= 128 or not set(username) <= USERNAME_CHARS:
            raise BadRequestData("a user name is 1-128 letters, digits or ._-@")

    async def create_user(self, username: str, password: str | None, role: str, tenant: str = "",
                          department: str | None = None, display_name: str | None = None,
                          phone: str | None = None, id_number: str | None = None, with_totp: bool = False,
                          by: Principal | None = None, allow_admin: bool = False,
                          check_strength: bool = True) -> NewUser:
        """Create a user.

        `by` (an API caller) is checked here: a dept_admin creates department roles in its own
        departments only; tenant-wide and administrator roles need a two-person approval (kinds
        create_user, assign_role, assign_admin_role). `allow_admin` is the trusted path (CLI
        bootstrap, an executed approval); without `by` (in-process callers) only administrator
        roles need it.
        """
        self._check_username(username)
        if role not in USER_ROLES:
            raise BadRequestData(f"unknown role {role!r}; one of {', '.join(USER_ROLES)}")
        if not allow_admin:
            if by is not None:
                await self.check_appointment(by, tenant, role, department, f"user:{username}")
            elif role in ADMIN_ROLES:
                raise Forbidden("an administrator role needs a two-person approval (kind assign_admin_role)")
        if password is not None and check_strength:
            self.check_password(password, username, display_name, phone)
        user_id = uuid.uuid4().hex
        secret = pyotp.random_base32() if with_totp else None
        password_hash = await self.hash_password(password) if password is not None else None
        async with self.write() as conn:
            if (await conn.execute(select(users.c.id).where(users.c.username == username))).first():
                raise AlreadyExists(f"user {username!r} exists")
            await conn.execute(insert(users).values(
                id=user_id, username=username, tenant=tenant, display_name=display_name,
                password_hash=password_hash, role=role,
                department=department, phone=self.keyring.encrypt(phone) if phone else None,
                id_number=self.keyring.encrypt(id_number) if id_number else None,
                totp_secret=self.keyring.encrypt(secret) if secret else None, totp_enabled=secret is not None,
                failed_logins=0, disabled=False, created_at=clock.now()))
        await self.record(AuditEvent.of(by, "user.create", f"user:{username}", tenant=tenant, role_assigned=role,
                                        department=department))
        return NewUser(user_id, username, secret)

    def check_password(self, password: str, username: str | None = None, *personal: str | None) -> None:
        reason = weak_password_reason(password, username, personal, self.settings.password_min_score)
        if reason:
            raise BadRequestData(f"the password is too weak: {reason}")

    async def check_appointment(self, by: Principal, tenant: str, role: str, department: str | None,
                                resource: str) -> None:
        """May `by` give someone `role` in `department` alone? Raises Forbidden (audited) when not."""
        needed = appointment_approval(role, department)
        if needed is not None:
            reason = (f"role {role}{'' if department else ' without a department'} is tenant-wide or administrative:"
                      " it needs a two-person approval (POST /auth/approvals, kind create_user or "
                      f"{'assign_admin_role' if role in ADMIN_ROLES else 'assign_role'})")
        else:
            decision = may_manage_user(by, "user.manage", tenant, role, department)
            reason = "" if decision else decision.reason
        if reason:
            await self.record(AuditEvent.of(by, "user.appoint", resource, "denied", reason=reason, role_set=role,
                                            department=department))
            raise Forbidden(reason)

    async def check_manage(self, by: Principal | None, action: str, user: dict[str, Any]) -> None:
        """May `by` do `action` to this existing user? None is the trusted in-process caller."""
        if by is None:
            return
        decision = may_manage_user(by, action, user["tenant"], user["role"], user["department"])
        if not decision:
            await self.record(AuditEvent.of(by, action, f"user:{user['username']}", "denied",
                                            reason=decision.reason))
            raise Forbidden(f"{action}: {decision.reason}")

    async def list_users(self, tenant: str | None = None) -> list[dict[str, Any]]:
        stmt = select(users.c.id, users.c.username, users.c.tenant, users.c.role, users.c.department,
                      users.c.display_name, users.c.totp_enabled, users.c.disabled, users.c.disabled_at,
                      users.c.locked_until,
                      users.c.failed_logins, users.c.external_iss).order_by(users.c.username)
        if tenant is not None:
            stmt = stmt.where(users.c.tenant == tenant)
        async with self.engine.connect() as conn:
            return [dict(r) for r in (await conn.execute(stmt)).mappings()]

    async def get_user(self, username: str) -> dict[str, Any]:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(users).where(users.c.username == username))).mappings().first()
        if row is None:
            raise ResourceNotFound(f"no user {username!r}")
        return dict(row)

    def personal_data(self, user: dict[str, Any]) -> dict[str, str | None]:
        """The decrypted personal data of a user row (callers mask it unless the reader is cleared)."""
        return {"phone": self.keyring.decrypt(user["phone"]) if user.get("phone") else None,
                "id_number": self.keyring.decrypt(user["id_number"]) if user.get("id_number") else None}

    async def ensure_demo_admin(self, username: str = "admin", tenant: str = "") -> tuple[str, str, str] | None:
        """Create the demo's sys_admin once; returns (username, password, TOTP secret) to print once, else None.

        The password is random and the second factor enrolled at once: a staff member's first factor
        otherwise needs an enrolment code from an administrator, and this is the first one.
        """
        async with self.engine.connect() as conn:
            if (await conn.execute(select(users.c.id).where(users.c.username == username))).first():
                return None
        password = self.settings.admin_password or (secrets.token_urlsafe(12) + "-Aa1")
        reason = weak_password_reason(password, username)
        if reason and self.settings.production:
            raise RuntimeError(f"refusing a weak administrator password ({reason})")
        try:
            new = await self.create_user(username, password, Role.SYS_ADMIN.value, tenant=tenant, allow_admin=True,
                                         check_strength=False, with_totp=True)
        except AlreadyExists:
            return None
        return username, password, str(new.totp_secret)

    # ------------------------------------------------------------------ clients (client_credentials)

    async def create_client(self, client_id: str, role: str, tenant: str = "", department: str | None = None,
                            by: Principal | None = None) -> str:
        if role in ADMIN_ROLES or role not in USER_ROLES:
            raise BadRequestData("a client has a non-administrator user role")
        secret = "cs_" + secrets.token_urlsafe(32)
        async with self.write() as conn:
            await conn.execute(insert(clients).values(client_id=client_id, secret_hash=sha256_hex(secret),
                                                      tenant=tenant, role=role, department=department,
                                                      disabled=False, created_at=clock.now()))
        await self.record(AuditEvent.of(by, "client.create", f"client:{client_id}", tenant=tenant, role_set=role))
        return secret

    # ------------------------------------------------------------------ external identities (OIDC)

    async def external_user(self, claims: dict[str, Any]) -> dict[str, Any]:
        """The local user for an external identity; created on first sight. Admin roles never come from outside."""
        iss, sub = str(claims["iss"]), str(claims["sub"])[:512]
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(users).where(users.c.external_iss == iss, users.c.external_sub == sub))
                   ).mappings().first()
        if row is not None:
            if row["disabled"] or row["disabled_at"] is not None:
                raise InvalidToken("this account is disabled")
            return dict(row)
        role = str(claims.get(self.settings.oidc_role_claim) or Role.CITIZEN.value)
        if role not in USER_ROLES or role in ADMIN_ROLES:
            role = Role.CITIZEN.value
        host = urlparse(iss).hostname or "sso"
        wanted = str(claims.get("preferred_username") or sub)
        username = "".join(c for c in f"{wanted}@{host}" if c in USERNAME_CHARS)[:128]
        async with self.write() as conn:
            if (await conn.execute(select(users.c.id).where(users.c.username == username))).first():
                username = (f"{hashlib.sha256(sub.encode()).hexdigest()[:16]}@{host}")[:128]
            await conn.execute(insert(users).values(
                id=uuid.uuid4().hex, username=username, tenant=self.settings.oidc_tenant,
                display_name=str(claims.get("name") or "")[:256] or None, password_hash=None, role=role,
                totp_enabled=False, failed_logins=0, disabled=False, external_iss=iss, external_sub=sub,
                created_at=clock.now()))
            created = (await conn.execute(select(users).where(users.c.external_iss == iss,
                                                              users.c.external_sub == sub))).mappings().first()
        assert created is not None
        await self.record(AuditEvent("user.create", f"user:{username}", "success", actor="sso", actor_kind="system",
                                     role="system", tenant=self.settings.oidc_tenant, detail={"iss": iss}))
        return dict(created)

    # ------------------------------------------------------------------ standing grants (subscriptions)

    async def current_owner_claims(self, user_id: str, conn: AsyncConnection | None = None) -> dict[str, Any] | None:
        """What a standing grant of `user_id` (a subscription it owns) may do *now*: the same shape as
        `cityos.hub.subscriptions.service.owner_claims`, from the user's (or OAuth client's, for a
        ``client:<id>`` subject) current row: role, department and the departments and districts below
        it. None when the principal no longer exists or is disabled (``disabled``, or a ``disabled_at``
        column that is set). `conn` lets a caller inside a transaction read on its own connection."""
        async with contextlib.AsyncExitStack() as stack:
            if conn is None:
                conn = await stack.enter_async_context(self.engine.connect())
            if user_id.startswith("client:"):
                client_id = user_id[len("client:"):]
                kind: str
                username: str | None
                row = (await conn.execute(select(clients.c.client_id, clients.c.tenant, clients.c.role,
                                                 clients.c.department, clients.c.disabled)
                                          .where(clients.c.client_id == client_id[:128]))).mappings().first()
                kind, username = "service", client_id
            else:
                columns = [users.c.id, users.c.username, users.c.tenant, users.c.role, users.c.department,
                           users.c.disabled]
                disabled_at = getattr(users.c, "disabled_at", None)  # an account-lifecycle column, where present
                if disabled_at is not None:
                    columns.append(disabled_at.label("disabled_at"))
                row = (await conn.execute(select(*columns).where(users.c.id == user_id[:64]))).mappings().first()
                kind, username = "user", row["username"] if row is not None else None
            if row is None or row["disabled"] or row.get("disabled_at") is not None:
                return None
            deps, districts = await self.department_scope(conn, row["department"])
        return {"id": user_id, "kind": kind, "role": row["role"], "tenant": row["tenant"], "username": username,
                "department": row["department"], "departments": sorted(deps), "districts": sorted(districts)}
