"""Sessions: revocation (of a refresh-token family, of a user's sessions, RFC 7009) with the cached
revocation list, and bearer authentication (our tokens, cached once verified, or the trusted OIDC
issuer's).

`Sessions` is mixed into `SecurityService`; it reads departments and external users through
`UserDirectory`.
"""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from typing import Any

from sqlalchemy import select, update

from cityos.core import clock
from cityos.security.audit import AuditEvent
from cityos.security.directory import UserDirectory
from cityos.security.models import refresh_tokens, revocations
from cityos.security.policy import USER_ROLES, Principal
from cityos.security.tokens import InvalidToken, OidcTrust, TokenIssuer, sha256_hex, unverified_issuer

VERIFIED_CACHE_SIZE = 10_000


class Sessions(UserDirectory):
    """Mixed into `SecurityService`, which builds the issuer, the OIDC trust and the revocation cache."""

    issuer: TokenIssuer
    oidc: OidcTrust | None
    _revoked: set[str]
    _verified: dict[str, tuple[Principal, float]]
    _revoked_loaded: float
    _revoked_reload: asyncio.Lock

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
