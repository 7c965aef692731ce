"""Rule documents over the API: validation (JSON and YAML), versions, enable/disable, delete, access."""

from __future__ import annotations

from typing import Any

import pytest

from cityos.ops.rules.service import load_default_rules
from cityos.ops.rules.spec import validate_rule

BASE: dict[str, Any] = {"name": "PM2.5 high", "entityTypes": ["AirQualityObserved"], "severity": "major",
                        "condition": {"threshold": {"attr": "pm25", "op": ">", "value": 115}},
                        "department": "environment"}

YAML_RULE = """
id: noise-loud
name: Loud for 15 minutes
entityTypes: [NoiseLevelObserved]
condition:
  sustained: {attr: LAeq, op: ">", value: 70, for: PT15M}
severity: minor
incident: {category: environment.noise, level: general}
department: environment
"""


async def test_create_get_update_versions(api: Any) -> None:
    created = await api.rule({**BASE, "id": "pm25-high"})
    assert created["version"] == 1 and created["enabled"] is True and created["createdBy"].startswith("user:")
    r = await api.client.get("/api/ops/rules/pm25-high", headers=api.operator)
    assert r.status_code == 200 and r.json()["condition"] == BASE["condition"]
    changed = {**BASE, "severity": "critical", "condition": {"threshold": {"attr": "pm25", "op": ">", "value": 150}}}
    r = await api.client.put("/api/ops/rules/pm25-high", json=changed, headers=api.operator)
    assert r.status_code == 200 and r.json()["version"] == 2 and r.json()["severity"] == "critical"
    r = await api.client.post("/api/ops/rules/pm25-high/disable", headers=api.operator)
    assert r.status_code == 200 and r.json()["enabled"] is False and r.json()["version"] == 3
    r = await api.client.post("/api/ops/rules/pm25-high/enable", headers=api.operator)
    assert r.json()["enabled"] is True and r.json()["version"] == 4
    r = await api.client.get("/api/ops/rules/pm25-high/versions", headers=api.operator)
    history = r.json()
    assert [(v["version"], v["change"]) for v in history] == [(1, "created"), (2, "updated"), (3, "disabled"),
                                                              (4, "enabled")]
    assert history[0]["rule"]["condition"]["threshold"]["value"] == 115
    assert history[1]["rule"]["condition"]["threshold"]["value"] == 150
    r = await api.client.get("/api/ops/rules/pm25-high/versions/1", headers=api.operator)
    assert r.status_code == 200 and r.json()["rule"]["severity"] == "major"
    r = await api.client.get("/api/ops/rules/pm25-high/versions/9", headers=api.operator)
    assert r.status_code == 404
    # Optimistic concurrency: If-Match names the version the caller edited.
    r = await api.client.put("/api/ops/rules/pm25-high", json=BASE, headers={**api.operator, "If-Match": "2"})
    assert r.status_code == 409
    r = await api.client.put("/api/ops/rules/pm25-high", json=BASE, headers={**api.operator, "If-Match": "4"})
    assert r.status_code == 200 and r.json()["version"] == 5
    r = await api.client.put("/api/ops/rules/pm25-high", json=BASE, headers={**api.operator, "If-Match": "x"})
    assert r.status_code == 400
    # Delete: gone, but its history stays readable; re-creating continues the numbering.
    r = await api.client.delete("/api/ops/rules/pm25-high", headers=api.operator)
    assert r.status_code == 204
    assert (await api.client.get("/api/ops/rules/pm25-high", headers=api.operator)).status_code == 404
    r = await api.client.get("/api/ops/rules/pm25-high/versions", headers=api.operator)
    assert r.json()[-1]["change"] == "deleted"
    again = await api.rule({**BASE, "id": "pm25-high"})
    assert again["version"] == 7


