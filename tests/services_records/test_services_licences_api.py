"""E-licences through the running app: issue, wallet, QR, public key, verify, revoke, bad input."""

from __future__ import annotations

import copy
from datetime import timedelta
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from sqlalchemy import select

from cityos.core import clock
from cityos.security.audit import AuditQuery
from cityos.services.licences import verify_offline
from cityos.services.licences.models import licences as licence_table

BASE = "/api/services/licences"
ID_NUMBER = "110101199003071234"
SUBJECT = {"name": "张三", "idNumber": ID_NUMBER, "company": "三元餐饮有限公司", "scope": "餐饮服务",
           "note": f"法人身份证 {ID_NUMBER}"}


@pytest.fixture
def service(app: Any) -> Any:
    return app.state.licences


async def issue(service: Any, holder: str = "u1", department: str = "dept-market", **kwargs: Any) -> dict[str, Any]:
    return dict(await service.issue("", holder, "business_licence", dict(SUBJECT), department,
                                    kwargs.pop("application_id", None), **kwargs))


async def test_issue_wallet_get_and_encrypted_storage(app: Any, client: Any, auth: Any, service: Any) -> None:
    doc = await issue(service, application_id="app-1")
    assert doc["holder"] == "u1" and doc["proof"]["alg"] == "EdDSA" and doc["subject"] == SUBJECT
    assert doc["verifyUrl"].endswith(f"/verify?id={doc['id']}")
    assert await issue(service, application_id="app-1") == doc  # idempotent per application and type
    holder = auth.headers("citizen", user_id="u1")
    wallet = (await client.get(f"{BASE}/wallet", headers=holder)).json()
    assert wallet["total"] == 1 and wallet["items"][0]["document"] == doc
    assert wallet["items"][0]["status"] == "valid"
    assert (await client.get(f"{BASE}/wallet", headers=auth.headers("citizen", user_id="u2"))).json()["total"] == 0
    record = (await client.get(f"{BASE}/{doc['id']}", headers=holder)).json()
    assert record["document"] == doc and record["issuerDepartment"] == "dept-market"
    async with app.state.engine.connect() as conn:
        stored = (await conn.execute(select(licence_table))).mappings().one()
    assert stored["document"].startswith("enc:v1:")
    assert all(ID_NUMBER not in str(value) and "张三" not in str(value) for value in stored.values())


async def test_access_to_a_licence_is_for_its_holder_and_the_issuing_department(
        client: Any, anon_client: Any, auth: Any, service: Any) -> None:
    doc = await issue(service)
    url = f"{BASE}/{doc['id']}"
    assert (await anon_client.get(url)).status_code == 401
    assert (await anon_client.get(f"{BASE}/wallet")).status_code == 401
    assert (await client.get(url, headers=auth.headers("citizen", user_id="u2"))).status_code == 403
    assert (await client.get(f"{url}/qr.svg", headers=auth.headers("citizen", user_id="u2"))).status_code == 403
    assert (await client.get(url, headers=auth.headers("official", department="dept-other"))).status_code == 403
    assert (await client.get(url, headers=auth.headers("official", department="dept-market"))).status_code == 200
    assert (await client.get(f"{BASE}/nope", headers=auth.headers("citizen", user_id="u1"))).status_code == 404
    assert (await client.get(f"{BASE}/{'x' * 300}", headers=auth.headers("citizen", user_id="u1"))).status_code == 404


async def test_qr_code_svg_encodes_the_verify_url_or_the_document(client: Any, auth: Any, service: Any) -> None:
    doc = await issue(service)
    holder = auth.headers("citizen", user_id="u1")
    response = await client.get(f"{BASE}/{doc['id']}/qr.svg", headers=holder)
    assert response.status_code == 200 and response.headers["content-type"].startswith("image/svg+xml")
    assert response.content.lstrip().startswith(b"<svg") and b"<path" in response.content
    compact = await client.get(f"{BASE}/{doc['id']}/qr.svg", params={"content": "document"}, headers=holder)
    assert compact.status_code == 200 and len(compact.content) > len(response.content)  # more modules
    bad = await client.get(f"{BASE}/{doc['id']}/qr.svg", params={"content": "png"}, headers=holder)
    assert bad.status_code == 400


