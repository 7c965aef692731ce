"""Uploads: size and type limits, checksum, content-addressed storage, declared type vs the bytes."""

from __future__ import annotations

import hashlib
from typing import Any

import httpx
from services_core_helpers import PDF, PNG, upload


async def test_services_upload_stored_by_checksum(client: httpx.AsyncClient, auth: Any, desk: Any) -> None:
    citizen = auth.headers("citizen", user_id="up1")
    doc = await upload(client, citizen, filename="../../etc/passwd.pdf")
    assert doc["sha256"] == hashlib.sha256(PDF).hexdigest() and doc["size"] == len(PDF)
    assert doc["contentType"] == "application/pdf"
    stored = desk.settings.upload_dir / doc["sha256"][:2] / doc["sha256"]
    assert stored.read_bytes() == PDF
    # Only content-addressed files live under the upload dir (the client's file name is never a path).
    assert [p.name for p in desk.settings.upload_dir.rglob("*") if p.is_file()] == [doc["sha256"]]
    again = await upload(client, citizen, PNG, "image/png", "x.png")
    assert again["contentType"] == "image/png"
    got = await client.get(f"/api/services/uploads/{doc['uploadId']}", headers=citizen)
    assert got.status_code == 200 and got.content == PDF
    assert (await client.get(f"/api/services/uploads/{doc['uploadId']}",
                             headers=auth.headers("citizen", user_id="up2"))).status_code == 404


async def test_services_bad_uploads(client: httpx.AsyncClient, anon_client: httpx.AsyncClient, auth: Any,
                                    desk: Any) -> None:
    citizen = auth.headers("citizen", user_id="up3")

    async def post(data: bytes, content_type: str) -> httpx.Response:
        return await client.post("/api/services/uploads", headers=citizen,
                                 files={"file": ("f.bin", data, content_type)})

    mismatch = await post(PDF, "image/png")
    assert mismatch.status_code == 400 and "does not match" in mismatch.json()["errors"][0]["message"]
    text = await post(b"just some text, not a document", "text/plain")
    assert text.status_code == 400 and "not accepted" in text.json()["detail"]
    exe = await post(b"MZ\x90\x00\x03" + b"\x00" * 100, "application/pdf")
    assert exe.status_code == 400
    assert (await post(b"", "application/pdf")).status_code == 400
    desk.settings.max_upload_bytes = 1024
    try:
        big = await post(PDF + b"0" * 2048, "application/pdf")
        assert big.status_code == 400 and big.json()["errors"][0]["field"] == "file"
    finally:
        desk.settings.max_upload_bytes = 10 * 1024 * 1024
    not_multipart = await client.post("/api/services/uploads", headers=citizen, content=PDF)
    assert not_multipart.status_code == 415
    assert (await anon_client.post("/api/services/uploads", files={"file": ("f.pdf", PDF, "application/pdf")})
            ).status_code == 401
