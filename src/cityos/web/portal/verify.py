"""`/verify`: public e-licence verification: paste a licence JSON, or open the QR code's link."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

from nicegui import ui

from cityos.web.auth import Session
from cityos.web.portal import labels
from cityos.web.portal.common import call, first, frame, problem_text, when

REASONS: dict[str, str] = {
    "valid": "签名有效、未注销、在有效期内 Signature valid, not revoked, within validity",
    "malformed": "格式错误 Malformed document",
    "unknown_key": "未知签发密钥 Unknown signing key",
    "bad_signature": "签名不符，内容被篡改 Signature mismatch: the content was altered",
    "not_yet_valid": "尚未生效 Not yet valid",
    "expired": "已过期 Expired",
    "revoked": "已注销 Revoked",
    "wrong_holder": "持证人不符 Belongs to someone else",
    "wrong_type": "证照类型不符 Wrong licence type",
    "unknown_licence": "查无此证 No such licence was issued here",
}


def verdict(body: Any) -> tuple[bool, str]:
    """(valid, reason text) from a verification answer."""
    if not isinstance(body, dict):
        return False, "无法核验 Cannot verify"
    valid = bool(first(body, "valid", "verified", default=False))
    code = str(first(body, "reason", default="") or "")
    detail = str(first(body, "detail", "message", default="") or "")
    text = REASONS.get(code, code)
    if detail and not valid:
        text = f"{text} — {detail}" if text else detail
    return valid, text or ("有效 Valid" if valid else "无效 Invalid")


def _result(body: Any, status: int) -> None:
    valid, reason = verdict(body) if status < 400 else (False, problem_text(body, status))
    colour = "#1b5e20" if valid else "#b71c1c"
    with ui.card().classes(f"gov-card w-full p-6 verify-result {'t-valid' if valid else 't-invalid'}") \
            .style(f"border-left: 8px solid {colour}"):
        ui.label("✓ 证照有效 Valid licence" if valid else "✗ 证照无效 Invalid licence") \
            .classes("text-3xl font-bold").style(f"color: {colour}")
        ui.label(f"原因 Reason: {reason}").classes("text-lg verify-reason")
        licence = first(body, "licence", default=None) if isinstance(body, dict) else None
        if not isinstance(licence, dict):
            return
        issuer = licence.get("issuer")
        if isinstance(issuer, dict):
            issuer = " · ".join(x for x in (labels.department(issuer.get("department")), str(issuer.get("name") or ""))
                                if x)
        rows = [("证照编号 Licence no.", licence.get("id")),
                ("证照类型 Type", labels.licence_type(licence.get("licenceType"))),
                ("持证人 Holder", licence.get("holder")), ("发证机关 Issuer", issuer),
                ("发证日期 Issued", when(licence.get("issuedAt"))),
                ("有效期至 Valid until", when(licence.get("expiresAt")) or "长期 No expiry"),
                ("状态 Status", licence.get("status"))]
        subject = licence.get("subject")
        if isinstance(subject, dict):
            rows += [(str(k), v) for k, v in subject.items()]
        with ui.grid(columns="auto 1fr").classes("gap-x-6 gap-y-1 mt-2"):
            for key, value in rows:
                if value not in (None, ""):
                    ui.label(key).classes("kv-key")
                    ui.label(str(value)).classes("kv-value")


@ui.page("/verify")
async def verify_page(id: str = "") -> None:
    session = Session.current()
    if session.token:
        await session.me()
    with frame(session if session.user else None, "证照核验 Licence verification", active="/verify",
               citizen=False):
        ui.label("电子证照核验 E-licence verification").classes("text-2xl gov-title")
        ui.label("扫描证照二维码，或粘贴证照 JSON 核验真伪。Scan the licence's QR code, or paste its JSON.") \
            .classes("text-grey-8")
        out = ui.column().classes("w-full")
        if id:
            reply = await call("GET", f"/api/services/licences/verify/{quote(id)}")
            with out:
                _result(reply.body, reply.status)
        with ui.card().classes("gov-card w-full p-6"):
            text = ui.textarea("证照 JSON Licence JSON").props("outlined rows=8").classes("w-full t-licence-json")

            async def check() -> None:
                out.clear()
                try:
                    doc = json.loads(text.value or "")
                except ValueError:
                    with out:
                        _result({"valid": False, "reason": "不是有效的 JSON Not valid JSON"}, 200)
                    return
                reply = await call("POST", "/api/services/licences/verify", json=doc)
                with out:
                    _result(reply.body, reply.status)

            ui.button("核验 Verify", icon="verified_user", on_click=check).props("size=lg no-caps") \
                .classes("t-verify")
