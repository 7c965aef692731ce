"""Settings read from the environment, so every process of a deployment agrees on them."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path


def env_int(name: str, default: int) -> int:
    """An integer setting; unset or empty means the default. Every domain's settings read through here."""
    raw = os.environ.get(name)
    return int(raw) if raw else default


def env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    return float(raw) if raw else default


def env_optional(name: str) -> str | None:
    return os.environ.get(name) or None


DEFAULT_PUBLIC_URL = "http://127.0.0.1:8000"


def listen_url(host: str, port: int, scheme: str = "http") -> str:
    """The URL of a server bound to host:port; a wildcard bind is reached by the machine's name."""
    if host in ("0.0.0.0", "::", ""):  # noqa: S104 - naming the wildcard, not binding to it
        import socket

        host = socket.gethostname()
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


def public_url() -> str:
    """The platform's public base URL (token issuer, OIDC discovery, e-licence issuer, absolute links).

    CITYOS_PUBLIC_URL when set (behind a proxy: the address people use); else the address the server
    actually listens on (CITYOS_LISTEN_URL, which `cityos serve` and `cityos demo` set from their bound
    host and port); else http://127.0.0.1:8000."""
    for name in ("CITYOS_PUBLIC_URL", "CITYOS_LISTEN_URL"):
        value = (os.environ.get(name) or "").strip()
        if value:
            return value.rstrip("/")
    return DEFAULT_PUBLIC_URL


def default_database_url() -> str:
    return f"sqlite:///{Path.cwd() / 'cityos.db'}"


@dataclass(frozen=True)
class Settings:
    database_url: str = field(default_factory=lambda: os.environ.get("CITYOS_DATABASE_URL") or default_database_url())
    mqtt_url: str = field(default_factory=lambda: os.environ.get("CITYOS_MQTT_URL", "mqtt://127.0.0.1:1883"))
    # Unset: the in-process event bus. `nats://host:4222[,nats://…]`: domain events on NATS JetStream.
    events_url: str | None = field(default_factory=lambda: os.environ.get("CITYOS_EVENTS_URL") or None)
    max_page_size: int = field(default_factory=lambda: env_int("CITYOS_MAX_PAGE_SIZE", 1000))
    default_page_size: int = field(default_factory=lambda: env_int("CITYOS_DEFAULT_PAGE_SIZE", 20))
    # Orion-LD and Scorpio cap batches at 1,000 entities; we bound the request size instead.
    max_body_bytes: int = field(default_factory=lambda: env_int("CITYOS_MAX_BODY_BYTES", 64 * 1024 * 1024))
    max_batch_entities: int = field(default_factory=lambda: env_int("CITYOS_MAX_BATCH_ENTITIES", 100_000))
    context_fetch_timeout: float = field(default_factory=lambda: env_float("CITYOS_CONTEXT_FETCH_TIMEOUT", 5.0))
    context_cache_seconds: int = field(default_factory=lambda: env_int("CITYOS_CONTEXT_CACHE_SECONDS", 3600))
    # The outbound policy (cityos.core.outbound): what a caller-named URL may reach besides public
    # addresses, e.g. "10.0.0.0/8,[fd00::/8]:443,idp.internal:8443". Empty: public addresses only.
    outbound_allow: str = field(default_factory=lambda: os.environ.get("CITYOS_OUTBOUND_ALLOW", ""))
    outbound_timeout: float = field(default_factory=lambda: env_float("CITYOS_OUTBOUND_TIMEOUT", 10.0))
    outbound_max_redirects: int = field(default_factory=lambda: env_int("CITYOS_OUTBOUND_MAX_REDIRECTS", 5))
    # @context limits: one document (fetched or inline), its nesting, and the cache of processed contexts.
    context_max_bytes: int = field(default_factory=lambda: env_int("CITYOS_CONTEXT_MAX_BYTES", 1024 * 1024))
    context_max_depth: int = field(default_factory=lambda: env_int("CITYOS_CONTEXT_MAX_DEPTH", 16))
    context_cache_entries: int = field(default_factory=lambda: env_int("CITYOS_CONTEXT_CACHE_ENTRIES", 256))
    context_cache_bytes: int = field(default_factory=lambda: env_int("CITYOS_CONTEXT_CACHE_BYTES", 32 * 1024 * 1024))
    # Callers without a token get a much smaller body than authenticated ones (CITYOS_MAX_BODY_BYTES).
    max_anon_body_bytes: int = field(default_factory=lambda: env_int("CITYOS_MAX_ANON_BODY_BYTES", 1024 * 1024))
    # Slow clients: the request head must arrive within header_timeout; the body may pause at most
    # body_idle_timeout between chunks and take body_timeout in all; idle keep-alive connections close.
    header_timeout: float = field(default_factory=lambda: env_float("CITYOS_HEADER_TIMEOUT", 10.0))
    body_idle_timeout: float = field(default_factory=lambda: env_float("CITYOS_BODY_IDLE_TIMEOUT", 15.0))
    body_timeout: float = field(default_factory=lambda: env_float("CITYOS_BODY_TIMEOUT", 120.0))
    keep_alive_timeout: int = field(default_factory=lambda: env_int("CITYOS_KEEP_ALIVE_TIMEOUT", 5))
    db_pool_size: int = field(default_factory=lambda: env_int("CITYOS_DB_POOL_SIZE", 10))
    # The web UI (NiceGUI cockpit and portal): `cityos serve` and `cityos demo` switch it on (CITYOS_WEB=1);
    # API-only processes and the API tests leave it off (NiceGUI is process-global).
    web_enabled: bool = field(default_factory=lambda: os.environ.get("CITYOS_WEB", "").lower() in
                              ("1", "true", "yes", "on"))

    @property
    def is_postgres(self) -> bool:
        return self.database_url.startswith(("postgresql", "postgres"))


def async_url(url: str) -> str:
    """SQLAlchemy wants the async driver spelled out; operators should not have to."""
    if url.startswith("sqlite:///"):
        return "sqlite+aiosqlite:///" + url[len("sqlite:///"):]
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://"):]
    if url.startswith("postgresql://"):
        return "postgresql+asyncpg://" + url[len("postgresql://"):]
    return url


def sync_url(url: str) -> str:
    """Alembic runs migrations synchronously; psycopg is not a dependency, so asyncpg runs them via greenlet."""
    return async_url(url)
