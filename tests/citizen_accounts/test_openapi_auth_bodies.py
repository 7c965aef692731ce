"""The OpenAPI document describes the bodies of the routes that read them by hand (/auth/*, registration)."""

from __future__ import annotations

from typing import Any

FORM = "application/x-www-form-urlencoded"


async def test_auth_routes_document_their_form_and_json_bodies(anon_client: Any) -> None:
    reply = await anon_client.get("/openapi.json")
    assert reply.status_code == 200
    paths = reply.json()["paths"]
    expected = {"/auth/token": (FORM, {"grant_type", "username", "password", "totp", "client_id", "client_secret",
                                       "refresh_token", "assertion"}),
                "/auth/revoke": (FORM, {"token"}),
                "/auth/totp/enroll": (FORM, {"username", "password", "enrolment_code"}),
                "/auth/totp/confirm": (FORM, {"username", "password", "totp"}),
                "/auth/users": ("application/json", {"username", "password", "role", "department"}),
                "/auth/clients": ("application/json", {"client_id", "role", "department"}),
                "/api/services/registration": ("application/json", {"kind", "idNumber", "creditCode", "phone",
                                                                    "code"}),
                "/api/services/registration/phone-code": ("application/json", {"phone", "purpose"}),
                "/api/services/registration/password-reset": ("application/json", {"phone", "code", "newPassword"})}
    for path, (media, fields) in expected.items():
        body = paths[path]["post"].get("requestBody")
        assert body is not None, path
        schema = body["content"][media]["schema"]
        assert fields <= set(schema["properties"]), (path, sorted(schema["properties"]))
        assert set(schema.get("required", [])) <= set(schema["properties"])
    media = paths["/api/ops/open311/media"]["post"]["requestBody"]["content"]
    assert {"image/jpeg", "image/png", "image/webp"} <= set(media)