async def test_public_key_as_jwk_and_pem_verifies_offline(anon_client: Any, service: Any) -> None:
    doc = await issue(service)
    published = (await anon_client.get(f"{BASE}/public-key")).json()
    assert published["active"] == doc["proof"]["kid"]
    jwk = next(k for k in published["keys"] if k["kid"] == published["active"])
    assert (jwk["kty"], jwk["crv"], jwk["alg"]) == ("OKP", "Ed25519", "EdDSA")
    pem = await anon_client.get(f"{BASE}/public-key.pem")
    key = serialization.load_pem_public_key(pem.content)
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    from cityos.services.licences.verify import b64url
    assert b64url(raw) == jwk["x"]
    assert verify_offline(doc, published).valid  # no server involved from here on
    assert verify_offline(doc, published, holder="u1", licence_type="business_licence").valid


async def test_verify_endpoint_accepts_the_document_and_masks_personal_data(anon_client: Any, service: Any) -> None:
    doc = await issue(service)
    for body in (doc, {"document": doc}, {"compact": __import__("json").dumps(doc, ensure_ascii=False)}):
        response = await anon_client.post(f"{BASE}/verify", json=body)
        assert response.status_code == 200
        result = response.json()
        assert (result["valid"], result["reason"]) == (True, "valid")
        assert ID_NUMBER not in response.text and "张三" not in response.text
        subject = result["licence"]["subject"]
        assert subject["idNumber"] == "110***********1234" and subject["name"] == "张*"
        assert subject["company"] == "三元餐饮有限公司" and "110***********1234" in subject["note"]
    by_id = await anon_client.get(f"{BASE}/verify/{doc['id']}")
    assert by_id.status_code == 200 and by_id.json()["valid"] is True
    assert by_id.json()["licence"]["status"] == "valid" and ID_NUMBER not in by_id.text


async def test_tampered_documents_are_rejected_with_a_reason(anon_client: Any, service: Any) -> None:
    doc = await issue(service)
    changed = copy.deepcopy(doc)
    changed["subject"]["company"] = "三元餐饮有限公司X"
    swapped = copy.deepcopy(doc)
    swapped["holder"] = "u2"
    bad_sig = copy.deepcopy(doc)
    sig = bad_sig["proof"]["signature"]
    bad_sig["proof"]["signature"] = ("B" if sig[5] == "A" else "A").join((sig[:5], sig[6:]))
    unknown_key = copy.deepcopy(doc)
    unknown_key["proof"]["kid"] = "no-such-key"
    no_proof = {k: v for k, v in doc.items() if k != "proof"}
    cases = [(changed, "bad_signature"), (swapped, "bad_signature"), (bad_sig, "bad_signature"),
             (unknown_key, "unknown_key"), (no_proof, "malformed"), ({"anything": 1}, "malformed")]
    for body, reason in cases:
        result = (await anon_client.post(f"{BASE}/verify", json=body)).json()
        assert (result["valid"], result["reason"], result["licence"]) == (False, reason, None), reason


async def test_revocation_is_audited_listed_signed_and_rejected(
        app: Any, client: Any, anon_client: Any, auth: Any, service: Any) -> None:
    doc = await issue(service)
    official = auth.headers("official", department="dept-market", username="officer-li")
    response = await client.post(f"{BASE}/{doc['id']}/revoke", json={"reason": "营业执照被吊销"}, headers=official)
    assert response.status_code == 200
    assert response.json()["status"] == "revoked" and response.json()["revocationReason"] == "营业执照被吊销"
    again = await client.post(f"{BASE}/{doc['id']}/revoke", json={"reason": "twice"}, headers=official)
    assert again.status_code == 409
    result = (await anon_client.post(f"{BASE}/verify", json=doc)).json()
    assert (result["valid"], result["reason"]) == (False, "revoked")
    by_id = (await anon_client.get(f"{BASE}/verify/{doc['id']}")).json()
    assert (by_id["valid"], by_id["reason"], by_id["licence"]["status"]) == (False, "revoked", "revoked")
    revocations = (await anon_client.get(f"{BASE}/revocations")).json()
    assert [r["id"] for r in revocations["revoked"]] == [doc["id"]]
    published = (await anon_client.get(f"{BASE}/public-key")).json()
    assert verify_offline(doc, published).valid  # the signature alone says nothing about revocation
    assert verify_offline(doc, published, revocations=revocations).reason == "revoked"
    assert verify_offline(revocations, published).reason == "malformed"  # a list is not a licence
    events = await app.state.security.audit.search(AuditQuery(action="licence.revoke"))
    assert [(e["resource"], e["outcome"]) for e in events] == [(f"licence:{doc['id']}", "success")]
    wallet = (await client.get(f"{BASE}/wallet", headers=auth.headers("citizen", user_id="u1"))).json()
    assert wallet["items"][0]["status"] == "revoked"


