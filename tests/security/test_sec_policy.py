"""The policy, tested from its own data: every role × action, every data class × role, and masking."""

from __future__ import annotations

import pytest

from cityos.security.masking import mask_entity, mask_entity_report, mask_string, mask_text
from cityos.security.policy import (
    ACTIONS,
    ANONYMOUS,
    MATRIX,
    TWO_PERSON_ACTIONS,
    VISIBILITY,
    DataClass,
    Principal,
    Resource,
    Role,
    Scope,
    Visibility,
    authorize,
    effective_tenant,
    scope_for,
    visible_class,
)

ROLES = [ANONYMOUS, *[r.value for r in Role]]


def principal(role: str) -> Principal | None:
    if role == ANONYMOUS:
        return None
    return Principal(id="p1", role=role, tenant="t1", department="d1", departments=frozenset({"d1", "d1a"}),
                     districts=frozenset({"east"}))


CASES = [(role, action) for role in ROLES for action in ACTIONS]


@pytest.mark.parametrize(("role", "action"), CASES, ids=[f"{r}-{a}" for r, a in CASES])
def test_matrix(role: str, action: str) -> None:
    scope = scope_for(role, action)
    p = principal(role)
    own = Resource("x", tenant="t1", department="d1", district="east", owner="p1")
    sub_dept = Resource("x", tenant="t1", department="d1a")
    by_district = Resource("x", tenant="t1", district="east")
    other_dept = Resource("x", tenant="t1", department="d2", owner="someone")
    other_district = Resource("x", tenant="t1", district="west")
    other_tenant = Resource("x", tenant="t2", department="d1", owner="p1")

    decision = authorize(p, action, own)
    assert decision.allowed == (scope is not Scope.NONE)
    if decision.allowed:
        assert decision.requires_approval == (action in TWO_PERSON_ACTIONS and scope is not Scope.PUBLIC)
    for res in (sub_dept, by_district):
        assert authorize(p, action, res).allowed == (scope in (Scope.PUBLIC, Scope.DEPARTMENT, Scope.TENANT,
                                                               Scope.ALL))
    for res in (other_dept, other_district):
        assert authorize(p, action, res).allowed == (scope in (Scope.PUBLIC, Scope.TENANT, Scope.ALL))
    assert authorize(p, action, other_tenant).allowed == (scope in (Scope.PUBLIC, Scope.ALL))


def test_matrix_is_well_formed() -> None:
    for role, row in MATRIX.items():
        assert role in ROLES
        assert set(row) <= set(ACTIONS), role
    # Separation of duties: nobody both administers and audits; only sys_admin reaches all tenants.
    assert scope_for(Role.SYS_ADMIN, "audit.read") is Scope.NONE
    assert all(scope_for(r, a) is not Scope.ALL for r in ROLES if r != Role.SYS_ADMIN for a in ACTIONS)
    assert authorize(principal("sys_admin"), "no.such.action", Resource()).allowed is False


def test_device_principal() -> None:
    device = Principal.device("urn:dev:1", tenant="t1", department="d1", district="east")
    assert authorize(device, "telemetry.write", Resource("device", "t1", owner="urn:dev:1"))
    assert not authorize(device, "telemetry.write", Resource("device", "t1", owner="urn:dev:2"))
    assert not authorize(device, "entity.read", Resource("entity", "t1"))


VIS_CASES = [(c.value, role) for c in DataClass for role in ROLES]


@pytest.mark.parametrize(("data_class", "role"), VIS_CASES, ids=[f"{c}-{r}" for c, r in VIS_CASES])
def test_visibility(data_class: str, role: str) -> None:
    rule = VISIBILITY[data_class][role]
    p = principal(role)
    inside = visible_class(p, data_class, "d1")
    outside = visible_class(p, data_class, "d9")
    if rule.startswith("dept:"):
        want_in, want_out = rule[5:].split("/")
        assert (inside.value, outside.value) == (want_in, want_out)
    else:
        assert inside.value == outside.value == rule
    if data_class == "confidential":  # never leaves its owning department
        assert outside is Visibility.HIDDEN
    if role == ANONYMOUS:
        assert (inside is Visibility.CLEAR) == (data_class == "public")


def test_unknown_class_fails_closed() -> None:
    assert visible_class(principal("sys_admin"), "secret-ish", None) is Visibility.HIDDEN
    assert visible_class(principal("official"), "confidential", None) is Visibility.HIDDEN


def test_mask_shapes() -> None:
    assert mask_string("110101199003071234") == "110***********1234"
    assert mask_string("13812345678") == "138****5678"
    assert mask_string("张三") == "张*"
    assert mask_string("欧阳娜娜") == "欧***"
    assert mask_string("zhang@example.cn") == "z***@example.cn"
    assert mask_text("call 13812345678 id 11010119900307123X") == "call 138****5678 id 110***********123X"


ENTITY = {
    "id": "urn:ngsi-ld:Person:1", "type": "Person",
    "pm25": {"type": "Property", "value": 12},
    "battery": {"type": "Property", "value": 80, "unitCode": "P1"},
    "phone": {"type": "Property", "value": "13812345678", "observedAt": "2026-11-21T08:00:00Z"},
    "name": [{"type": "Property", "value": "张三", "datasetId": "urn:a"}],
    "caseNotes": {"type": "Property", "value": "domestic violence report"},
    "home": {"type": "GeoProperty", "value": {"type": "Point", "coordinates": [110.334567, 20.012345]}},
}
CLASSES = {"pm25": "public", "battery": "internal", "phone": "sensitive", "name": "sensitive",
           "caseNotes": "confidential", "home": "sensitive"}


@pytest.mark.parametrize("role", ROLES)
def test_mask_entity_per_role(role: str) -> None:
    p = principal(role)
    for dept in ("d1", "d9"):
        out = mask_entity(ENTITY, CLASSES, p, owning_department=dept)
        assert out["id"] == ENTITY["id"] and out["type"] == "Person"
        for attr, data_class in CLASSES.items():
            seen = visible_class(p, data_class, dept)
            if seen is Visibility.HIDDEN:
                assert attr not in out
            elif seen is Visibility.CLEAR:
                assert out[attr] == ENTITY[attr]
            else:
                assert out[attr] != ENTITY[attr]
    if role == "auditor":
        out = mask_entity(ENTITY, CLASSES, p, "d1")
        assert out["phone"]["value"] == "138****5678" and out["phone"]["observedAt"] == "2026-11-21T08:00:00Z"
        assert out["name"][0]["value"] == "张*" and out["name"][0]["datasetId"] == "urn:a"
        assert out["home"]["value"]["coordinates"] == [110.33, 20.01]
        assert "caseNotes" not in out


def test_mask_report_and_key_values() -> None:
    report = mask_entity_report(ENTITY, CLASSES, principal("official"), "d1")
    assert sorted(report.revealed) == ["caseNotes", "home", "name", "phone"]
    kv = {"id": "urn:x", "type": "Person", "phone": "13812345678", "other": 1}
    out = mask_entity(kv, {"phone": "sensitive"}, principal("operator"))
    assert out["phone"] == "138****5678" and out["other"] == 1  # "other" → default internal, operator sees it
    assert "other" not in mask_entity(kv, {"phone": "sensitive"}, None)


def test_effective_tenant() -> None:
    p = principal("official")
    assert effective_tenant(p, None) == "t1" and effective_tenant(p, "t1") == "t1"
    with pytest.raises(PermissionError):
        effective_tenant(p, "t2")
    assert effective_tenant(principal("sys_admin"), "t2") == "t2"
    assert effective_tenant(None, "t3") == "t3"
