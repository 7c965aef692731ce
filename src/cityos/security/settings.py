"""Security settings, read from the environment like `cityos.config.Settings`."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from cityos.config import env_float, env_int, env_optional, public_url


def default_data_dir() -> Path:
    explicit = os.environ.get("CITYOS_DATA_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "cityos"


@dataclass(frozen=True)
class SecuritySettings:
    env: str = field(default_factory=lambda: os.environ.get("CITYOS_ENV", "development"))
    # Where development mode keeps the keys it generates (never the database, never the source tree).
    data_dir: Path = field(default_factory=lambda: default_data_dir())
    jwt_key_file: str | None = field(default_factory=lambda: env_optional("CITYOS_JWT_KEY_FILE"))
    # "kid:alg:base64key,..." (first is active) or "@/path/to/keys.json"
    data_keys: str | None = field(default_factory=lambda: env_optional("CITYOS_DATA_KEYS"))
    issuer: str = field(default_factory=public_url)  # CITYOS_PUBLIC_URL, else where the server listens
    audience: str = field(default_factory=lambda: os.environ.get("CITYOS_JWT_AUDIENCE", "cityos"))
    access_ttl: int = field(default_factory=lambda: env_int("CITYOS_ACCESS_TOKEN_SECONDS", 300))
    refresh_ttl: int = field(default_factory=lambda: env_int("CITYOS_REFRESH_TOKEN_SECONDS", 30 * 86400))
    max_token_bytes: int = field(default_factory=lambda: env_int("CITYOS_MAX_TOKEN_BYTES", 8192))
    # Brute force: REQUIREMENTS "50 failed passwords from one IP within 1 h".
    ip_fail_limit: int = field(default_factory=lambda: env_int("CITYOS_IP_FAIL_LIMIT", 50))
    ip_fail_window: int = field(default_factory=lambda: env_int("CITYOS_IP_FAIL_WINDOW_SECONDS", 3600))
    ip_block_seconds: int = field(default_factory=lambda: env_int("CITYOS_IP_BLOCK_SECONDS", 3600))
    # Per account (OWASP ASVS 2.2.1): failures are counted in a sliding window and age out, so a
    # trickle of wrong guesses never keeps an account locked; a lock is passed by the right password
    # (+ TOTP) from a device that logged in before (`device_token`), or lifted by an administrator.
    account_fail_limit: int = field(default_factory=lambda: env_int("CITYOS_ACCOUNT_FAIL_LIMIT", 5))
    account_fail_window: int = field(default_factory=lambda: env_int("CITYOS_ACCOUNT_FAIL_WINDOW_SECONDS", 900))
    # 0 = locked (for unknown devices) until an administrator unlocks the account.
    account_lock_seconds: int = field(default_factory=lambda: env_int("CITYOS_ACCOUNT_LOCK_SECONDS", 900))
    # Progressive delay: after `login_delay_after` failures in the window (per account or per source),
    # the next attempt must wait base * 2^(n - after) seconds, at most `login_delay_max`.
    login_delay_after: int = field(default_factory=lambda: env_int("CITYOS_LOGIN_DELAY_AFTER", 3))
    login_delay_base: float = field(default_factory=lambda: env_float("CITYOS_LOGIN_DELAY_BASE_SECONDS", 1.0))
    login_delay_max: float = field(default_factory=lambda: env_float("CITYOS_LOGIN_DELAY_MAX_SECONDS", 60.0))
    ip_delay_after: int = field(default_factory=lambda: env_int("CITYOS_IP_DELAY_AFTER", 10))
    # How long a known-device token (issued at a successful login) stays valid.
    device_token_seconds: int = field(default_factory=lambda: env_int("CITYOS_DEVICE_TOKEN_SECONDS", 90 * 86400))
    # Reverse proxies whose X-Forwarded-For is believed (comma-separated CIDRs); empty: none.
    trusted_proxies: str = field(default_factory=lambda: os.environ.get("CITYOS_TRUSTED_PROXIES", ""))
    # Password hashing runs in a bounded thread pool; logins beyond `login_concurrency` wait at most
    # `login_queue_seconds`, then get 503 + Retry-After, so the rest of the API stays responsive.
    hash_workers: int = field(default_factory=lambda: env_int("CITYOS_HASH_WORKERS", 2))
    login_concurrency: int = field(default_factory=lambda: env_int("CITYOS_LOGIN_CONCURRENCY", 8))
    login_queue_seconds: float = field(default_factory=lambda: env_float("CITYOS_LOGIN_QUEUE_SECONDS", 2.0))
    # One-time TOTP enrolment codes issued by an administrator.
    enrolment_code_seconds: int = field(default_factory=lambda: env_int("CITYOS_ENROLMENT_CODE_SECONDS", 72 * 3600))
    # zxcvbn score (0-4) a new password needs.
    password_min_score: int = field(default_factory=lambda: env_int("CITYOS_PASSWORD_MIN_SCORE", 3))
    auth_rate_per_minute: int = field(default_factory=lambda: env_int("CITYOS_AUTH_RATE_PER_MINUTE", 120))
    revocation_cache_seconds: float = field(default_factory=lambda: env_float("CITYOS_REVOCATION_CACHE_SECONDS", 2.0))
    oidc_issuer: str | None = field(default_factory=lambda: env_optional("CITYOS_OIDC_ISSUER"))
    oidc_audience: str | None = field(default_factory=lambda: env_optional("CITYOS_OIDC_AUDIENCE"))
    oidc_role_claim: str = field(default_factory=lambda: os.environ.get("CITYOS_OIDC_ROLE_CLAIM", "cityos_role"))
    oidc_tenant: str = field(default_factory=lambda: os.environ.get("CITYOS_OIDC_TENANT", ""))
    admin_password: str | None = field(default_factory=lambda: env_optional("CITYOS_ADMIN_PASSWORD"))
    # argon2id parameters (OWASP minimum: m=19 MiB, t=2, p=1); tests lower them.
    argon2_time_cost: int = field(default_factory=lambda: env_int("CITYOS_ARGON2_TIME_COST", 2))
    argon2_memory_kib: int = field(default_factory=lambda: env_int("CITYOS_ARGON2_MEMORY_KIB", 19456))
    approval_ttl: int = field(default_factory=lambda: env_int("CITYOS_APPROVAL_SECONDS", 86400))

    @property
    def production(self) -> bool:
        return self.env.lower() in ("production", "prod")