async def test_revoke_refusals_and_bad_input(client: Any, anon_client: Any, auth: Any, service: Any) -> None:
    doc = await issue(service)
    url = f"{BASE}/{doc['id']}/revoke"
    assert (await anon_client.post(url, json={"reason": "x"})).status_code == 401
    assert (await client.post(url, json={"reason": "x"},
                              headers=auth.headers("citizen", user_id="u1"))).status_code == 403
    assert (await client.post(url, json={"reason": "x"},
                              headers=auth.headers("official", department="dept-other"))).status_code == 403
    official = auth.headers("official", department="dept-market")
    assert (await client.post(f"{BASE}/nope/revoke", json={"reason": "x"}, headers=official)).status_code == 404
    for body in ({}, {"reason": ""}, {"reason": "   "}, {"reason": 5}, [1]):
        response = await client.post(url, json=body, headers=official)
        assert response.status_code == 400, body
        assert response.json()["type"].endswith("BadRequestData")
    malformed = await client.post(url, content=b"{not json", headers={**official, "Content-Type": "application/json"})
    assert malformed.status_code == 400
    assert (await anon_client.get(f"{BASE}/verify/{doc['id']}")).json()["valid"] is True


async def test_verify_bad_input(anon_client: Any, service: Any) -> None:
    assert (await anon_client.post(f"{BASE}/verify", content=b"{oops")).status_code == 400
    assert (await anon_client.post(f"{BASE}/verify", json=[1, 2])).status_code == 400
    assert (await anon_client.post(f"{BASE}/verify", json={"compact": "{nope"})).status_code == 400
    assert (await anon_client.post(f"{BASE}/verify", json={"compact": "[]"})).json()["reason"] == "malformed"
    assert (await anon_client.get(f"{BASE}/verify/unknown")).status_code == 404


async def test_expired_wrong_holder_and_wrong_type(client: Any, anon_client: Any, service: Any,
                                                   frozen_clock: Any) -> None:
    start = clock.now()
    doc = await issue(service, valid_days=30)
    assert (await service.verify_wallet_licence("", "u1", doc["id"], "business_licence")).valid
    wrong_holder = await service.verify_wallet_licence("", "u2", doc["id"], "business_licence")
    assert (wrong_holder.valid, wrong_holder.reason) == (False, "wrong_holder")
    assert (await service.verify_wallet_licence("", "u1", doc["id"], "id_card")).reason == "wrong_type"
    assert (await service.verify_wallet_licence("", "u1", "missing", None)).reason == "unknown_licence"
    assert (await service.verify_wallet_licence("other", "u1", doc["id"], None)).reason == "unknown_licence"
    frozen_clock(start + timedelta(days=31))
    result = (await anon_client.post(f"{BASE}/verify", json=doc)).json()
    assert (result["valid"], result["reason"]) == (False, "expired")
    assert (await service.verify_wallet_licence("", "u1", doc["id"], "business_licence")).reason == "expired"
    assert (await service.get("", doc["id"]))["status"] == "expired"


async def test_issue_refuses_bad_subjects(client: Any, service: Any) -> None:
    from cityos.core.errors import BadRequestData

    for subject in ({"area": 12.5}, "not an object", {"big": "x" * 20000}):
        with pytest.raises(BadRequestData):
            await service.issue("", "u1", "business_licence", subject, "dept-market", None)
    with pytest.raises(BadRequestData):
        await service.issue("", "", "business_licence", {}, "dept-market", None)


async def test_a_document_not_issued_here_is_unknown_even_with_a_good_signature(
        anon_client: Any, service: Any) -> None:
    doc = await issue(service)
    # Re-signed by the issuer key but never stored: e.g. a stolen key would be detected online.
    forged = service._sign({**{k: v for k, v in doc.items() if k != "proof"}, "id": "forged-1"})
    result = (await anon_client.post(f"{BASE}/verify", json=forged)).json()
    assert (result["valid"], result["reason"]) == (False, "unknown_licence")
