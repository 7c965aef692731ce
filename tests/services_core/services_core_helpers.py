"""Helpers shared by the 一网通办 core tests (fixtures live in conftest.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

# Monday 2 March 2026, 09:00 in Shanghai: an ordinary working day.
START = datetime(2026, 3, 2, 1, 0, tzinfo=UTC)
PDF = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00\x00\x00" + b"\x00" * 32


class Clock:
    def __init__(self, start: datetime) -> None:
        self.now = start

    def advance(self, **delta: float) -> datetime:
        self.now += timedelta(**delta)
        return self.now

    def set(self, moment: datetime) -> None:
        self.now = moment


async def upload(client: httpx.AsyncClient, headers: dict[str, str], data: bytes = PDF,
                 content_type: str = "application/pdf", filename: str = "doc.pdf") -> dict[str, Any]:
    response = await client.post("/api/services/uploads", headers=headers,
                                 files={"file": (filename, data, content_type)})
    assert response.status_code == 201, response.text
    return dict(response.json())


async def wallet_licence(app: Any, holder: str, licence_type: str, subject: dict[str, Any] | None = None) -> str:
    """Issue an e-licence into `holder`'s wallet (as another department's earlier case would)."""
    doc = await app.state.licences.issue("", holder, licence_type, subject or {"name": "张三"}, "public-security",
                                         None)
    return str(doc["id"])


async def submit(client: httpx.AsyncClient, headers: dict[str, str], code: str, form: dict[str, Any],
                 materials: list[dict[str, Any]], status: int = 201) -> dict[str, Any]:
    response = await client.post("/api/services/applications", headers=headers,
                                 json={"serviceCode": code, "form": form, "materials": materials})
    assert response.status_code == status, response.text
    return dict(response.json())


async def inbox(client: httpx.AsyncClient, headers: dict[str, str], **params: Any) -> list[dict[str, Any]]:
    response = await client.get("/api/services/tasks", headers=headers, params=params)
    assert response.status_code == 200, response.text
    return list(response.json()["items"])


async def act(client: httpx.AsyncClient, headers: dict[str, str], task_id: str, action: str,
              body: dict[str, Any] | None = None, status: int = 200) -> dict[str, Any]:
    response = await client.post(f"/api/services/tasks/{task_id}/{action}", headers=headers, json=body or {})
    assert response.status_code == status, response.text
    return dict(response.json())
