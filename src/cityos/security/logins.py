"""Brute-force defence for the token endpoint (OWASP ASVS V2.2, Authentication Cheat Sheet).

- Failures are counted per source address and per account name in sliding windows that age out
  (`sec_login_failures`); names are counted whether or not the account exists.
- Progressive delays: past a few failures, the next attempt from that source or for that name
  must wait exponentially longer (429 + Retry-After), capped.
- An account with `account_fail_limit` failures in its window is locked for unknown devices; a
  device that completed a login before (its `device_token`, OWASP's "device cookie") passes the
  lock, the delays and a source block, so an attacker cannot lock the administrator out. An
  administrator can lift a lock.
- A source with `ip_fail_limit` failures in its window is blocked for `ip_block_seconds`.

Mixed into `SecurityService`, which provides the engine, settings, transactions and the audit.
"""

from __future__ import annotations

import secrets
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Table, delete, func, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from cityos.core import clock
from cityos.core.clock import as_utc_or_none
from cityos.core.errors import ProblemError
from cityos.security.audit import AuditEvent
from cityos.security.models import ip_blocks, known_devices, login_failures, rate_limits, users
from cityos.security.policy import Principal
from cityos.security.settings import SecuritySettings
from cityos.security.tokens import sha256_hex

FOREVER = datetime(9999, 1, 1, tzinfo=UTC)


class OAuthError(ProblemError):
    """An RFC 6749 §5.2 error, in a ProblemDetails body that also has `error` and `error_description`."""

    status, error_type, title = 400, "https://cityos.dev/errors/OAuth", "Token request refused"

    def __init__(self, error: str, description: str, status: int = 400, headers: dict[str, str] | None = None) -> None:
        super().__init__(description, headers=headers, error=error, error_description=description)
        self.status = status


class TooManyRequests(ProblemError):
    status, error_type, title = 429, "https://cityos.dev/errors/TooManyRequests", "Too many requests"


