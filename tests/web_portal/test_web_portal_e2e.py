"""一网通办 end to end in headless Chromium against a real `cityos serve`.

A company applies for company establishment (parallel approval in four departments), the
officials approve it in their workbenches, the business licence arrives in the company's wallet,
the company reuses it (picked from the wallet, no upload) in a licence change, and the official
sees it "verified ✓". Screenshots go to /tmp/cityos-screens/portal-*.png (a few to docs/screenshots).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from portal_harness import Browser, Portal

pytestmark = pytest.mark.slow

DEPARTMENTS = ("market-regulation", "public-security", "tax", "human-resources-social-security")
OFFICIALS = {dept: f"official-{dept[:12]}" for dept in DEPARTMENTS}
COMPANY = "xinghe-tech"
PDF = b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n"


def fill_company_form(b: Browser) -> None:
    b.type(".f-companyName input", "星河智能科技有限公司")
    b.choose(".f-companyType", "有限责任公司")
    b.type(".f-registeredCapital input", "500")
    b.type(".f-legalRepresentative input", "王小明")
    b.type(".f-address input", "滨江区创新大道88号")
    b.type(".f-businessScope textarea", "人工智能软件开发；信息技术咨询服务")


def upload(b: Browser, material: str, path: Path) -> None:
    from selenium.webdriver.common.by import By

    card = b.find(f".m-{material}")
    card.find_element(By.CSS_SELECTOR, "input[type=file]").send_keys(str(path))
    b.wait(lambda _d: "已上传" in card.text, 60, f"upload of {material}")


def approve_as(b: Browser, username: str, comment: str, shot: str | None = None, keep: bool = False) -> None:
    b.login(username, "/workbench")
    b.find(".task-row")
    if shot:
        b.shot(f"{shot}-inbox")
    b.click(".task-row .t-open")
    b.find(".t-approve")
    b.wait_text("星河智能科技有限公司")
    if shot:
        b.shot(shot, keep=keep)
    b.type(".t-comment textarea", comment)
    b.click(".t-approve")
    b.wait(lambda d: d.current_url.rstrip("/").endswith("/workbench"), 60, "back to the inbox")


def test_company_establishment_parallel_approval_licence_reuse(portal_server: Portal, chromium: Any,
                                                               tmp_path: Path) -> None:
    portal = portal_server
    portal.add_user(COMPANY, "enterprise")
    for dept, name in OFFICIALS.items():
        portal.add_user(name, "official", dept)
    portal.add_user("supervisor", "auditor")
    b = Browser(chromium, portal)
    articles = tmp_path / "articles-of-association.pdf"
    articles.write_bytes(PDF)
    id_scan = tmp_path / "id-card.pdf"
    id_scan.write_bytes(PDF)
    premises = tmp_path / "premises-lease.pdf"
    premises.write_bytes(PDF)

    # 1. The company finds the service and reads its guide.
    b.login(COMPANY, "/portal")
    b.find(".t-search input").send_keys("企业开办")
    b.click(".t-search-go")
    b.find(".service-company-establishment")
    b.shot("01-search")
    b.click(".service-company-establishment .t-guide")
    b.wait_text("法定代表人身份证")
    b.wait_text("并联部门")
    b.shot("02-guide")

    # 2. It applies: the schema form, field errors from the client check, then uploads.
    b.click(".t-apply")
    b.find(".f-companyName input")
    b.click(".t-submit")
    b.wait_text("请修改标红的项目")
    assert "必填 Required" in b.text()
    b.shot("03-form-errors")
    fill_company_form(b)
    b.type(".f-companyName input", "星")
    upload(b, "id_card", id_scan)
    upload(b, "articles_of_association", articles)
    upload(b, "premises_proof", premises)
    b.click(".t-submit")
    b.wait_text("至少 2 个字符")  # the client-side check of `minLength`
    b.type(".f-companyName input", "星河智能科技有限公司")
    b.click(".t-submit")
    b.find(".t-receipt")
    receipt = re.search(r"Receipt: (\S+)", b.find(".receipt-no").text)
    assert receipt, b.text()
    b.shot("04-submitted", keep=True)
    b.click(".t-track")
    b.find(".t-timeline")
    b.wait_text("正在办理")
    b.shot("05-tracking")
    app_url = chromium.current_url

    # 3. Parallel approval: each department's official approves in the workbench.
    for i, (_dept, name) in enumerate(OFFICIALS.items()):
        approve_as(b, name, "材料齐全，准予登记", shot="06-workbench-task" if i == 0 else None)

    # 4. The company sees the outcome, rates it, and finds the licence in its wallet.
    b.login(COMPANY, app_url.removeprefix(portal.url))
    b.find(".t-issued")
    b.wait_text("已办结")
    finished = b.find(".deadline-finished").text  # an approved case shows the time taken, no time left
    assert "用时" in finished and "剩" not in b.text() and " left" not in finished
    b.find(".t-stars")
    b.type(".t-rating-comment textarea", "全程网办，一天办结，很方便")
    b.click(".t-rate")
    b.wait(lambda _d: "已评价 Rated" in b.text() or b.all(".t-rating-error")[0].text, 60, "rating answer")
    assert not b.all(".t-rating-error")[0].text, "the rating was refused"
    assert "已评价 Rated" in b.text()
    b.shot("07-approved-rated", at=".t-issued")
    b.go("/portal/wallet")
    card = b.find(".licence-business-licence")
    b.find(".licence-qr")
    assert "星河智能科技有限公司" in card.text
    holder = card.text.split("持证人 Holder", 1)[1].split("\n")[1]
    assert "*" in holder and not re.search(r"[0-9a-f]{32}", holder), card.text  # masked, not the user id
    b.shot("08-wallet", keep=True)

    # 5. Reuse: a licence change with the business licence picked from the wallet (no upload).
    b.go("/portal/apply/business-licence-change")
    b.type(".f-companyName input", "星河智能科技有限公司")
    b.type(".f-creditCode input", "91330100MA2KXQ8T3C")
    b.choose(".f-changeType", "名称")
    b.type(".f-newValue textarea", "星河智能科技集团有限公司")
    b.choose(".m-business_licence .t-pick-licence", "营业执照")
    b.wait_text("使用电子证照")
    b.shot("09-pick-licence")
    b.click(".t-submit")
    b.find(".t-receipt")

    # 6. The market-regulation official sees the licence verified.
    b.login(OFFICIALS["market-regulation"], "/workbench")
    b.find(".task-row")
    b.click(".task-row .t-open")
    b.find(".t-verified")
    assert "verified ✓" in b.find(".t-verified").text
    b.shot("10-staff-verified", keep=True)

    # 7. Elderly-friendly mode: large type, high contrast, one question per step.
    b.login(COMPANY, "/portal/apply/company-establishment")
    b.click(".t-elderly")
    b.find(".step-progress")
    b.wait_text("第 1 /")
    b.shot("11-elderly", keep=True)
    b.click(".t-elderly")  # back to the standard mode (persisted per user)
    b.wait(lambda d: not b.all(".step-progress"), 30, "standard mode")

    # 8. Supervision dashboards and the public verification page.
    b.login("supervisor", "/supervision")
    b.find(".t-chart-dept")
    b.wait_text("评价数")
    b.shot("12-supervision")
    b.go("/logout")
    with portal.http(portal.token(COMPANY)) as http:
        wallet = http.get("/api/services/licences/wallet").json()["items"]
    b.go(f"/verify?id={wallet[0]['id']}")
    b.find(".t-valid")
    b.shot("13-verify")
