"""The OAuth grants: password (with TOTP and the brute-force defence), client credentials, refresh
(rotation with replay detection) and JWT bearer (RFC 7523, the trusted OIDC issuer), and the
tokens they issue.

`OAuthGrants` is mixed into `SecurityService`; it checks passwords through `PasswordHashing`, counts
failures through `LoginDefence` and revokes a replayed family through `Sessions`.
"""

from __future__ import annotations

import contextlib
import secrets
import uuid
from datetime import timedelta
from typing import Any

import pyotp
from sqlalchemy import insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from cityos.core import clock
from cityos.core.clock import as_utc_or_none
from cityos.security.audit import AuditEvent
from cityos.security.logins import OAuthError
from cityos.security.models import clients, login_failures, refresh_tokens, users
from cityos.security.policy import TOTP_ROLES
from cityos.security.sessions import Sessions
from cityos.security.tokens import new_refresh_token, sha256_hex

TOTP_REQUIRED_ROLES = TOTP_ROLES


class OAuthGrants(Sessions):
    """Mixed into `SecurityService`."""

    # ------------------------------------------------------------------ grants

    async def _issue(self, user: dict[str, Any], mfa: bool, family: str | None = None,
                     conn: AsyncConnection | None = None) -> dict[str, Any]:
        async with contextlib.AsyncExitStack() as stack:
            if conn is None:
                conn = await stack.enter_async_context(self.write())
            deps, districts = await self.department_scope(conn, user["department"])
            family = family or uuid.uuid4().hex
            refresh = new_refresh_token()
            now = clock.now()
            await conn.execute(insert(refresh_tokens).values(
                token_hash=sha256_hex(refresh), family=family, user_id=user["id"], issued_at=now,
                expires_at=now + timedelta(seconds=self.settings.refresh_ttl)))
        claims = {"kind": "user", "usr": user["username"], "role": user["role"], "tnt": user["tenant"],
                  "dep": user["department"], "deps": deps, "dis": districts, "sid": family, "mfa": mfa}
        access, _jti, ttl = self.issuer.issue(user["id"], claims)
        return {"access_token": access, "token_type": "Bearer", "expires_in": ttl, "refresh_token": refresh}

    def check_totp(self, user: dict[str, Any], code: str) -> int | None:
        """The time step `code` matches (±1 step), or None. A step used before does not match again."""
        if not user.get("totp_secret") or not code or not code.isdecimal() or len(code) > 10:
            return None
        totp = pyotp.TOTP(self.keyring.decrypt(user["totp_secret"]))
        now = clock.now()
        step_now = int(now.timestamp()) // totp.interval
        for offset in (0, -1, 1):
            step = step_now + offset
            if secrets.compare_digest(totp.at(step * totp.interval), code):
                if user.get("totp_last_step") is not None and step <= int(user["totp_last_step"]):
                    return None
                return step
        return None

    async def claim_totp_step(self, conn: AsyncConnection, user_id: str, step: int) -> bool:
        """Record `step` as used, atomically: of concurrent logins with one code, exactly one wins."""
        result = await conn.execute(update(users).where(
            users.c.id == user_id, or_(users.c.totp_last_step.is_(None), users.c.totp_last_step < step))
            .values(totp_last_step=step))
        return bool(result.rowcount == 1)

    async def password_user(self, username: str, password: str, ip: str,
                             device: str | None = None) -> tuple[dict[str, Any], bool]:
        """(user row, known device) if the password is right and the account usable; counts failures otherwise.

        Every path runs one argon2 verification (against a dummy hash for unknown users), so unknown
        users, locked or disabled accounts and wrong passwords take the same time and get the same answer.
        """
        username = username[:128]
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(users).where(users.c.username == username))).mappings().first()
        user = dict(row) if row else None
        known = user is not None and await self.known_device(user["id"], device)
        if not known:
            await self.throttle(ip, username)
        async with self.login_slot():
            ok = await self.verify_password(user["password_hash"] if user else None, password)
        if user is None or not ok:
            await self.login_failed(ip, username, user["id"] if user else None,
                                     "wrong password" if user else "unknown user")
            raise OAuthError("invalid_grant", "invalid user name or password")
        locked_until = as_utc_or_none(user["locked_until"])
        if user["disabled"] or user.get("disabled_at") is not None:
            await self.login_failed(ip, username, user["id"], "account disabled", count_account=False)
            raise OAuthError("invalid_grant", "invalid user name or password")
        if locked_until is not None and locked_until > clock.now() and not known:
            await self.login_failed(ip, username, user["id"], "account locked", count_account=False)
            raise OAuthError("invalid_grant", "invalid user name or password")
        if self.hasher.check_needs_rehash(user["password_hash"]):
            new_hash = await self.hash_password(password)
            async with self.write() as conn:
                await conn.execute(update(users).where(users.c.id == user["id"]).values(password_hash=new_hash))
        return user, known

    async def password_grant(self, username: str, password: str, totp: str | None, ip: str,
                             device: str | None = None) -> dict[str, Any]:
        """The password grant; `device` is the known-device token a previous login returned."""
        user, known = await self.password_user(username, password, ip, device)
        step: int | None = None
        if user["role"] in TOTP_REQUIRED_ROLES or user["totp_enabled"]:
            if not user["totp_enabled"]:
                await self.record(AuditEvent("auth.login", f"user:{username}", "denied", actor=username,
                                             actor_kind="user", role=user["role"], tenant=user["tenant"], ip=ip,
                                             detail={"reason": "totp not enrolled"}))
                raise OAuthError("mfa_enrollment_required",
                                 "this role needs TOTP: enrol at POST /auth/totp/enroll with the enrolment code "
                                 "an administrator issued")
            if not totp:
                raise OAuthError("mfa_required", "this account needs a TOTP code in the 'totp' field")
            step = self.check_totp(user, totp)
            if step is None:
                await self.login_failed(ip, username, user["id"], "wrong totp")
                raise OAuthError("invalid_grant", "invalid TOTP code")
        async with self.write() as conn:
            claimed = step is None or await self.claim_totp_step(conn, user["id"], step)
            if claimed:
                await conn.execute(update(users).where(users.c.id == user["id"])
                                   .values(failed_logins=0, locked_until=None))
                # The account's counted failures end here (the source's stay counted).
                await conn.execute(update(login_failures).where(login_failures.c.username == user["username"])
                                   .values(username=None))
                tokens = await self._issue(user, mfa=step is not None, conn=conn)
                if not known:
                    tokens["device_token"] = await self.new_device(conn, user["id"])
        if not claimed:
            await self.login_failed(ip, username, user["id"], "totp code already used")
            raise OAuthError("invalid_grant", "invalid TOTP code")
        await self.record(AuditEvent("auth.login", f"user:{username}", "success", actor=username, actor_kind="user",
                                     role=user["role"], tenant=user["tenant"], ip=ip,
                                     detail={"grant": "password", "mfa": step is not None, "known_device": known}))
        return tokens

    async def client_credentials_grant(self, client_id: str, client_secret: str, ip: str) -> dict[str, Any]:
        if await self.ip_blocked(ip):
            raise OAuthError("access_denied", "too many failed logins from this address; try again later", 429)
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(clients).where(clients.c.client_id == client_id[:128]))).mappings().first()
        if row is None or row["disabled"] or not secrets.compare_digest(row["secret_hash"], sha256_hex(client_secret)):
            await self.login_failed(ip, f"client:{client_id[:100]}", None, "bad client credentials")
            raise OAuthError("invalid_client", "client authentication failed", 401,
                             headers={"WWW-Authenticate": 'Basic realm="cityos"'})
        async with self.engine.connect() as conn:
            deps, districts = await self.department_scope(conn, row["department"])
        # One session id per client: disabling the client revokes it, so its tokens stop at once.
        jti_sid = client_session(client_id)
        claims = {"kind": "service", "usr": client_id, "role": row["role"], "tnt": row["tenant"],
                  "dep": row["department"], "deps": deps, "dis": districts, "sid": jti_sid, "mfa": False}
        access, _jti, ttl = self.issuer.issue(f"client:{client_id}", claims)
        await self.record(AuditEvent("auth.login", f"client:{client_id}", "success", actor=client_id,
                                     actor_kind="service", role=row["role"], tenant=row["tenant"], ip=ip,
                                     detail={"grant": "client_credentials"}))
        return {"access_token": access, "token_type": "Bearer", "expires_in": ttl}

    async def refresh_grant(self, token: str, ip: str) -> dict[str, Any]:
        digest = sha256_hex(token[:512])
        now = clock.now()
        async with self.write() as conn:
            row = (await conn.execute(select(refresh_tokens).where(refresh_tokens.c.token_hash == digest))
                   ).mappings().first()
            if row is None:
                raise OAuthError("invalid_grant", "unknown refresh token")
            won = (await conn.execute(update(refresh_tokens).where(
                refresh_tokens.c.token_hash == digest, refresh_tokens.c.used_at.is_(None),
                refresh_tokens.c.revoked_at.is_(None)).values(used_at=now))).rowcount == 1
            replay = not won and row["revoked_at"] is None
            expired = as_utc_or_none(row["expires_at"]) is not None and as_utc_or_none(row["expires_at"]) <= now  # type: ignore[operator]
            user_row = (await conn.execute(select(users).where(users.c.id == row["user_id"]))).mappings().first()
            user = dict(user_row) if user_row else None
            tokens = None
            if won and not expired and user is not None and not user["disabled"]:
                tokens = await self._issue(user, mfa=False, family=row["family"], conn=conn)
        if replay:
            # A rotated token came back: someone holds a stolen copy. Revoke the whole family.
            await self.revoke_family(row["family"])
            await self.record(AuditEvent("auth.refresh_replay", f"session:{row['family']}", "denied",
                                         actor=(user or {}).get("username", row["user_id"]), actor_kind="user",
                                         ip=ip, detail={"action": "family revoked"}))
            raise OAuthError("invalid_grant", "refresh token reuse detected; the session is revoked")
        if tokens is None:
            raise OAuthError("invalid_grant", "the refresh token is expired, revoked or its user disabled")
        assert user is not None
        await self.record(AuditEvent("auth.refresh", f"session:{row['family']}", "success", actor=user["username"],
                                     actor_kind="user", role=user["role"], tenant=user["tenant"], ip=ip))
        return tokens

    async def jwt_bearer_grant(self, assertion: str, totp: str | None, ip: str) -> dict[str, Any]:
        """RFC 7523: exchange a token of the trusted OIDC issuer for a CityOS session."""
        if self.oidc is None:
            raise OAuthError("unsupported_grant_type", "no external identity provider is configured")
        claims = await self.oidc.verify(assertion, self.settings.max_token_bytes)
        user = await self.external_user(claims)
        amr = claims.get("amr") or []
        mfa = isinstance(amr, list) and bool({"mfa", "otp", "hwk", "swk"} & {str(a) for a in amr})
        if user["role"] in TOTP_REQUIRED_ROLES and not mfa:
            step = self.check_totp(user, totp or "")
            if step is not None:
                async with self.write() as conn:
                    if not await self.claim_totp_step(conn, user["id"], step):
                        step = None
            if step is None:
                raise OAuthError("mfa_required", "the identity provider did not assert MFA; send a TOTP code")
            mfa = True
        tokens = await self._issue(user, mfa=mfa)
        await self.record(AuditEvent("auth.login", f"user:{user['username']}", "success", actor=user["username"],
                                     actor_kind="user", role=user["role"], tenant=user["tenant"], ip=ip,
                                     detail={"grant": "jwt-bearer", "iss": claims.get("iss")}))
        return tokens


def client_session(client_id: str) -> str:
    """The session id every token of an OAuth client carries (64 characters, like other sids)."""
    return "client:" + sha256_hex(client_id)[:57]