class LoginDefence:
    engine: AsyncEngine
    settings: SecuritySettings

    def write(self) -> AbstractAsyncContextManager[AsyncConnection]:
        raise NotImplementedError  # SecurityService.write

    def _insert(self, table: Table) -> Any:
        raise NotImplementedError  # SecurityService._insert

    async def record(self, event: AuditEvent) -> None:
        raise NotImplementedError  # SecurityService.record

    async def rate_limit(self, bucket: str, limit: int, window_seconds: int = 60) -> None:
        now = clock.now()
        window = int(now.timestamp()) // window_seconds
        stmt = (self._insert(rate_limits).values(bucket=bucket[:256], window=window, count=1)
                .on_conflict_do_update(index_elements=["bucket", "window"],
                                       set_={"count": rate_limits.c.count + 1})
                .returning(rate_limits.c.count))
        async with self.write() as conn:
            count = int((await conn.execute(stmt)).scalar_one())
            if count == 1:
                await conn.execute(delete(rate_limits).where(rate_limits.c.bucket == bucket[:256],
                                                             rate_limits.c.window < window))
        if count > limit:
            retry = window_seconds - int(now.timestamp()) % window_seconds
            raise TooManyRequests(f"more than {limit} requests in {window_seconds} s",
                                  headers={"Retry-After": str(retry)})

    async def ip_blocked(self, ip: str) -> datetime | None:
        async with self.engine.connect() as conn:
            until = (await conn.execute(select(ip_blocks.c.blocked_until).where(ip_blocks.c.ip == ip))).scalar()
        until = as_utc_or_none(until)
        return until if until is not None and until > clock.now() else None

    def _delay(self, failures: int, last: datetime | None, after: int) -> float:
        """Seconds still to wait after `failures` failures, the newest at `last` (progressive delay)."""
        if failures < after or last is None:
            return 0.0
        s = self.settings
        delay = min(s.login_delay_base * 2 ** (failures - after), s.login_delay_max)
        return (last + timedelta(seconds=delay) - clock.now()).total_seconds()

    async def throttle(self, ip: str, username: str) -> None:
        """Refuse (429, Retry-After) while this source is blocked or a progressive delay for this
        source or this account name runs. Names are counted whether or not they exist, so the
        answer says nothing about which accounts exist."""
        s, now = self.settings, clock.now()
        if await self.ip_blocked(ip):
            await self.record(AuditEvent("auth.login", f"user:{username}", "denied", actor=username,
                                         actor_kind="user", ip=ip, detail={"reason": "ip blocked"}))
            raise OAuthError("access_denied", "too many failed logins from this address; try again later", 429)
        async with self.engine.connect() as conn:
            account = (await conn.execute(select(func.count(), func.max(login_failures.c.at)).where(
                login_failures.c.username == username,
                login_failures.c.at >= now - timedelta(seconds=s.account_fail_window)))).one()
            source = (await conn.execute(select(func.count(), func.max(login_failures.c.at)).where(
                login_failures.c.ip == ip, login_failures.c.at >= now - timedelta(seconds=s.ip_fail_window)))).one()
        wait = max(self._delay(int(account[0]), as_utc_or_none(account[1]), s.login_delay_after),
                   self._delay(int(source[0]), as_utc_or_none(source[1]), s.ip_delay_after))
        if wait > 0:
            await self.record(AuditEvent("auth.login", f"user:{username}", "denied", actor=username,
                                         actor_kind="user", ip=ip, detail={"reason": "login delay"}))
            raise OAuthError("access_denied", "too many failed logins; wait before trying again", 429,
                             headers={"Retry-After": str(max(1, int(wait + 0.999)))})

    async def login_failed(self, ip: str, username: str | None, user_id: str | None, reason: str,
                            count_account: bool = True) -> None:
        """Record a failure for the source and (unless `count_account` is False) the account name.

        Failures are counted in sliding windows and age out; an account is locked while it has
        `account_fail_limit` failures in its window (or until `account_lock_seconds` after the lock).
        """
        now = clock.now()
        s = self.settings
        locked = blocked = False
        name = (username or "")[:128]
        async with self.write() as conn:
            horizon = now - timedelta(seconds=max(s.ip_fail_window, s.account_fail_window))
            await conn.execute(delete(login_failures).where(login_failures.c.ip == ip, login_failures.c.at < horizon))
            await conn.execute(insert(login_failures).values(ip=ip, username=name if count_account else None, at=now))
            if user_id is not None and count_account:
                failures = int((await conn.execute(select(func.count()).select_from(login_failures).where(
                    login_failures.c.username == name,
                    login_failures.c.at >= now - timedelta(seconds=s.account_fail_window)))).scalar_one())
                values: dict[str, Any] = {"failed_logins": failures}
                if failures >= s.account_fail_limit:
                    until = now + timedelta(seconds=s.account_lock_seconds) if s.account_lock_seconds else FOREVER
                    locked = (await conn.execute(update(users).where(users.c.id == user_id, or_(
                        users.c.locked_until.is_(None), users.c.locked_until < now)).values(locked_until=until,
                                                                                           **values))).rowcount == 1
                if not locked:
                    await conn.execute(update(users).where(users.c.id == user_id).values(**values))
            since = now - timedelta(seconds=s.ip_fail_window)
            count = int((await conn.execute(select(func.count()).select_from(login_failures).where(
                login_failures.c.ip == ip, login_failures.c.at >= since))).scalar_one())
            if count >= s.ip_fail_limit:
                until = now + timedelta(seconds=s.ip_block_seconds)
                await conn.execute(self._insert(ip_blocks).values(ip=ip, blocked_until=until, reason="failed logins")
                                   .on_conflict_do_update(index_elements=["ip"], set_={"blocked_until": until}))
                blocked = True
        await self.record(AuditEvent("auth.login", f"user:{username or ''}", "failure", actor=username or "anonymous",
                                     actor_kind="user", ip=ip, detail={"reason": reason}))
        if locked:
            await self.record(AuditEvent("auth.account_locked", f"user:{username}", "success", actor="system",
                                         actor_kind="system", role="system", ip=ip))
        if blocked:
            await self.record(AuditEvent("auth.ip_blocked", f"ip:{ip}", "success", actor="system",
                                         actor_kind="system", role="system", ip=ip,
                                         detail={"failures": s.ip_fail_limit}))

    # ------------------------------------------------------------------ known devices (device cookies)

    async def known_device(self, user_id: str, token: str | None) -> bool:
        if not token or len(token) > 128:
            return False
        async with self.engine.connect() as conn:
            found = (await conn.execute(select(known_devices.c.user_id).where(
                known_devices.c.token_hash == sha256_hex(token), known_devices.c.user_id == user_id,
                known_devices.c.expires_at > clock.now()))).first()
        return found is not None

    async def new_device(self, conn: AsyncConnection, user_id: str) -> str:
        token = "dv_" + secrets.token_urlsafe(32)
        now = clock.now()
        await conn.execute(delete(known_devices).where(known_devices.c.user_id == user_id,
                                                       known_devices.c.expires_at <= now))
        await conn.execute(insert(known_devices).values(
            token_hash=sha256_hex(token), user_id=user_id, created_at=now,
            expires_at=now + timedelta(seconds=self.settings.device_token_seconds)))
        return token

    async def unblock_ip(self, ip: str, by: Principal | None = None) -> None:
        async with self.write() as conn:
            await conn.execute(delete(ip_blocks).where(ip_blocks.c.ip == ip))
            await conn.execute(delete(login_failures).where(login_failures.c.ip == ip))
        await self.record(AuditEvent.of(by, "auth.ip_unblock", f"ip:{ip}"))
