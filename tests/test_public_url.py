"""The issuer and absolute URLs: CITYOS_PUBLIC_URL, else the address the server listens on."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import jwt
import pytest

from cityos.app import create_app
from cityos.config import DEFAULT_PUBLIC_URL, Settings, listen_url, public_url
from cityos.security.settings import SecuritySettings


def test_public_url_prefers_the_setting_then_the_listening_address(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CITYOS_PUBLIC_URL", raising=False)
    monkeypatch.delenv("CITYOS_LISTEN_URL", raising=False)
    assert public_url() == DEFAULT_PUBLIC_URL
    monkeypatch.setenv("CITYOS_LISTEN_URL", "http://127.0.0.1:8765/")
    assert public_url() == "http://127.0.0.1:8765" and SecuritySettings().issuer == "http://127.0.0.1:8765"
    monkeypatch.setenv("CITYOS_PUBLIC_URL", "https://city.example.cn")
    assert public_url() == "https://city.example.cn" and SecuritySettings().issuer == "https://city.example.cn"
    monkeypatch.setenv("CITYOS_PUBLIC_URL", "  ")  # blank: as if unset
    assert public_url() == "http://127.0.0.1:8765"


def test_listen_url_names_a_reachable_host() -> None:
    assert listen_url("127.0.0.1", 8123) == "http://127.0.0.1:8123"
    assert listen_url("::1", 8123) == "http://[::1]:8123"
    wildcard = listen_url("0.0.0.0", 8123)
    assert wildcard.endswith(":8123") and "0.0.0.0" not in wildcard


async def test_discovery_and_tokens_name_the_listening_address(tmp_path: Any, monkeypatch: pytest.MonkeyPatch,
                                                               ) -> None:
    monkeypatch.delenv("CITYOS_PUBLIC_URL", raising=False)
    monkeypatch.setenv("CITYOS_LISTEN_URL", "http://127.0.0.1:18642")
    monkeypatch.setenv("CITYOS_WEB", "0")
    monkeypatch.setenv("CITYOS_INGEST_WORKERS", "0")
    monkeypatch.setenv("CITYOS_DATA_DIR", str(tmp_path / "data"))
    from cityos.core import migrate

    settings = Settings(database_url=f"sqlite:///{tmp_path / 'issuer.db'}")
    await asyncio.to_thread(migrate.upgrade, settings)
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        secret = await app.state.security.service.create_client("issuer-test", "operator")
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://cityos.test") as http:
            discovery = (await http.get("/.well-known/openid-configuration")).json()
            assert discovery["issuer"] == "http://127.0.0.1:18642"
            assert discovery["token_endpoint"] == "http://127.0.0.1:18642/auth/token"
            token = (await http.post("/auth/token", data={"grant_type": "client_credentials"},
                                     auth=("issuer-test", secret))).json()["access_token"]
    assert jwt.decode(token, options={"verify_signature": False})["iss"] == "http://127.0.0.1:18642"
