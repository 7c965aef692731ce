"""The shared `auth` fixture mints tokens the running app accepts, with the claims asked for."""

from __future__ import annotations

import httpx

from auth_tokens import Auth


async def test_minted_token_is_accepted_with_its_claims(client: httpx.AsyncClient, auth: Auth) -> None:
    r = await client.get("/auth/me", headers=auth.headers("official", department="env", districts=["d1"]))
    assert r.status_code == 200, r.text
    me = r.json()
    assert me["role"] == "official"
    assert me["department"] == "env"
    assert "d1" in me["districts"]


async def test_forged_token_is_refused(client: httpx.AsyncClient, auth: Auth) -> None:
    token = auth.token("operator")
    r = await client.get("/auth/me", headers={"Authorization": f"Bearer {token[:-4]}AAAA"})
    assert r.status_code == 401
