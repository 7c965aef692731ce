"""Account lifecycle: disable and enable, roles and departments, locks, TOTP enrolment and reset,
OAuth clients, and the break-glass recovery code.

Every operation names the acting principal (`by`; None = trusted in-process caller), is checked
here against `cityos.security.policy` (a dept_admin manages department staff of its own
departments only) and is audited. Disabling revokes the user's sessions at once.
"""

from __future__ import annotations

import secrets
import uuid
from datetime import timedelta
from typing import Any

import pyotp
from sqlalchemy import delete, insert, select, update

from cityos.core import clock
from cityos.core.errors import AlreadyExists, BadRequestData, Conflict, ResourceNotFound
from cityos.security.audit import AuditEvent
from cityos.security.directory import NewUser
from cityos.security.errors import Forbidden
from cityos.security.logins import OAuthError
from cityos.security.models import (
    clients,
    departments,
    enrolment_codes,
    known_devices,
    login_failures,
    recovery_codes,
    users,
)
from cityos.security.oauth_grants import client_session
from cityos.security.policy import ADMIN_ROLES, STAFF_ROLES, USER_ROLES, Principal
from cityos.security.service import SecurityService
from cityos.security.tokens import sha256_hex


class AccountService:
    def __init__(self, security: SecurityService) -> None:
        self.sec = security

    async def unlock(self, username: str, by: Principal | None = None) -> None:
        """Lift an account lock: the lock and the account's counted failures are cleared."""
        user = await self.sec.get_user(username)
        await self.sec.check_manage(by, "user.manage", user)
        async with self.sec.write() as conn:
            await conn.execute(update(users).where(users.c.id == user["id"]).values(failed_logins=0, locked_until=None))
            await conn.execute(update(login_failures).where(login_failures.c.username == username)
                               .values(username=None))
        await self.sec.record(AuditEvent.of(by, "user.unlock", f"user:{username}"))

    async def set_role(self, username: str, role: str, by: Principal | None = None,
                       allow_admin: bool = False, department: str | object | None = ...) -> None:
        """Change a user's role (and department, unless `...`); their sessions are revoked."""
        if role not in USER_ROLES:
            raise BadRequestData(f"unknown role {role!r}")
        user = await self.sec.get_user(username)
        new_department = user["department"] if department is ... else department
        assert new_department is None or isinstance(new_department, str)
        if not allow_admin:
            await self.sec.check_manage(by, "user.manage", user)
            if by is not None:
                await self.sec.check_appointment(by, user["tenant"], role, new_department, f"user:{username}")
            elif role in ADMIN_ROLES:
                raise Forbidden("an administrator role needs a two-person approval (kind assign_admin_role)")
        if department is not ... and new_department is not None:
            async with self.sec.engine.connect() as conn:
                if (await conn.execute(select(departments.c.id).where(departments.c.id == new_department))
                        ).first() is None:
                    raise BadRequestData(f"no department {new_department!r}")
        async with self.sec.write() as conn:
            await conn.execute(update(users).where(users.c.id == user["id"])
                               .values(role=role, department=new_department))
        await self.sec.revoke_user_sessions(user["id"])
        await self.sec.record(AuditEvent.of(by, "user.role", f"user:{username}", previous=user["role"], role_set=role,
                                        previous_department=user["department"], department=new_department))

    async def issue_enrolment_code(self, username: str, by: Principal | None = None) -> dict[str, str]:
        """A one-time code (shown once, stored hashed, expiring) with which the user enrols TOTP."""
        user = await self.sec.get_user(username)
        await self.sec.check_manage(by, "user.enrol", user)
        code = "-".join(secrets.token_hex(3).upper() for _ in range(4))
        now = clock.now()
        expires = now + timedelta(seconds=self.sec.settings.enrolment_code_seconds)
        async with self.sec.write() as conn:
            await conn.execute(delete(enrolment_codes).where(enrolment_codes.c.user_id == user["id"]))
            await conn.execute(insert(enrolment_codes).values(
                user_id=user["id"], code_hash=sha256_hex(code), issued_by=(by.label if by else "system")[:256],
                issued_at=now, expires_at=expires))
        await self.sec.record(AuditEvent.of(by, "user.enrolment_code", f"user:{username}",
                                            expires_at=clock.iso(expires)))
        return {"username": username, "enrolment_code": code, "expires_at": clock.iso(expires)}

    async def reset_totp(self, username: str, by: Principal | None = None) -> dict[str, str]:
        """Forget the user's TOTP (lost phone); their sessions end and a new enrolment code is issued."""
        user = await self.sec.get_user(username)
        await self.sec.check_manage(by, "user.reset_totp", user)
        async with self.sec.write() as conn:
            await conn.execute(update(users).where(users.c.id == user["id"])
                               .values(totp_secret=None, totp_enabled=False, totp_last_step=None))
            await conn.execute(delete(known_devices).where(known_devices.c.user_id == user["id"]))
        await self.sec.revoke_user_sessions(user["id"])
        await self.sec.record(AuditEvent.of(by, "auth.totp_reset", f"user:{username}"))
        return await self.issue_enrolment_code(username, by=by)

    async def _consume_enrolment_code(self, user_id: str, code: str | None) -> bool:
        if not code or len(code) > 64:
            return False
        async with self.sec.write() as conn:
            result = await conn.execute(delete(enrolment_codes).where(
                enrolment_codes.c.user_id == user_id, enrolment_codes.c.code_hash == sha256_hex(code.strip().upper()),
                enrolment_codes.c.expires_at > clock.now()))
        return bool(result.rowcount == 1)

    async def totp_enroll(self, username: str, password: str, ip: str, enrolment_code: str | None = None) -> NewUser:
        """Bind a new TOTP secret (confirmed by `totp_confirm`).

        Staff (and accounts without a password yet, whose first password is set here) need the
        one-time enrolment code an administrator issued: the password alone must not be enough to
        bind a second factor. Citizens may add TOTP with their password.
        """
        username = username[:128]
        async with self.sec.engine.connect() as conn:
            row = (await conn.execute(select(users).where(users.c.username == username))).mappings().first()
        first_password = row is not None and row["password_hash"] is None and row["external_iss"] is None
        if first_password:
            assert row is not None
            await self.sec.throttle(ip, username)
            if row["disabled"] or row["disabled_at"] is not None or not await self._consume_enrolment_code(
                    row["id"], enrolment_code):
                await self.sec.login_failed(ip, username, row["id"], "bad enrolment code")
                raise OAuthError("invalid_grant", "invalid user name, password or enrolment code")
            self.sec.check_password(password, username, row["display_name"])
            user = dict(row)
            user["password_hash"] = await self.sec.hash_password(password)
        else:
            user, _known = await self.sec.password_user(username, password, ip)
            if user["totp_enabled"]:
                raise AlreadyExists("TOTP is already enrolled; an administrator resets it")
            if user["role"] in STAFF_ROLES and not await self._consume_enrolment_code(user["id"], enrolment_code):
                await self.sec.login_failed(ip, username, user["id"], "bad enrolment code")
                raise OAuthError("invalid_grant", "staff enrol TOTP with the one-time enrolment code an "
                                                  "administrator issued (field enrolment_code)")
        secret = pyotp.random_base32()
        async with self.sec.write() as conn:
            await conn.execute(update(users).where(users.c.id == user["id"]).values(
                totp_secret=self.sec.keyring.encrypt(secret), password_hash=user["password_hash"]))
        await self.sec.record(AuditEvent("auth.totp_enroll", f"user:{username}", "success", actor=username,
                                     actor_kind="user", role=user["role"], tenant=user["tenant"], ip=ip,
                                     detail={"first_password": first_password}))
        return NewUser(user["id"], username, secret)

    async def totp_confirm(self, username: str, password: str, code: str, ip: str) -> None:
        user, _known = await self.sec.password_user(username, password, ip)
        if user["totp_enabled"]:
            raise AlreadyExists("TOTP is already enrolled")
        step = self.sec.check_totp(user, code)
        claimed = False
        if step is not None:
            async with self.sec.write() as conn:
                claimed = await self.sec.claim_totp_step(conn, user["id"], step)
                if claimed:
                    await conn.execute(update(users).where(users.c.id == user["id"]).values(totp_enabled=True))
        if not claimed:
            await self.sec.login_failed(ip, username, user["id"], "wrong totp at enrolment")
            raise OAuthError("invalid_grant", "invalid TOTP code")
        await self.sec.record(AuditEvent("auth.totp_confirm", f"user:{username}", "success", actor=username,
                                     actor_kind="user", role=user["role"], tenant=user["tenant"], ip=ip))


    # ------------------------------------------------------------------ password reset

    async def reset_password(self, user_id: str, password: str, proof: str) -> str:
        """Set a citizen's or company's new password after `proof` (e.g. a phone code) was checked by the caller.

        Staff reset through their administrators (an enrolment code), never here. The account's
        sessions end and its counted failures and lock are cleared. Returns the user name.
        """
        async with self.sec.engine.connect() as conn:
            row = (await conn.execute(select(users).where(users.c.id == user_id[:64]))).mappings().first()
        if row is None:
            raise ResourceNotFound("no such account")
        if row["role"] in STAFF_ROLES:
            raise Forbidden("staff passwords are reset by an administrator")
        if row["disabled"] or row["disabled_at"] is not None:
            raise Forbidden("the account is disabled")
        self.sec.check_password(password, row["username"], row["display_name"])
        digest = await self.sec.hash_password(password)
        async with self.sec.write() as conn:
            await conn.execute(update(users).where(users.c.id == row["id"]).values(
                password_hash=digest, failed_logins=0, locked_until=None))
        await self.sec.revoke_user_sessions(row["id"])
        await self.sec.record(AuditEvent("user.password_reset", f"user:{row['username']}", "success",
                                         actor=row["username"], actor_kind="user", role=row["role"],
                                         tenant=row["tenant"], detail={"proof": proof[:64]}))
        return str(row["username"])

    # ------------------------------------------------------------------ disable / enable

    async def disable(self, username: str, by: Principal | None = None, reason: str = "") -> dict[str, Any]:
        """Disable an account: no login, no refresh, and its current sessions are revoked at once."""
        user = await self.sec.get_user(username)
        await self.sec.check_manage(by, "user.disable", user)
        if by is not None and by.id == user["id"]:
            raise Forbidden("an administrator cannot disable their own account")
        now = clock.now()
        async with self.sec.write() as conn:
            await conn.execute(update(users).where(users.c.id == user["id"], users.c.disabled_at.is_(None))
                               .values(disabled=True, disabled_at=now))
        await self.sec.revoke_user_sessions(user["id"])
        await self.sec.record(AuditEvent.of(by, "user.disable", f"user:{username}", reason=reason[:500]))
        return {"username": username, "disabled": True,
                "disabled_at": clock.iso(user["disabled_at"] or now)}

    async def enable(self, username: str, by: Principal | None = None) -> dict[str, Any]:
        user = await self.sec.get_user(username)
        await self.sec.check_manage(by, "user.disable", user)
        async with self.sec.write() as conn:
            await conn.execute(update(users).where(users.c.id == user["id"]).values(disabled=False, disabled_at=None))
        await self.sec.record(AuditEvent.of(by, "user.enable", f"user:{username}"))
        return {"username": username, "disabled": False}

    # ------------------------------------------------------------------ OAuth clients

    async def create_client(self, client_id: str, role: str, tenant: str = "", department: str | None = None,
                            by: Principal | None = None) -> str:
        """A client_credentials client; returns its secret (shown once, stored as a digest)."""
        if not 1 <= len(client_id) <= 128 or not set(client_id) <= set(
                "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-"):
            raise BadRequestData("a client id is 1-128 letters, digits or ._-")
        if role in ADMIN_ROLES or role not in USER_ROLES:
            raise BadRequestData(f"a client has a non-administrator role: one of "
                                 f"{', '.join(r for r in USER_ROLES if r not in ADMIN_ROLES)}")
        async with self.sec.engine.connect() as conn:
            if (await conn.execute(select(clients.c.client_id).where(clients.c.client_id == client_id))).first():
                raise AlreadyExists(f"client {client_id!r} exists")
        return await self.sec.create_client(client_id, role, tenant=tenant, department=department, by=by)

    async def list_clients(self, tenant: str | None = None) -> list[dict[str, Any]]:
        stmt = select(clients.c.client_id, clients.c.tenant, clients.c.role, clients.c.department,
                      clients.c.disabled, clients.c.created_at).order_by(clients.c.client_id)
        if tenant is not None:
            stmt = stmt.where(clients.c.tenant == tenant)
        async with self.sec.engine.connect() as conn:
            rows = [dict(r) for r in (await conn.execute(stmt)).mappings()]
        for row in rows:
            row["created_at"] = clock.iso(row["created_at"])
        return rows

    async def get_client(self, client_id: str) -> dict[str, Any]:
        async with self.sec.engine.connect() as conn:
            row = (await conn.execute(select(clients).where(clients.c.client_id == client_id[:128]))).mappings().first()
        if row is None:
            raise ResourceNotFound(f"no client {client_id!r}")
        return dict(row)

    async def disable_client(self, client_id: str, by: Principal | None = None) -> None:
        """Disable a client; its access tokens (one session per client) stop at the next request."""
        await self.get_client(client_id)
        async with self.sec.write() as conn:
            await conn.execute(update(clients).where(clients.c.client_id == client_id).values(disabled=True))
        await self.sec.revoke_family(client_session(client_id))
        await self.sec.record(AuditEvent.of(by, "client.disable", f"client:{client_id}"))

    # ------------------------------------------------------------------ break-glass recovery code

    async def create_recovery_code(self, by: Principal | None = None) -> str | None:
        """The installation's recovery code, created once (with the first administrator) and shown once.

        None when an unused one exists already. It stands in for the second person when an
        administrator is appointed and no other administrator exists (`use_recovery_code`).
        """
        async with self.sec.engine.connect() as conn:
            if (await conn.execute(select(recovery_codes.c.id).where(recovery_codes.c.used_at.is_(None)))).first():
                return None
        code = "RC-" + "-".join(secrets.token_hex(4).upper() for _ in range(6))
        digest = await self.sec.hash_password(code)
        async with self.sec.write() as conn:
            await conn.execute(insert(recovery_codes).values(id=uuid.uuid4().hex, code_hash=digest,
                                                             created_at=clock.now()))
        await self.sec.record(AuditEvent.of(by, "recovery_code.create", "recovery_code"))
        return code

    async def use_recovery_code(self, code: str, approval_id: str) -> None:
        """Spend the recovery code (once) for `approval_id`; raises Forbidden when it does not match."""
        async with self.sec.engine.connect() as conn:
            rows = (await conn.execute(select(recovery_codes.c.id, recovery_codes.c.code_hash)
                                       .where(recovery_codes.c.used_at.is_(None)))).all()
        match = None
        for row in rows:
            if await self.sec.verify_password(row.code_hash, code.strip()):
                match = row.id
        if match is None:
            await self.sec.record(AuditEvent("recovery_code.use", f"approval:{approval_id}", "denied",
                                             actor="break-glass", actor_kind="system", role="system"))
            raise Forbidden("the recovery code does not match an unused recovery code")
        async with self.sec.write() as conn:
            spent = (await conn.execute(update(recovery_codes).where(
                recovery_codes.c.id == match, recovery_codes.c.used_at.is_(None))
                .values(used_at=clock.now(), used_for=approval_id[:64]))).rowcount
        if spent != 1:
            raise Conflict("the recovery code was used concurrently")
        await self.sec.record(AuditEvent("recovery_code.use", f"approval:{approval_id}", "success",
                                         actor="break-glass", actor_kind="system", role="system"))