async def test_yaml_body_and_listing(api: Any) -> None:
    r = await api.client.post("/api/ops/rules", content=YAML_RULE.encode(),
                              headers={**api.operator, "Content-Type": "application/yaml"})
    assert r.status_code == 201, r.text
    assert r.json()["condition"]["sustained"]["for"] == "PT15M" and r.headers["Location"] == "/api/ops/rules/noise-loud"
    created = await api.rule({**BASE})  # no id: one is generated
    assert created["id"].startswith("rule-")
    r = await api.client.get("/api/ops/rules", headers=api.operator)
    assert r.json()["total"] == 2
    r = await api.client.get("/api/ops/rules", params={"type": "NoiseLevelObserved"}, headers=api.operator)
    assert [x["id"] for x in r.json()["items"]] == ["noise-loud"]
    r = await api.client.get("/api/ops/rules", params={"severity": "major", "enabled": "true"}, headers=api.operator)
    assert [x["id"] for x in r.json()["items"]] == [created["id"]]
    r = await api.client.get("/api/ops/rules", params={"severity": "bad"}, headers=api.operator)
    assert r.status_code == 400
    r = await api.client.get("/api/ops/rules/schema", headers=api.operator)
    assert r.status_code == 200 and r.json()["title"] == "CityOS alarm rule"
    r = await api.client.post("/api/ops/rules/validate", json=BASE, headers=api.operator)
    assert r.status_code == 200 and r.json()["enabled"] is True
    # validate stores nothing
    assert (await api.client.get("/api/ops/rules", headers=api.operator)).json()["total"] == 2


def _bad(doc: dict[str, Any], **changes: Any) -> dict[str, Any]:
    return {**doc, **changes}


BAD_DOCS: list[tuple[str, Any, str]] = [
    ("wrong type of name", _bad(BASE, name=5), "name"),
    ("severity unknown", _bad(BASE, severity="urgent"), "severity"),
    ("unknown member", _bad(BASE, colour="red"), "unknown member(s) 'colour'"),
    ("missing condition", {k: v for k, v in BASE.items() if k != "condition"}, "condition"),
    ("bad operator", _bad(BASE, condition={"threshold": {"attr": "pm25", "op": ">>", "value": 1}}), "'>>'"),
    ("unknown condition kind", _bad(BASE, condition={"above": {"attr": "pm25", "value": 1}}), "above"),
    ("two kinds in one node", _bad(BASE, condition={"threshold": {"attr": "a", "op": ">", "value": 1},
                                                    "noData": {"for": 5}}), "exactly one"),
    ("unknown member in leaf", _bad(BASE, condition={"threshold": {"attr": "pm25", "op": ">", "value": 1,
                                                                   "unit": "x"}}), "unit"),
    ("attribute name malformed", _bad(BASE, condition={"threshold": {"attr": "pm 25", "op": ">", "value": 1}}),
     "well-formed"),
    ("entity type malformed", _bad(BASE, entityTypes=["Air Quality"]), "well-formed"),
    ("order op on string", _bad(BASE, condition={"threshold": {"attr": "pm25", "op": ">", "value": "high"}}),
     "needs a number"),
    ("in without list", _bad(BASE, condition={"threshold": {"attr": "s", "op": "in", "value": "x"}}), "list"),
    ("== with list", _bad(BASE, condition={"threshold": {"attr": "s", "op": "==", "value": ["x"]}}), "single"),
    ("bad duration", _bad(BASE, condition={"sustained": {"attr": "pm25", "op": ">", "value": 1, "for": "10 min"}}),
     "ISO 8601"),
    ("zero duration", _bad(BASE, condition={"noData": {"for": 0}}), "noData.for"),
    ("sustained without inner", _bad(BASE, condition={"sustained": {"for": "PT1M"}}), "needs 'condition'"),
    ("bad polygon", _bad(BASE, condition={"geofence": {"inside": {"type": "Polygon", "coordinates": [[[0, 0], [1, 1],
                                                                                                       [1, 0]]]}}}),
     "polygon"),
    ("geofence both sides", _bad(BASE, condition={"geofence": {}}), "exactly one"),
    ("bad id pattern", _bad(BASE, idPattern="(unclosed"), "idPattern"),
    ("bad id", _bad(BASE, id="no spaces please"), "id"),
    ("empty all", _bad(BASE, condition={"all": []}), "all"),
    ("unknown referenced rule", _bad(BASE, condition={"rule": "nope"}), "does not exist"),
    ("device combined", _bad(BASE, entityTypes=["Device"], condition={"any": [{"device": "offline"}]}), "combined"),
    ("device rule on other type", _bad(BASE, condition={"device": "offline"}), "Device"),
    ("incident level", _bad(BASE, incident={"category": "x", "level": "apocalyptic"}), "level"),
    ("not an object", ["a", "list"], "object"),
]


