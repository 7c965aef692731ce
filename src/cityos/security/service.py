"""Identity and sessions: users, departments, tenants, OAuth clients, grants, brute-force defence.

No HTTP here: `cityos.security.api` is the thin router over this service. Every login, token
operation and administrative write lands in the audit trail.

`SecurityService` is put together from one mixin per responsibility, each in its own module
(each builds on the ones before it):

- ``logins``: `LoginDefence`, the brute-force defence;
- ``passwords``: `PasswordHashing` (argon2 off the loop, bounded logins) and the strength rule;
- ``directory``: `UserDirectory`: tenants, departments, users, OAuth clients, external identities,
  standing grants' owners;
- ``sessions``: `Sessions`: revocation and bearer authentication;
- ``oauth_grants``: `OAuthGrants`: the OAuth grants and the tokens they issue.

This module keeps the constructor, the plumbing (transactions, audit), the start-up checks and
tenant deletion, and every name it had before the split (``errors`` holds `Forbidden`,
`Unauthorized`, `ServiceUnavailable` and `require_allowed`).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from argon2 import PasswordHasher
from sqlalchemy import Table, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from cityos.core import clock
from cityos.core.db import write_transaction
from cityos.security import crypto
from cityos.security.audit import AuditEvent, AuditLog
from cityos.security.directory import USERNAME_CHARS, NewUser
from cityos.security.errors import Forbidden, ServiceUnavailable, Unauthorized, require_allowed
from cityos.security.logins import OAuthError
from cityos.security.models import tenants, users
from cityos.security.oauth_grants import TOTP_REQUIRED_ROLES, OAuthGrants, client_session
from cityos.security.passwords import WEAK_PASSWORDS, weak_password_reason
from cityos.security.policy import Principal
from cityos.security.sessions import VERIFIED_CACHE_SIZE, principal_from_claims
from cityos.security.settings import SecuritySettings
from cityos.security.tokens import OidcTrust, TokenIssuer

__all__ = [
    "TOTP_REQUIRED_ROLES",
    "USERNAME_CHARS",
    "VERIFIED_CACHE_SIZE",
    "WEAK_PASSWORDS",
    "Forbidden",
    "NewUser",
    "OAuthError",
    "SecurityService",
    "ServiceUnavailable",
    "Unauthorized",
    "client_session",
    "principal_from_claims",
    "require_allowed",
    "weak_password_reason",
]


class SecurityService(OAuthGrants):
    def __init__(self, engine: AsyncEngine, settings: SecuritySettings, issuer: TokenIssuer,
                 keyring: crypto.KeyRing, audit: AuditLog, oidc: OidcTrust | None = None,
                 write_lock: asyncio.Lock | None = None) -> None:
        self.engine = engine
        self.settings = settings
        self.issuer = issuer
        self.keyring = keyring
        self.audit = audit
        self.oidc = oidc
        self._sqlite = engine.dialect.name == "sqlite"
        self._write_lock = write_lock or asyncio.Lock()
        self.hasher = PasswordHasher(time_cost=settings.argon2_time_cost, memory_cost=settings.argon2_memory_kib,
                                     parallelism=1)
        self._dummy_hash = self.hasher.hash(secrets.token_hex(16))
        # argon2 is CPU- and memory-bound and releases the GIL: it runs in this bounded pool, never on
        # the event loop. 0 workers: on the loop (only for the benchmark's before/after comparison).
        self._hash_pool = (ThreadPoolExecutor(max_workers=settings.hash_workers, thread_name_prefix="argon2")
                           if settings.hash_workers > 0 else None)
        self._login_gate: tuple[asyncio.AbstractEventLoop, asyncio.Semaphore] | None = None
        self._revoked: set[str] = set()
        self._verified: dict[str, tuple[Principal, float]] = {}
        self._revoked_loaded = -1e18
        # One reload of the revocation list at a time: concurrent requests that find it stale wait for
        # the reload in flight instead of each opening a connection (connection churn under load).
        self._revoked_reload = asyncio.Lock()
        # Called with the tenant's name when a two-person approved tenant deletion executes.
        self.tenant_deletion_hooks: list[Callable[[str], Awaitable[None]]] = []

    # ------------------------------------------------------------------ plumbing

    @contextlib.asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncConnection]:
        """A write transaction; on SQLite serialised with the process's other writers."""
        async with write_transaction(self.engine, self._write_lock) as conn:
            yield conn

    def _insert(self, table: Table) -> Any:
        return (sqlite.insert(table) if self._sqlite else postgresql.insert(table))

    async def record(self, event: AuditEvent) -> None:
        await self.audit.record(event)

    # ------------------------------------------------------------------ start-up checks

    def production_problems(self) -> list[str]:
        problems: list[str] = []
        if not self.settings.production:
            return problems
        if self.settings.admin_password is not None:
            reason = weak_password_reason(self.settings.admin_password)
            if reason:
                problems.append(f"CITYOS_ADMIN_PASSWORD is weak ({reason})")
        if not self.settings.jwt_key_file:
            problems.append("CITYOS_JWT_KEY_FILE is not set")
        if not self.settings.data_keys:
            problems.append("CITYOS_DATA_KEYS is not set")
        if self.settings.issuer.startswith("http://") and "127.0.0.1" not in self.settings.issuer:
            problems.append("CITYOS_PUBLIC_URL must be https in production")
        return problems

    async def startup(self) -> None:
        problems = self.production_problems()
        if problems:
            raise RuntimeError("refusing to start in production: " + "; ".join(problems))

    # ------------------------------------------------------------------ tenants (executed after approval)

    async def delete_tenant(self, tenant: str) -> dict[str, Any]:
        now = clock.now()
        async with self.write() as conn:
            await conn.execute(self._insert(tenants).values(name=tenant, created_at=now, deleted_at=now)
                               .on_conflict_do_update(index_elements=["name"], set_={"deleted_at": now}))
            ids = [r[0] for r in await conn.execute(select(users.c.id).where(users.c.tenant == tenant))]
            await conn.execute(update(users).where(users.c.tenant == tenant, users.c.disabled_at.is_(None))
                               .values(disabled=True, disabled_at=now))
        for user_id in ids:
            await self.revoke_user_sessions(user_id)
        for hook in self.tenant_deletion_hooks:
            await hook(tenant)
        return {"tenant": tenant, "users_disabled": len(ids), "hooks": len(self.tenant_deletion_hooks)}
