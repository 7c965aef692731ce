"""Passwords: the strength rule (length, known defaults, personal data, zxcvbn score) and argon2
hashing and verification in a bounded thread pool, behind a bounded number of concurrent logins.

`PasswordHashing` is mixed into `SecurityService`, whose constructor builds the hasher and the pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from zxcvbn import zxcvbn

from cityos.security.errors import ServiceUnavailable
from cityos.security.settings import SecuritySettings

WEAK_PASSWORDS = frozenset({"admin", "admin123", "password", "password1", "123456", "12345678", "123456789",
                            "changeme", "change-me", "cityos", "cityos123", "qwerty", "letmein", "secret",
                            "admin@123", "p@ssw0rd", "passw0rd", "root", "toor", "default", "demo"})


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


class PasswordHashing:
    """Mixed into `SecurityService`, which builds the hasher, the dummy hash and the pool."""

    settings: SecuritySettings
    hasher: PasswordHasher
    _dummy_hash: str
    _hash_pool: ThreadPoolExecutor | None
    _login_gate: tuple[asyncio.AbstractEventLoop, asyncio.Semaphore] | None

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
