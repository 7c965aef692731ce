"""一件事一次办 in headless Chromium against a real `cityos serve`.

A citizen finds the newborn birth bundle (新生儿出生一件事) on the portal, reads its guide, fills
ONE form, uploads the materials once, submits, and sees the case page with its four member
applications; the API confirms the four applications. Screenshot: /tmp/cityos-screens/portal-bundle.png.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from portal_harness import Browser, Portal
from selenium.webdriver.common.by import By

pytestmark = pytest.mark.slow

CITIZEN = "new-parent"
PDF = b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n"
MEMBERS = {"birth-certificate", "newborn-household-registration", "newborn-medical-insurance",
           "social-security-card"}


def upload(b: Browser, material: str, path: Path) -> None:
    from selenium.webdriver.common.by import By

    card = b.find(f".m-{material}")
    card.find_element(By.CSS_SELECTOR, "input[type=file]").send_keys(str(path))
    b.wait(lambda _d: "已上传" in card.text, 60, f"upload of {material}")


def test_newborn_birth_bundle(portal_server: Portal, chromium: Any, tmp_path: Path) -> None:
    portal = portal_server
    portal.add_user(CITIZEN, "citizen")
    b = Browser(chromium, portal)
    id_scan = tmp_path / "id-card.pdf"
    id_scan.write_bytes(PDF)
    register = tmp_path / "household-register.pdf"
    register.write_bytes(PDF)

    # 1. The bundle is listed on the portal home with its badge, and found by a search.
    b.login(CITIZEN, "/portal")
    card = b.find(".bundle-newborn-birth")
    assert "一件事一次办 One-thing bundle" in card.text
    assert "新生儿出生一件事" in card.text
    b.find(".t-search input").send_keys("出生")
    b.click(".t-search-go")
    b.find(".bundle-newborn-birth")
    b.click(".bundle-newborn-birth .t-bundle-open")

    # 2. The guide: member services, departments, time limits; then the ONE form.
    b.find(".t-bundle-guide")
    b.find(".t-bundle-services")
    for name in ("出生医学证明", "新生儿入户", "新生儿医保参保登记", "社会保障卡申领"):
        b.wait_text(name)
    b.wait_text("承诺时限")
    b.shot("bundle-guide")
    b.click(".t-submit")
    b.wait_text("请修改标红的项目")
    b.type(".f-childName input", "李小宝")
    b.choose(".f-childGender", "男")
    b.type(".f-birthDate input", "2026-01-15")
    b.type(".f-birthPlace input", "市妇幼保健院")
    b.type(".f-motherName input", "王丽")
    b.type(".f-fatherName input", "李强")
    b.type(".f-guardianName input", "王丽")
    b.type(".f-householdAddress input", "滨江区创新大道88号3幢")
    b.type(".f-phone input", "13800138000")
    upload(b, "id_card", id_scan)
    upload(b, "household_register", register)
    b.click(".t-submit")
    # Only the receipt ends the wait: the first submission's error stays on the page until the answer to this
    # one comes, so waiting for "a receipt or an error" raced it on a loaded machine. A refusal times out with the
    # page's text (its error) in the failure.
    b.wait(lambda _d: b.all(".t-receipt"), 60, "bundle submission")
    case = re.search(r"Case: (\w+)", b.find(".case-no").text)
    assert case, b.text()
    case_id = case.group(1)

    # 3. The case page lists the four member applications, each linking to its progress page.
    b.click(".t-track")
    b.wait(lambda d: f"/portal/bundles/{case_id}" in d.current_url, 60, "the case page")
    b.find(".t-bundle-case")
    b.wait(lambda _d: len(b.all(".bundle-app")) == 4, 60, "four applications")
    text = b.text()
    for name in ("出生医学证明", "新生儿入户", "新生儿医保参保登记", "社会保障卡申领"):
        assert name in text
    links = [a.get_attribute("href") for a in b.all(".bundle-app .t-app-link")]
    assert len(links) == 4 and all("/portal/applications/" in (h or "") for h in links), links
    path = b.shot("bundle", at=".t-bundle-case")
    assert path == Path("/tmp/cityos-screens/portal-bundle.png")

    # 4. One member application links back to the whole case.
    b.click(".bundle-app .t-app-link")
    b.find(".t-timeline")
    b.click(".t-bundle-case-link")
    b.find(".t-bundle-case")

    # 5. The API agrees: one case, four applications of the four member services.
    with portal.http(portal.token(CITIZEN)) as http:
        reply = http.get(f"/api/services/bundles/{case_id}")
        assert reply.status_code == 200, reply.text
        apps = reply.json()["applications"]
        assert {a["serviceCode"] for a in apps} == MEMBERS
        mine = http.get("/api/services/applications").json()["items"]
    in_case = [a for a in mine if a.get("bundleId") == case_id]
    assert len(in_case) == 4
    assert {a["serviceCode"] for a in in_case} == MEMBERS
    assert {a["id"] for a in in_case} == {a["id"] for a in apps}

    # 6. "My applications" shows the bundle as ONE case: its badge, overall status and progress, the four
    #    member services with their departments, and the way to the case page.
    b.go("/portal/applications")
    row = b.find(f".case-{case_id}")
    b.wait(lambda _d: len(row.find_elements(By.CSS_SELECTOR, ".bundle-member")) == 4, 60, "four members")
    assert len(b.all(".bundle-row")) == 1 and len(b.all(".application-row")) == 1, b.text()
    text = row.text
    for needed in ("新生儿出生一件事", "一件事一次办 One-thing bundle", "审批中", "已办结 0 / 4", "卫健委",
                   "出生医学证明", "新生儿入户", "新生儿医保参保登记", "社会保障卡申领"):
        assert needed in text, (needed, text)
    path = b.shot("my-applications", at=f".case-{case_id}")
    assert path == Path("/tmp/cityos-screens/portal-my-applications.png")
    b.click(f".case-{case_id} .t-case-link")
    b.wait(lambda d: f"/portal/bundles/{case_id}" in d.current_url, 60, "the case page from the list")
    b.find(".t-bundle-case")
    with portal.http(portal.token(CITIZEN)) as http:
        grouped = http.get("/api/services/applications", params={"group": "case"}).json()["items"]
    assert [(i["kind"], i["caseId"], len(i["applications"])) for i in grouped] == [("bundle", case_id, 4)]
