"""The service desk's uploads and materials: storing uploaded files (content-addressed blobs),
checking the materials an application names (uploads or e-licences), serving upload bytes."""

from __future__ import annotations

import asyncio
import hashlib
import os
import secrets
import uuid
from pathlib import Path
from typing import Any

import filetype
from sqlalchemy import select

from cityos.core import clock
from cityos.core.errors import ResourceNotFound
from cityos.security.audit import AuditEvent
from cityos.security.policy import Principal, authorize
from cityos.services import models as m
from cityos.services.catalogue import Service
from cityos.services.desk import Check, FieldErrors
from cityos.services.views import ViewsDesk


class UploadsDesk(ViewsDesk):
    """Uploads (file checks, blob store, a read cache of upload rows) and the materials check."""

    async def upload(self, principal: Principal, tenant: str, data: bytes, declared: str | None,
                     filename: str | None, ip: str = "") -> dict[str, Any]:
        if not data:
            raise FieldErrors([{"field": "file", "message": "the file is empty"}])
        if len(data) > self.settings.max_upload_bytes:
            raise FieldErrors([{"field": "file", "message": f"larger than {self.settings.max_upload_bytes} bytes"}])
        kind = filetype.guess(data)
        detected = kind.mime if kind is not None else None
        if detected not in self.settings.allowed_types:
            raise FieldErrors([{"field": "file", "message": f"file type {detected or 'unknown'} is not accepted; "
                                f"allowed: {', '.join(self.settings.allowed_types)}"}])
        declared_type = (declared or "").split(";")[0].strip().lower().replace("image/jpg", "image/jpeg")
        if declared_type != detected:
            raise FieldErrors([{"field": "file", "message": f"declared content type {declared_type or 'none'} "
                                f"does not match the content ({detected})"}])
        digest = hashlib.sha256(data).hexdigest()
        await asyncio.to_thread(self._store_blob, digest, data)
        upload_id = uuid.uuid4().hex
        safe_name = os.path.basename((filename or "").replace("\\", "/"))[:256] or None
        upload_row = {"id": upload_id, "tenant": tenant, "owner": principal.id, "sha256": digest, "size": len(data),
                      "content_type": detected, "filename": safe_name, "created_at": clock.now()}
        async with self.write() as conn:
            await conn.execute(m.uploads.insert(), upload_row)
            # Personal documents: the upload and its audit record commit together.
            await self._audit_in(conn, AuditEvent.of(principal, "upload.create", f"upload:{upload_id}", ip=ip,
                                                     tenant=tenant, sha256=digest, size=len(data),
                                                     contentType=detected))
        self._remember_upload(upload_row)
        return {"uploadId": upload_id, "sha256": digest, "size": len(data), "contentType": detected}

    def _remember_upload(self, row: dict[str, Any]) -> None:
        """Upload rows are written once and never change: keep the recent ones (bounded, oldest out first)."""
        if len(self._uploads) >= 10_000:
            self._uploads.pop(next(iter(self._uploads)))
        self._uploads[row["id"]] = row

    def _blob_path(self, digest: str) -> Path:
        return self.settings.upload_dir / digest[:2] / digest

    def _store_blob(self, digest: str, data: bytes) -> None:
        path = self._blob_path(digest)
        if path.exists():
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{digest}.{secrets.token_hex(4)}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)

    async def _materials(self, svc: Service, principal: Principal, tenant: str, given: Any,
                         prefix: str = "materials") -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
        errors: list[dict[str, str]] = []
        out: list[dict[str, Any]] = []
        if given is None:
            given = []
        if not isinstance(given, list):
            return [], [{"field": prefix, "message": "must be a list of {name, uploadId} or {name, licenceId}"}]
        declared = {mat.name: mat for mat in svc.definition.materials}
        seen: set[str] = set()
        upload_ids: list[str] = [g["uploadId"] for g in given
                                 if isinstance(g, dict) and isinstance(g.get("uploadId"), str)]
        uploads: dict[str, Any] = {}
        for upload_id in upload_ids:
            cached = self._uploads.get(upload_id)
            if cached is not None and cached["tenant"] == tenant:
                uploads[upload_id] = cached
        missing = [u for u in upload_ids if u not in uploads]
        if missing:
            async with self._read() as conn:
                rows = (await conn.execute(select(m.uploads).where(
                    m.uploads.c.id.in_(missing), m.uploads.c.tenant == tenant))).mappings().all()
            for r in rows:
                uploads[r["id"]] = dict(r)
                self._remember_upload(dict(r))
        for i, item in enumerate(given):
            where = f"{prefix}[{i}]"
            if not isinstance(item, dict) or not isinstance(item.get("name"), str):
                errors.append({"field": where, "message": "expected {name, uploadId} or {name, licenceId}"})
                continue
            name = item["name"]
            mat = declared.get(name)
            if mat is None:
                errors.append({"field": f"{where}.name", "message": f"{svc.code} asks for no material {name!r}"})
                continue
            if name in seen:
                errors.append({"field": f"{where}.name", "message": f"material {name!r} given twice"})
                continue
            seen.add(name)
            if isinstance(item.get("uploadId"), str) and "licenceId" not in item:
                up = uploads.get(item["uploadId"])
                if up is None or up["owner"] != principal.id:
                    errors.append({"field": f"{where}.uploadId", "message": "no such upload of yours"})
                elif up["content_type"] not in mat.content_types:
                    errors.append({"field": f"{where}.uploadId", "message": f"{up['content_type']} is not accepted "
                                   f"for {name}; allowed: {', '.join(mat.content_types)}"})
                elif mat.max_bytes is not None and up["size"] > mat.max_bytes:
                    errors.append({"field": f"{where}.uploadId", "message": f"larger than {mat.max_bytes} bytes"})
                else:
                    out.append({"name": name, "title": mat.title, "kind": "upload", "uploadId": up["id"],
                                "sha256": up["sha256"], "size": up["size"], "contentType": up["content_type"]})
            elif isinstance(item.get("licenceId"), str) and "uploadId" not in item:
                if mat.licence_type is None:
                    errors.append({"field": f"{where}.licenceId", "message": f"{name} cannot be given as an e-licence"})
                    continue
                licences = self._peer("licences")
                if licences is None:
                    errors.append({"field": f"{where}.licenceId", "message": "e-licence verification is unavailable"})
                    continue
                verdict = await licences.verify_wallet_licence(tenant, principal.id, item["licenceId"],
                                                               mat.licence_type)
                if not getattr(verdict, "valid", False):
                    errors.append({"field": f"{where}.licenceId",
                                   "message": f"e-licence refused: {getattr(verdict, 'reason', 'invalid')}"})
                    continue
                out.append({"name": name, "title": mat.title, "kind": "licence", "licenceId": item["licenceId"],
                            "licenceType": mat.licence_type, "verified": True,
                            "verifiedAt": clock.now().isoformat()})
            else:
                errors.append({"field": where, "message": "give exactly one of uploadId or licenceId"})
        for mat in svc.definition.materials:
            if mat.required and mat.name not in seen:
                errors.append({"field": prefix, "message": f"missing required material {mat.name!r} ({mat.title})"})
        return out, errors

    async def upload_blob(self, principal: Principal, tenant: str, upload_id: str,
                          check: Check) -> tuple[bytes, str, list[str]]:
        """The bytes of an upload, for whoever may read it: its uploader, or anyone who may read an
        application it is attached to (the same `application.read` check as reading the application).
        An upload attached to nothing yet is its uploader's alone. Returns (bytes, content type, ids of
        the applications it belongs to) so that the caller can audit the download."""
        async with self._read() as conn:
            row = (await conn.execute(select(m.uploads).where(
                m.uploads.c.id == upload_id, m.uploads.c.tenant == tenant))).mappings().first()
            attached: list[Any] = []
            tasks: dict[str, list[str]] = {}
            if row is not None and row["owner"] != principal.id:
                # Materials are always the applicant's own uploads (see `_materials`), so the
                # applications holding this one are among its owner's (served by the applicant index).
                candidates = (await conn.execute(select(
                    m.applications.c.id, m.applications.c.department, m.applications.c.applicant,
                    m.applications.c.materials).where(m.applications.c.tenant == tenant,
                                                      m.applications.c.applicant == row["owner"]))).mappings().all()
                attached = [a for a in candidates if _holds_upload(a["materials"], upload_id)]
                if attached:
                    for app_id, dept in (await conn.execute(select(m.tasks.c.application_id, m.tasks.c.department)
                                                            .where(m.tasks.c.application_id.in_(
                                                                [a["id"] for a in attached])))).all():
                        tasks.setdefault(app_id, []).append(dept)
        if row is None or (row["owner"] != principal.id and not attached):
            raise ResourceNotFound(f"no upload {upload_id!r}")
        if row["owner"] != principal.id:
            resources = [self._read_resource(principal, tenant, a, tasks.get(a["id"], ())) for a in attached]
            allowed = next((r for r in resources if authorize(principal, "application.read", r)), None)
            # The refusal goes through `check` (audited, 403) with the first application's resource.
            await check("application.read", allowed or resources[0])
        data = await asyncio.to_thread(self._blob_path(row["sha256"]).read_bytes)
        return data, row["content_type"], [a["id"] for a in attached]


def _holds_upload(materials: Any, upload_id: str) -> bool:
    return isinstance(materials, list) and any(isinstance(item, dict) and item.get("uploadId") == upload_id
                                               for item in materials)