@pytest.mark.parametrize(("case", "doc", "needle"), BAD_DOCS, ids=[c[0] for c in BAD_DOCS])
async def test_bad_documents(api: Any, case: str, doc: Any, needle: str) -> None:
    r = await api.client.post("/api/ops/rules", json=doc, headers=api.operator)
    assert r.status_code == 400, (case, r.text)
    body = r.json()
    assert body["title"] and needle in body["detail"], (case, body["detail"])


async def test_malformed_bodies(api: Any) -> None:
    r = await api.client.post("/api/ops/rules", content=b'{"name": ', headers={**api.operator,
                                                                               "Content-Type": "application/json"})
    assert r.status_code == 400 and "not valid JSON" in r.json()["detail"]
    r = await api.client.post("/api/ops/rules", content=b"name: [unclosed", headers={**api.operator,
                                                                                     "Content-Type": "text/yaml"})
    assert r.status_code == 400 and "YAML" in r.json()["detail"]
    r = await api.client.post("/api/ops/rules", content=b"a: &x [1]\nb: *x\n",
                              headers={**api.operator, "Content-Type": "application/yaml"})
    assert r.status_code == 400 and "aliases" in r.json()["detail"]
    r = await api.client.post("/api/ops/rules", content=b"", headers={**api.operator,
                                                                      "Content-Type": "application/json"})
    assert r.status_code == 400 and "empty" in r.json()["detail"]
    r = await api.client.post("/api/ops/rules", content=b"<rule/>", headers={**api.operator,
                                                                             "Content-Type": "application/xml"})
    assert r.status_code == 415
    r = await api.client.post("/api/ops/rules", content=b"\xff\xfe", headers={**api.operator,
                                                                              "Content-Type": "application/yaml"})
    assert r.status_code == 400
    r = await api.client.post("/api/ops/rules", content=b"x" * (300 * 1024),
                              headers={**api.operator, "Content-Type": "application/yaml"})
    assert r.status_code == 413


async def test_references_and_cycles(api: Any) -> None:
    await api.rule({**BASE, "id": "a"})
    await api.rule({**BASE, "id": "b", "condition": {"all": [{"rule": "a"},
                                                             {"threshold": {"attr": "no2", "op": ">", "value": 1}}]}})
    # a → b → a
    r = await api.client.put("/api/ops/rules/a", json={**BASE, "condition": {"rule": "b"}}, headers=api.operator)
    assert r.status_code == 400 and "cycle" in r.json()["detail"] and "a → b → a" in r.json()["detail"]
    # self reference
    r = await api.client.put("/api/ops/rules/a", json={**BASE, "condition": {"any": [{"rule": "a"}]}},
                             headers=api.operator)
    assert r.status_code == 400 and "cycle" in r.json()["detail"]
    # a referenced rule cannot be deleted
    r = await api.client.delete("/api/ops/rules/a", headers=api.operator)
    assert r.status_code == 409 and "referenced by b" in r.json()["detail"]
    # the reference evaluates a's condition
    await api.upsert({"id": "urn:ngsi-ld:AirQualityObserved:x", "type": "AirQualityObserved",
                      "pm25": {"type": "Property", "value": 200}, "no2": {"type": "Property", "value": 5}})
    assert sorted(a["ruleId"] for a in await api.alarms()) == ["a", "b"]


async def test_unknown_ids_and_conflicts(api: Any) -> None:
    for method, path in (("GET", "/api/ops/rules/nope"), ("PUT", "/api/ops/rules/nope"),
                         ("DELETE", "/api/ops/rules/nope"), ("POST", "/api/ops/rules/nope/enable"),
                         ("POST", "/api/ops/rules/nope/disable"), ("GET", "/api/ops/rules/nope/versions")):
        r = await api.client.request(method, path, json=BASE, headers=api.operator)
        assert r.status_code == 404, (method, path, r.text)
    await api.rule({**BASE, "id": "dup"})
    r = await api.client.post("/api/ops/rules", json={**BASE, "id": "dup"}, headers=api.operator)
    assert r.status_code == 409
    r = await api.client.put("/api/ops/rules/dup", json={**BASE, "id": "other"}, headers=api.operator)
    assert r.status_code == 400 and "URL" in r.json()["detail"]


