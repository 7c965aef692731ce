"""The catalogue: search, guides, files refused at load with the reason, management by API."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import httpx
import pytest

from cityos.services.catalogue import CATALOGUE_DIR, CatalogueError, load_directory

SEED = {"company-establishment", "housing-fund-withdrawal", "social-security-card", "construction-permit",
        "business-licence-change", "birth-certificate", "newborn-household-registration", "newborn-medical-insurance",
        # started pre-filled by 服务找人 (livelihood), also applied for directly
        "dibao-application", "rd-super-deduction"}


async def test_services_catalogue_search(client: httpx.AsyncClient, anon_client: httpx.AsyncClient,
                                         auth: Any) -> None:
    everything = await anon_client.get("/api/services/catalogue")
    assert everything.status_code == 200
    assert {s["code"] for s in everything.json()["items"]} == SEED
    assert [b["code"] for b in everything.json()["bundles"]] == ["newborn-birth"]
    found = (await anon_client.get("/api/services/catalogue", params={"q": "公积金"})).json()["items"]
    assert [s["code"] for s in found] == ["housing-fund-withdrawal"]
    births = (await anon_client.get("/api/services/catalogue", params={"lifeEvent": "birth"})).json()
    assert {s["code"] for s in births["items"]} == {"birth-certificate", "newborn-household-registration",
                                                    "newborn-medical-insurance", "social-security-card"}
    firms = (await anon_client.get("/api/services/catalogue", params={"audience": "enterprise"})).json()["items"]
    assert {s["code"] for s in firms} == {"company-establishment", "construction-permit", "business-licence-change",
                                          "rd-super-deduction"}
    assert (await anon_client.get("/api/services/catalogue", params={"audience": "alien"})).status_code == 400


async def test_services_catalogue_guide(anon_client: httpx.AsyncClient) -> None:
    guide = (await anon_client.get("/api/services/catalogue/company-establishment")).json()
    assert guide["department"] == "market-regulation" and guide["timeLimitDays"] == 1
    assert guide["legalBasis"].startswith("《中华人民共和国市场主体登记管理条例》")
    assert guide["channels"] == ["online", "hall"] and guide["instantApproval"] is False
    assert {m["name"]: m["licenceType"] for m in guide["materials"]}["id-card"] == "id-card"
    assert guide["form"]["type"] == "object" and "companyName" in guide["form"]["properties"]
    assert {s["department"] for s in guide["process"]["steps"]} == {
        "market-regulation", "public-security", "tax", "human-resources-social-security"}
    fund = (await anon_client.get("/api/services/catalogue/housing-fund-withdrawal")).json()
    assert fund["instantApproval"] is True and fund["fees"] == []
    bundle = (await anon_client.get("/api/services/catalogue/newborn-birth")).json()
    assert bundle["bundle"] is True and len(bundle["services"]) == 4 and "childName" in bundle["form"]["properties"]
    assert (await anon_client.get("/api/services/catalogue/nope")).status_code == 404


def _copy_catalogue(tmp_path: Path) -> Path:
    target = tmp_path / "catalogue"
    shutil.copytree(CATALOGUE_DIR, target)
    return target


def test_services_broken_bpmn_refused_at_load(tmp_path: Path) -> None:
    directory = _copy_catalogue(tmp_path)
    bpmn = directory / "bpmn" / "social-security-card.bpmn"
    # A sequence flow pointing at nothing: XSD-valid XML, but not a runnable process.
    bpmn.write_text(bpmn.read_text().replace('targetRef="end"', 'targetRef="nowhere"'))
    with pytest.raises(CatalogueError) as refused:
        load_directory(directory)
    assert "social-security-card.yaml" in str(refused.value) and "nowhere" in str(refused.value)
    # Not well-formed XML.
    bpmn.write_text("<bpmn:definitions")
    with pytest.raises(CatalogueError, match="not well-formed"):
        load_directory(directory)


def test_services_bpmn_without_diagram_or_lanes_refused(tmp_path: Path) -> None:
    directory = _copy_catalogue(tmp_path)
    bpmn = directory / "bpmn" / "birth-certificate.bpmn"
    text = bpmn.read_text()
    bpmn.write_text(text[:text.index("  <bpmndi:BPMNDiagram")] + "</bpmn:definitions>\n")
    with pytest.raises(CatalogueError, match="BPMNDiagram"):
        load_directory(directory)
    start, end = text.index("    <bpmn:laneSet"), text.index("    </bpmn:laneSet>") + len("    </bpmn:laneSet>\n")
    bpmn.write_text(text[:start] + text[end:])
    with pytest.raises(CatalogueError, match="not in a lane"):
        load_directory(directory)
    bpmn.write_text(text.replace("escalated = True", "__import__('os').system('true')"))
    with pytest.raises(CatalogueError, match="forbidden"):
        load_directory(directory)


def test_services_broken_definition_and_dmn_refused(tmp_path: Path) -> None:
    directory = _copy_catalogue(tmp_path)
    yaml_file = directory / "housing-fund-withdrawal.yaml"
    original = yaml_file.read_text()
    yaml_file.write_text(original.replace("timeLimitDays: 3", "timeLimitDays: many"))
    with pytest.raises(CatalogueError, match=r"time_limit_days|timeLimitDays"):
        load_directory(directory)
    yaml_file.write_text(original.replace("decisions: [dmn/housing-fund-instant.dmn]", "decisions: []"))
    with pytest.raises(CatalogueError, match="housing_fund_instant"):
        load_directory(directory)
    yaml_file.write_text(original.replace("type: object", "type: objekt", 1))
    with pytest.raises(CatalogueError, match="JSON Schema"):
        load_directory(directory)


def _managed(code: str = "pet-licence", department: str = "civil-affairs") -> dict[str, Any]:
    bpmn = (CATALOGUE_DIR / "bpmn" / "newborn-medical-insurance.bpmn").read_text().replace(
        'name="medical-insurance"', f'name="{department}"')
    return {"code": code, "name": "犬只登记", "department": department, "legalBasis": "《海口市养犬管理条例》",
            "timeLimitDays": 5, "audience": ["citizen"], "lifeEvents": ["pets"], "keywords": ["犬", "dog"],
            "form": {"type": "object", "required": ["dogName"], "properties": {"dogName": {"type": "string"}}},
            "materials": [{"name": "id-card", "title": "身份证", "licenceType": "id-card"}], "process": bpmn}


async def test_services_manage_catalogue_by_api(client: httpx.AsyncClient, auth: Any, desk: Any) -> None:
    admin = auth.headers("dept_admin", department="civil-affairs")
    created = await client.post("/api/services/catalogue", headers=admin, json=_managed())
    assert created.status_code == 201, created.text
    assert created.json()["origin"] == "api" and created.json()["version"] == 1
    assert (await client.post("/api/services/catalogue", headers=admin, json=_managed())).status_code == 409
    found = (await client.get("/api/services/catalogue", params={"q": "dog"}, headers=admin)).json()["items"]
    assert [s["code"] for s in found] == ["pet-licence"]
    replaced = await client.put("/api/services/catalogue/pet-licence", headers=admin,
                                json={**_managed(), "timeLimitDays": 3})
    assert replaced.status_code == 200 and replaced.json()["version"] == 2 and replaced.json()["timeLimitDays"] == 3
    # A citizen can apply for it, and the civil-affairs lane routes the task there.
    citizen = auth.headers("citizen", user_id="p1")
    from services_core_helpers import upload
    doc = await upload(client, citizen)
    app_resp = await client.post("/api/services/applications", headers=citizen, json={
        "serviceCode": "pet-licence", "form": {"dogName": "旺财"},
        "materials": [{"name": "id-card", "uploadId": doc["uploadId"]}]})
    assert app_resp.status_code == 201, app_resp.text
    tasks = (await client.get("/api/services/tasks", headers=auth.headers("official", department="civil-affairs")))
    assert len(tasks.json()["items"]) == 1
    # Broken BPMN by API: 400 with the reason. Other departments and citizens may not manage it.
    broken = {**_managed("pet-licence-2"), "process": _managed()["process"].replace('targetRef="end"',
                                                                                    'targetRef="nowhere"')}
    refused = await client.post("/api/services/catalogue", headers=admin, json=broken)
    assert refused.status_code == 400 and "nowhere" in refused.json()["detail"]
    file_path = await client.post("/api/services/catalogue", headers=admin,
                                  json={**_managed("pet-licence-3"), "process": "bpmn/birth-certificate.bpmn"})
    assert file_path.status_code == 400
    other = auth.headers("dept_admin", department="tax")
    assert (await client.post("/api/services/catalogue", headers=other,
                              json=_managed("pet-licence-4"))).status_code == 403
    assert (await client.post("/api/services/catalogue", headers=citizen,
                              json=_managed("pet-licence-5"))).status_code == 403
    assert (await client.delete("/api/services/catalogue/pet-licence", headers=other)).status_code == 403
    assert (await client.delete("/api/services/catalogue/company-establishment", headers=admin)).status_code == 403
    assert (await client.delete("/api/services/catalogue/pet-licence", headers=admin)).status_code == 204
    assert (await client.get("/api/services/catalogue/pet-licence", headers=admin)).status_code == 404
