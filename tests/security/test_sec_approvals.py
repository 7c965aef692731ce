"""Two-person approval (双人双锁) and field encryption with key rotation."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest
from sec_harness import Harness

from cityos.security.audit import AuditQuery
from cityos.security.crypto import CryptoError, KeyRing, is_encrypted, key_id, load_keyring
from cityos.security.settings import SecuritySettings


async def test_assign_admin_role_two_person(sec: Harness) -> None:
    a = await sec.user("admin-a", "sys_admin")
    b = await sec.user("admin-b", "sys_admin")
    citizen = await sec.user("carl", "citizen")
    ha, hb, hc = await sec.bearer(a), await sec.bearer(b), await sec.bearer(citizen)
    r = await sec.client.post("/auth/approvals", headers=ha, json={
        "kind": "assign_admin_role", "params": {"username": "carl", "role": "dept_admin"}, "reason": "new head"})
    assert r.status_code == 201, r.text
    approval = r.json()["id"]
    # Self-approval is refused; so is an unauthorised second person.
    r = await sec.client.post(f"/auth/approvals/{approval}/approve", headers=ha)
    assert r.status_code == 403 and "two-person" in r.json()["detail"]
    assert (await sec.client.post(f"/auth/approvals/{approval}/approve", headers=hc)).status_code == 403
    # Not executable before approval.
    assert (await sec.client.post(f"/auth/approvals/{approval}/execute", headers=ha)).status_code == 409
    r = await sec.client.post(f"/auth/approvals/{approval}/approve", headers=hb)
    assert r.status_code == 200 and r.json()["status"] == "approved"
    # Only the requester executes, once.
    assert (await sec.client.post(f"/auth/approvals/{approval}/execute", headers=hb)).status_code == 403
    r = await sec.client.post(f"/auth/approvals/{approval}/execute", headers=ha)
    assert r.status_code == 200 and r.json()["status"] == "executed"
    assert (await sec.service.get_user("carl"))["role"] == "dept_admin"
    assert (await sec.client.post(f"/auth/approvals/{approval}/execute", headers=ha)).status_code == 409
    # The citizen's old session was revoked when the role changed.
    assert (await sec.client.get("/auth/me", headers=hc)).status_code == 401
    actions = [r["action"] for r in await sec.state.audit.search(AuditQuery(resource=f"approval:{approval}"))]
    assert {"approval.request.assign_admin_role", "approval.approve", "approval.execute"} <= set(actions)
    assert actions.count("approval.approve") == 3  # two refusals + the approval, all recorded


async def test_refusal_and_requester_rights(sec: Harness) -> None:
    a = await sec.user("admin-a", "sys_admin")
    b = await sec.user("admin-b", "sys_admin")
    op = await sec.user("op", "operator")
    ha, hb = await sec.bearer(a), await sec.bearer(b)
    # An operator may not even ask for a tenant deletion.
    r = await sec.client.post("/auth/approvals", headers=await sec.bearer(op),
                              json={"kind": "delete_tenant", "params": {"tenant": "t9"}, "reason": "x"})
    assert r.status_code == 403
    r = await sec.client.post("/auth/approvals", headers=ha,
                              json={"kind": "delete_tenant", "params": {"tenant": "t9"}, "reason": "closing"})
    approval = r.json()["id"]
    r = await sec.client.post(f"/auth/approvals/{approval}/refuse", headers=hb)
    assert r.json()["status"] == "refused"
    assert (await sec.client.post(f"/auth/approvals/{approval}/execute", headers=ha)).status_code == 409
    assert (await sec.client.post(f"/auth/approvals/{approval}/approve", headers=hb)).status_code == 409


async def test_delete_tenant(sec: Harness) -> None:
    a = await sec.user("admin-a", "sys_admin")
    b = await sec.user("admin-b", "sys_admin")
    victim = await sec.user("tina", "citizen", tenant="t9")
    deleted: list[str] = []

    async def hook(tenant: str) -> None:
        deleted.append(tenant)

    sec.service.tenant_deletion_hooks.append(hook)
    approval = await sec.state.approvals.request(await _p(sec, a), "delete_tenant", {"tenant": "t9"}, "closing")
    await sec.state.approvals.decide(await _p(sec, b), approval["id"], True)
    done = await sec.state.approvals.execute(await _p(sec, a), approval["id"])
    assert done["result"]["users_disabled"] == 1 and deleted == ["t9"]
    assert (await sec.service.get_user(victim.username))["disabled"]


async def _p(sec: Harness, new: object) -> object:
    from sec_harness import Harness as _H  # noqa: F401
    token = (await sec.token(new))["access_token"]  # type: ignore[arg-type]
    return await sec.service.authenticate(token)


async def test_sensitive_export_grant(sec: Harness) -> None:
    await sec.service.add_department("d1", "Civil affairs", districts=["east"])
    await sec.service.add_department("d2", "Water")
    official = await sec.user("ofi", "official", department="d1")
    boss = await sec.user("boss", "dept_admin", department="d1")
    other_boss = await sec.user("boss2", "dept_admin", department="d2")
    p_off, p_boss, p_other = await _p(sec, official), await _p(sec, boss), await _p(sec, other_boss)
    approvals = sec.state.approvals
    item = await approvals.request(p_off, "export_sensitive", {"dataset": "residents", "department": "d1"}, "census")
    from cityos.security.service import Forbidden
    with pytest.raises(Forbidden):
        await approvals.decide(p_other, item["id"], True)  # another department's admin
    await approvals.decide(p_boss, item["id"], True)
    grant = (await approvals.execute(p_off, item["id"]))["result"]["grant"]
    with pytest.raises(Forbidden):
        await approvals.consume_grant(grant, p_boss)  # not the requester's
    assert (await approvals.consume_grant(grant, p_off))["dataset"] == "residents"
    with pytest.raises(Forbidden):
        await approvals.consume_grant(grant, p_off)  # once only


async def test_rotate_keys_reencrypts(sec: Harness) -> None:
    a = await sec.user("admin-a", "sys_admin")
    b = await sec.user("admin-b", "sys_admin")
    for i in range(7):
        await sec.service.create_user(f"cit{i}", "Correct-Horse-9-battery", "citizen", phone=f"1381234567{i}",
                                      id_number=f"11010119900307123{i}")
    old = sec.service.keyring.active
    row = await sec.service.get_user("cit3")
    assert is_encrypted(row["phone"]) and key_id(row["phone"]) == old and "13812345673" not in str(row)
    item = await sec.state.approvals.request(await _p(sec, a), "rotate_keys", {}, "yearly")
    await sec.state.approvals.decide(await _p(sec, b), item["id"], True)
    done = await sec.state.approvals.execute(await _p(sec, a), item["id"])
    new = done["result"]["active"]
    assert new != old and done["result"]["rewritten"]["sec_users.phone"] == 7
    row = await sec.service.get_user("cit3")
    assert key_id(row["phone"]) == new
    assert sec.service.personal_data(row) == {"phone": "13812345673", "id_number": "110101199003071233"}
    # The rotated ring was saved: a new process reads it.
    reloaded = load_keyring(sec.state.settings)
    assert reloaded.active == new and reloaded.decrypt(row["id_number"]) == "110101199003071233"


def test_field_encryption(tmp_path: Path) -> None:
    aes = base64.urlsafe_b64encode(os.urandom(32)).decode()
    sm4 = base64.urlsafe_b64encode(os.urandom(16)).decode()
    ring = load_keyring(SecuritySettings(data_keys=f"s1:sm4gcm:{sm4},a1:aes256gcm:{aes}", data_dir=tmp_path))
    token = ring.encrypt("张三 13812345678")
    assert token.startswith("enc:v1:s1:") and ring.decrypt(token) == "张三 13812345678"
    aes_ring = KeyRing({"a1": ring.keys["a1"]}, "a1")
    token2 = aes_ring.encrypt("x")
    assert ring.decrypt(token2) == "x"
    tampered = token[:-3] + ("A" if token[-3] != "A" else "B") + token[-2:]
    with pytest.raises(CryptoError):
        ring.decrypt(tampered)
    with pytest.raises(CryptoError):
        KeyRing({"k": ("aes256gcm", b"short")}, "k")
    with pytest.raises(CryptoError):
        load_keyring(SecuritySettings(env="production", data_keys=None, data_dir=tmp_path))
