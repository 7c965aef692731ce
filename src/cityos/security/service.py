"""Identity and sessions: users, departments, tenants, OAuth clients, grants, brute-force defence.

No HTTP here: `cityos.security.api` is the thin router over this service. Every login, token
operation and administrative write lands in the audit trail.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import urlparse

import pyotp
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import Table, insert, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from zxcvbn import zxcvbn

from cityos.core import clock
from cityos.core.clock import as_utc_or_none
from cityos.core.db import write_transaction
from cityos.core.errors import AlreadyExists, BadRequestData, ProblemError, ResourceNotFound
from cityos.security import crypto
from cityos.security.audit import AuditEvent, AuditLog
from cityos.security.logins import LoginDefence, OAuthError
from cityos.security.models import (
    clients,
    departments,
    login_failures,
    refresh_tokens,
    revocations,
    tenants,
    users,
)
from cityos.security.policy import (
    ADMIN_ROLES,
    TOTP_ROLES,
    USER_ROLES,
    Principal,
    Resource,
    Role,
    appointment_approval,
    authorize,
    may_manage_user,
)
from cityos.security.settings import SecuritySettings
from cityos.security.tokens import (
    InvalidToken,
    OidcTrust,
    TokenIssuer,
    new_refresh_token,
    sha256_hex,
    unverified_issuer,
)

TOTP_REQUIRED_ROLES = TOTP_ROLES
WEAK_PASSWORDS = frozenset({"admin", "admin123", "password", "password1", "123456", "12345678", "123456789",
                            "changeme", "change-me", "cityos", "cityos123", "qwerty", "letmein", "secret",
                            "admin@123", "p@ssw0rd", "passw0rd", "root", "toor", "default", "demo"})
VERIFIED_CACHE_SIZE = 10_000
USERNAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-@")

crypto.register_encrypted(users, "id", "totp_secret")
crypto.register_encrypted(users, "id", "phone")
crypto.register_encrypted(users, "id", "id_number")


class Forbidden(ProblemError):
    status, error_type, title = 403, "https://cityos.dev/errors/Forbidden", "Forbidden"


class Unauthorized(ProblemError):
    status, error_type, title = 401, "https://cityos.dev/errors/Unauthorized", "Authentication required"

    def __init__(self, detail: str = "this operation needs a bearer token") -> None:
        super().__init__(detail, headers={"WWW-Authenticate": 'Bearer realm="cityos"'})


def require_allowed(principal: Principal | None, action: str, resource: Resource) -> None:
    """`authorize` for a domain service: 401 for an anonymous caller, 403 for a signed-in one."""
    decision = authorize(principal, action, resource)
    if not decision:
        raise Unauthorized() if principal is None else Forbidden(f"{action}: {decision.reason}")


class ServiceUnavailable(ProblemError):
    status, error_type, title = 503, "https://cityos.dev/errors/ServiceUnavailable", "Service busy"


def weak_password_reason(password: str, username: str | None = None, user_inputs: Iterable[str | None] = (),
                         min_score: int = 3) -> str | None:
    """Why `password` is too weak, or None.

    At least 12 characters, not a known default, not containing the user name, and a zxcvbn score of
    at least `min_score` (0-4) with the user's own data (user name, name, phone) as `user_inputs`,
    so that dictionary words, keyboard patterns, repeats and personal data count for little.
    """
    if len(password) < 12:
        return "at least 12 characters"
    if password.lower() in WEAK_PASSWORDS or password.lower().rstrip("!0123456789") in WEAK_PASSWORDS:
        return "a well-known default password"
    if username and username.lower() in password.lower():
        return "must not contain the user name"
    inputs: list[str] = []
    for value in (username, *user_inputs):
        if value:
            # "Olga Wang" is matched as olga, wang and olgawang; "olga.w@x" as olga, w and x.
            words = [w for w in re.split(r"[\s._@+-]+", str(value).lower()) if w]
            inputs.extend([str(value).lower(), *words, "".join(words)])
    # zxcvbn still rates personal data generously when it is one of several parts (its score grows
    # with the number of parts): a password holds none of it (ASVS 2.1.7's context-specific words).
    lowered = password.lower()
    if any(len(word) >= 4 and word in lowered for word in inputs):
        return "must not contain the user's name, user name or phone number"
    # zxcvbn's matching is superlinear in the length; 72 characters is its own default cap.
    result = zxcvbn(password[:72], user_inputs=inputs)
    if int(result["score"]) < min_score:
        warning = result["feedback"].get("warning") or "too easy to guess"
        return f"too easy to guess (strength {result['score']}/4, need {min_score}): {warning}"
    return None


@dataclass
class NewUser:
    id: str
    username: str
    totp_secret: str | None = None

    def totp_uri(self, issuer: str = "CityOS") -> str | None:
        if self.totp_secret is None:
            return None
        return pyotp.TOTP(self.totp_secret).provisioning_uri(name=self.username, issuer_name=issuer)


class SecurityService(LoginDefence):
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

    # ------------------------------------------------------------------ password hashing (off the loop)

    async def _off_loop(self, fn: Callable[..., Any], *args: Any) -> Any:
        if self._hash_pool is None:
            return fn(*args)
        return await asyncio.get_running_loop().run_in_executor(self._hash_pool, fn, *args)

    async def hash_password(self, password: str) -> str:
        return str(await self._off_loop(self.hasher.hash, password))

    async def verify_password(self, password_hash: str | None, password: str) -> bool:
        """argon2 verification in the pool; against a dummy hash when there is none (same time)."""
        def check() -> bool:
            try:
                return bool(self.hasher.verify(password_hash or self._dummy_hash, password)) and bool(password_hash)
            except (VerificationError, InvalidHashError):
                return False

        return bool(await self._off_loop(check))

    @contextlib.asynccontextmanager
    async def login_slot(self) -> AsyncIterator[None]:
        """At most `login_concurrency` password checks at once; a caller waits briefly, then gets 503."""
        loop = asyncio.get_running_loop()
        if self._login_gate is None or self._login_gate[0] is not loop:
            self._login_gate = (loop, asyncio.Semaphore(max(1, self.settings.login_concurrency)))
        gate = self._login_gate[1]
        try:
            await asyncio.wait_for(gate.acquire(), timeout=self.settings.login_queue_seconds)
        except TimeoutError:
            raise ServiceUnavailable("too many logins at once; try again shortly",
                                     headers={"Retry-After": "1"}) from None
        try:
            yield
        finally:
            gate.release()

    def close(self) -> None:
        if self._hash_pool is not None:
            self._hash_pool.shutdown(wait=False, cancel_futures=True)

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

    # ------------------------------------------------------------------ revocation

    async def revoke_family(self, family: str) -> None:
        now = clock.now()
        async with self.write() as conn:
            await conn.execute(update(refresh_tokens).where(refresh_tokens.c.family == family,
                                                            refresh_tokens.c.revoked_at.is_(None))
                               .values(revoked_at=now))
            await conn.execute(self._insert(revocations).values(
                sid=family, revoked_at=now, expires_at=now + timedelta(seconds=self.settings.access_ttl + 120))
                .on_conflict_do_nothing(index_elements=["sid"]))
        self._revoked.add(family)

    async def revoke_user_sessions(self, user_id: str) -> None:
        async with self.engine.connect() as conn:
            families = {r[0] for r in await conn.execute(
                select(refresh_tokens.c.family).where(refresh_tokens.c.user_id == user_id,
                                                      refresh_tokens.c.revoked_at.is_(None)))}
        for family in families:
            await self.revoke_family(family)

    async def revoke(self, token: str, ip: str, by: Principal | None = None) -> None:
        """RFC 7009: revoke a refresh token (its family) or an access token (its session).

        Unknown tokens are ignored.
        """
        if token.startswith("rt_"):
            async with self.engine.connect() as conn:
                family = (await conn.execute(select(refresh_tokens.c.family).where(
                    refresh_tokens.c.token_hash == sha256_hex(token[:512])))).scalar()
        else:
            try:
                family = self.issuer.verify(token).get("sid")
            except InvalidToken:
                family = None
        if family:
            await self.revoke_family(str(family))
            await self.record(AuditEvent.of(by, "auth.revoke", f"session:{family}", ip=ip))

    async def is_revoked(self, sid: str) -> bool:
        if sid in self._revoked:
            return True
        if self.settings.revocation_cache_seconds <= 0:
            async with self.engine.connect() as conn:
                found = (await conn.execute(select(revocations.c.sid).where(revocations.c.sid == sid))).first()
                return found is not None
        if self._revocations_stale():
            async with self._revoked_reload:
                if self._revocations_stale():  # not reloaded by the request we waited for
                    started = time.monotonic()
                    async with self.engine.connect() as conn:
                        rows = await conn.execute(
                            select(revocations.c.sid).where(revocations.c.expires_at > clock.now()))
                        self._revoked = {r[0] for r in rows}
                    # As of when the read began: a revocation committed during it is seen by the next reload.
                    self._revoked_loaded = started
        return sid in self._revoked

    def _revocations_stale(self) -> bool:
        return time.monotonic() - self._revoked_loaded > self.settings.revocation_cache_seconds

    # ------------------------------------------------------------------ bearer authentication

    async def authenticate(self, token: str) -> Principal:
        """The principal of a bearer token (ours, or the trusted OIDC issuer's); raises InvalidToken."""
        if len(token) > self.settings.max_token_bytes:
            raise InvalidToken("the token is too large")
        if self.oidc is not None and unverified_issuer(token) == self.oidc.issuer:
            claims = await self.oidc.verify(token, self.settings.max_token_bytes)
            user = await self.external_user(claims)
            async with self.engine.connect() as conn:
                deps, districts = await self.department_scope(conn, user["department"])
            return Principal(id=user["id"], kind="user", role=user["role"], tenant=user["tenant"],
                             username=user["username"], department=user["department"], departments=frozenset(deps),
                             districts=frozenset(districts), session=None, mfa=False)
        cached = self._verified.get(token)
        if cached is not None and clock.now().timestamp() < cached[1]:
            principal = cached[0]
        else:
            # Verifying an Ed25519 signature costs more than the rest of a small request: a token is
            # verified once and its principal kept until it expires (revocation is checked every time).
            claims = self.issuer.verify(token)
            principal = principal_from_claims(claims)
            if len(self._verified) >= VERIFIED_CACHE_SIZE:
                self._verified.clear()
            self._verified[token] = (principal, float(claims["exp"]))
        if principal.session and await self.is_revoked(principal.session):
            raise InvalidToken("the token has been revoked")
        return principal

    # ------------------------------------------------------------------ TOTP enrolment

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


def client_session(client_id: str) -> str:
    """The session id every token of an OAuth client carries (64 characters, like other sids)."""
    return "client:" + sha256_hex(client_id)[:57]


def principal_from_claims(claims: dict[str, Any]) -> Principal:
    kind = claims.get("kind")
    if kind not in ("user", "service"):
        raise InvalidToken("unknown principal kind")
    role = claims.get("role")
    if role not in USER_ROLES:
        raise InvalidToken("unknown role")
    deps, dis = claims.get("deps") or [], claims.get("dis") or []
    if not isinstance(deps, list) or not isinstance(dis, list) or not isinstance(claims.get("tnt", ""), str):
        raise InvalidToken("malformed claims")
    return Principal(id=str(claims["sub"]), kind=kind, role=role, tenant=claims.get("tnt") or "",
                     username=claims.get("usr"), department=claims.get("dep"),
                     departments=frozenset(str(d) for d in deps), districts=frozenset(str(d) for d in dis),
                     session=claims.get("sid"), mfa=bool(claims.get("mfa")))