async def test_rule_access(api: Any) -> None:
    r = await api.anon.get("/api/ops/rules")
    assert r.status_code == 401
    r = await api.anon.post("/api/ops/rules", json=BASE)
    assert r.status_code == 401
    r = await api.client.post("/api/ops/rules", json=BASE, headers=api.auth.headers("citizen"))
    assert r.status_code == 403
    r = await api.client.post("/api/ops/rules", json=BASE, headers=api.auth.headers("official",
                                                                                     department="environment"))
    assert r.status_code == 403  # officials read rules, they do not write them
    r = await api.client.get("/api/ops/rules", headers=api.auth.headers("auditor"))
    assert r.status_code == 200
    # A dept_admin manages only its own department's rules.
    env_admin = api.auth.headers("dept_admin", department="environment")
    traffic_admin = api.auth.headers("dept_admin", department="transport")
    r = await api.client.post("/api/ops/rules", json={**BASE, "id": "env"}, headers=env_admin)
    assert r.status_code == 201
    r = await api.client.post("/api/ops/rules", json={**BASE, "id": "env2"}, headers=traffic_admin)
    assert r.status_code == 403
    r = await api.client.put("/api/ops/rules/env", json={**BASE, "department": "transport"}, headers=traffic_admin)
    assert r.status_code == 403
    r = await api.client.put("/api/ops/rules/env", json={**BASE, "department": "transport"}, headers=env_admin)
    assert r.status_code == 403  # moving it out of the department needs rights there too
    r = await api.client.delete("/api/ops/rules/env", headers=traffic_admin)
    assert r.status_code == 403
    r = await api.client.post("/api/ops/rules/env/disable", headers=env_admin)
    assert r.status_code == 200
    # a token for another tenant cannot name ours
    r = await api.client.get("/api/ops/rules", headers={**api.auth.headers("operator", tenant="t2"),
                                                        "NGSILD-Tenant": "t3"})
    assert r.status_code == 403


async def test_disable_and_delete_clear_alarms(api: Any) -> None:
    await api.rule({**BASE, "id": "pm25-high"})
    entity = {"id": "urn:ngsi-ld:AirQualityObserved:x", "type": "AirQualityObserved",
              "pm25": {"type": "Property", "value": 200}}
    await api.upsert(entity)
    assert (await api.client.post("/api/ops/rules/pm25-high/disable", headers=api.operator)).status_code == 200
    [alarm] = await api.alarms()
    assert alarm["status"] == "cleared" and alarm["clearReason"] == "rule disabled"
    await api.upsert(entity)  # disabled: nothing
    assert len(await api.alarms()) == 1
    await api.client.post("/api/ops/rules/pm25-high/enable", headers=api.operator)
    await api.upsert(entity)
    assert len(await api.alarms(status="active")) == 1
    await api.client.delete("/api/ops/rules/pm25-high", headers=api.operator)
    assert await api.alarms(status="open") == []


def test_default_rules_are_valid() -> None:
    docs = load_default_rules()
    ids = [d["id"] for d in docs]
    assert len(ids) == len(set(ids)) >= 10
    for doc in docs:
        clean = validate_rule(doc)
        assert clean["id"] == doc["id"]
    assert {"device-offline", "air-pm25-sustained", "river-level-warning", "smoke-detected"} <= set(ids)


async def test_install_defaults_is_idempotent(api: Any, rules: Any) -> None:
    r = await api.client.post("/api/ops/rules/install-defaults", headers=api.operator)
    assert r.status_code == 200 and "air-pm25-sustained" in r.json()["created"]
    r = await api.client.post("/api/ops/rules/install-defaults", headers=api.operator)
    assert r.json()["created"] == []
    assert await rules.install_defaults("") == []
    total = (await api.client.get("/api/ops/rules", headers=api.operator)).json()["total"]
    assert total == len(load_default_rules())
