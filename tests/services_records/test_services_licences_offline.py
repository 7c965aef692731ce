"""The offline verifier and the canonical form, without any server; key files and rotation."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cityos.services.licences import verify_offline
from cityos.services.licences.keys import LicenceKey, load_keys, retire_key, rotate_key_file
from cityos.services.licences.verify import (
    FORMAT,
    REVOCATION_FORMAT,
    CanonicalError,
    b64url,
    canonical_bytes,
    signing_input,
)

NOW = datetime(2026, 6, 1, 8, 0, tzinfo=UTC)


def sign(body: dict[str, Any], key: LicenceKey) -> dict[str, Any]:
    return {**body, "proof": {"alg": "EdDSA", "kid": key.kid, "canonicalization": "x",
                              "signature": b64url(key.sign(signing_input(body)))}}


def licence(key: LicenceKey, **overrides: Any) -> dict[str, Any]:
    body = {"id": "lic-1", "format": FORMAT, "licenceType": "business_licence", "tenant": "", "holder": "u1",
            "subject": {"name": "张三", "idNumber": "110101199003071234", "company": "三元餐饮有限公司"},
            "issuer": {"name": "https://city.example", "department": "dept-market"}, "applicationId": "a1",
            "issuedAt": "2026-05-01T00:00:00.000Z", "expiresAt": "2027-05-01T00:00:00.000Z",
            "verifyUrl": "https://city.example/api/services/licences/verify/lic-1", **overrides}
    return sign(body, key)


@pytest.fixture
def key() -> LicenceKey:
    return LicenceKey.of(Ed25519PrivateKey.generate())


def jwks(*keys: LicenceKey) -> dict[str, Any]:
    return {"keys": [k.jwk() for k in keys]}


def test_canonical_form_is_sorted_compact_utf8_and_refuses_floats() -> None:
    assert canonical_bytes({"b": 1, "a": [True, None, "é"], "A": {"y": "\n", "x": "中"}}) == \
        '{"A":{"x":"中","y":"\\n"},"a":[true,null,"é"],"b":1}'.encode()
    # UTF-16 code-unit order (RFC 8785): U+10000 (surrogates D800…) sorts before U+FB33.
    assert canonical_bytes({"\ufb33": 1, "\U00010000": 2}) == '{"\U00010000":2,"\ufb33":1}'.encode()
    with pytest.raises(CanonicalError):
        canonical_bytes({"x": 1.5})
    with pytest.raises(CanonicalError):
        canonical_bytes({"x": 2**60})


def test_valid_licence_verifies_offline(key: LicenceKey) -> None:
    result = verify_offline(licence(key), jwks(key), now=NOW)
    assert (result.valid, result.reason) == (True, "valid")
    assert result.licence is not None and result.licence["holder"] == "u1"
    assert verify_offline(licence(key), [key.jwk()], now=NOW, holder="u1", licence_type="business_licence").valid


def test_any_changed_byte_is_rejected(key: LicenceKey) -> None:
    good = licence(key)
    subject = copy.deepcopy(good)
    subject["subject"]["idNumber"] = "110101199003071235"
    assert verify_offline(subject, jwks(key), now=NOW).reason == "bad_signature"
    extended = copy.deepcopy(good)
    extended["expiresAt"] = "2099-05-01T00:00:00.000Z"
    assert verify_offline(extended, jwks(key), now=NOW).reason == "bad_signature"
    added = {**copy.deepcopy(good), "extra": True}
    assert verify_offline(added, jwks(key), now=NOW).reason == "bad_signature"
    signature = good["proof"]["signature"]
    for position in (0, len(signature) // 2, len(signature) - 2):
        flipped = copy.deepcopy(good)
        char = "A" if signature[position] != "A" else "B"
        flipped["proof"]["signature"] = signature[:position] + char + signature[position + 1:]
        assert verify_offline(flipped, jwks(key), now=NOW).reason in ("bad_signature", "malformed")
        assert not verify_offline(flipped, jwks(key), now=NOW).valid


def test_malformed_unknown_key_expired_and_not_yet_valid(key: LicenceKey) -> None:
    other = LicenceKey.of(Ed25519PrivateKey.generate())
    assert verify_offline(licence(key), jwks(other), now=NOW).reason == "unknown_key"
    assert verify_offline("not a licence", jwks(key), now=NOW).reason == "malformed"
    assert verify_offline({"id": "x"}, jwks(key), now=NOW).reason == "malformed"
    no_proof = {k: v for k, v in licence(key).items() if k != "proof"}
    assert verify_offline(no_proof, jwks(key), now=NOW).reason == "malformed"
    assert verify_offline(licence(key), jwks(key), now=datetime(2027, 5, 2, tzinfo=UTC)).reason == "expired"
    assert verify_offline(licence(key), jwks(key), now=datetime(2026, 4, 1, tzinfo=UTC)).reason == "not_yet_valid"
    with_float = licence(key)
    with_float["subject"]["area"] = 1.5  # cannot be canonicalised, so cannot have been signed
    assert verify_offline(with_float, jwks(key), now=NOW).reason == "malformed"


def test_wrong_holder_type_and_revocation_lists(key: LicenceKey) -> None:
    doc = licence(key)
    assert verify_offline(doc, jwks(key), now=NOW, holder="u2").reason == "wrong_holder"
    assert verify_offline(doc, jwks(key), now=NOW, licence_type="id_card").reason == "wrong_type"
    assert verify_offline(doc, jwks(key), now=NOW, revocations=["lic-1"]).reason == "revoked"
    signed_list = sign({"format": REVOCATION_FORMAT, "tenant": "", "issuer": "x", "issuedAt": "2026-05-02T00:00:00Z",
                        "revoked": [{"id": "lic-1", "revokedAt": "2026-05-02T00:00:00Z"}]}, key)
    assert verify_offline(doc, jwks(key), now=NOW, revocations=signed_list).reason == "revoked"
    forged = copy.deepcopy(signed_list)
    forged["revoked"] = []
    assert verify_offline(doc, jwks(key), now=NOW, revocations=forged).reason == "bad_signature"
    other_tenant = sign({**{k: v for k, v in signed_list.items() if k != "proof"}, "tenant": "t2"}, key)
    assert verify_offline(doc, jwks(key), now=NOW, revocations=other_tenant).reason == "malformed"
    empty = sign({"format": REVOCATION_FORMAT, "tenant": "", "issuer": "x", "issuedAt": "2026-05-02T00:00:00Z",
                  "revoked": []}, key)
    assert verify_offline(doc, jwks(key), now=NOW, revocations=empty).valid


def test_key_file_rotation_keeps_old_licences_verifying(tmp_path: Path) -> None:
    path = tmp_path / "licence-signing.pem"
    first_kid = rotate_key_file(path)
    [first] = load_keys(path)
    assert first.kid == first_kid and first.private is not None
    old = licence(first)
    second_kid = rotate_key_file(path)
    keys = load_keys(path)
    assert [k.kid for k in keys] == [second_kid, first_kid]  # the new key signs, the old one verifies
    new = licence(keys[0], id="lic-2")
    published = jwks(*keys)
    assert verify_offline(old, published, now=NOW).valid and verify_offline(new, published, now=NOW).valid
    assert new["proof"]["kid"] == second_kid != old["proof"]["kid"]
    retire_key(path, first_kid)
    retired = load_keys(path)
    assert [(k.kid, k.private is not None) for k in retired] == [(second_kid, True), (first_kid, False)]
    assert verify_offline(old, jwks(*retired), now=NOW).valid
    with pytest.raises(RuntimeError):
        retire_key(path, second_kid)
    with pytest.raises(RuntimeError):
        retired[1].sign(b"x")
    assert oct(path.stat().st_mode & 0o777) == "0o600"


def test_offline_verifier_module_needs_nothing_from_cityos() -> None:
    source = (Path(__file__).parents[2] / "src/cityos/services/licences/verify.py").read_text()
    imports = [line for line in source.splitlines() if line.startswith(("import ", "from "))]
    assert imports and all("cityos" not in line for line in imports)
    assert (NOW + timedelta(0)).tzinfo is UTC
