"""有条件开放 and 负面清单 in the browser: an outside developer (not signed in) applies for an API key to a
conditionally open dataset, the data office approves it at a lower rate, the developer claims the key
once and reads the rows with it; the data office puts a field on the negative list and takes it off."""

from __future__ import annotations

from typing import Any

import pytest
from cockpit_harness import Server, screenshot
from test_web_cockpit_e2e import click, css, type_into, wait_for
from test_web_data_e2e import replace_number, sign_in_as

pytestmark = pytest.mark.slow

CODE = "canteens-e2e"
BODY = {"code": CODE, "title": "长者食堂名录", "titleEn": "Elderly canteens", "category": "society",
        "keyField": "name", "fields": [{"id": "name", "class": "public"},
                                       {"id": "seats", "class": "public", "type": "numeric"},
                                       {"id": "manager", "class": "internal"}],
        "records": [{"name": "海秀长者食堂", "seats": 40, "manager": "王"},
                    {"name": "龙华长者食堂", "seats": 30, "manager": "李"}]}


@pytest.fixture(scope="module")
def office(server: Server) -> dict[str, str]:
    """A data officer (tenant-wide operator) and a conditionally open dataset of civil affairs."""
    secret = server.create_user("keys-office", "operator") or ""
    owner_secret = server.create_user("canteen-owner", "official", department="civil-affairs")
    owner = server.login("canteen-owner", owner_secret)
    with server.http(owner) as http:
        made = http.post("/api/data/datasets", json=BODY)
        assert made.status_code == 201, made.text
        assert made.json().get("openType", "conditional") == "conditional"
    return {"secret": secret}


def _option(driver: Any, text: str) -> None:
    """Pick an option of the open Quasar menu by its text."""
    items = wait_for(lambda: [i for i in css(driver, ".q-menu .q-item") if i.text.strip() == text],
                     what=f"the option {text}")
    items[0].click()


def _entries(driver: Any) -> list[Any]:
    """This test's entries of the list (other tests of the session may keep theirs)."""
    return [e for e in css(driver, ".cityos-negative-entry") if CODE in e.text]


def test_web_developer_applies_office_approves_developer_claims(server: Server, browser: Any,
                                                                 office: dict[str, str]) -> None:
    browser.get(f"{server.url}/logout")
    browser.delete_all_cookies()
    # From the dataset's page: "apply for a key" leads to the form with the dataset chosen.
    browser.get(f"{server.url}/opendata/dataset/{CODE}")
    click(browser, ".cityos-apply-link")
    wait_for(lambda: "/opendata/apply" in browser.current_url, what="the application page")
    wait_for(lambda: CODE in css(browser, ".cityos-apply-datasets")[0].text, what="the chosen dataset")
    type_into(browser, ".cityos-apply-applicant", "海口开放数据实验室 Haikou Open Data Lab")
    type_into(browser, ".cityos-apply-contact", "dev@example.org")
    replace_number(browser, ".cityos-apply-rate", "120")
    # Bad input: a purpose too short is refused by the API and the page says why.
    type_into(browser, ".cityos-apply-purpose", "map")
    click(browser, ".cityos-apply-submit")
    wait_for(lambda: any("purpose" in n.text for n in css(browser, ".q-notification")), what="the refusal")
    assert not css(browser, ".cityos-made-claim")
    type_into(browser, ".cityos-apply-purpose", " app of canteens for the elderly 长者食堂地图")
    click(browser, ".cityos-apply-submit")
    claim_label = wait_for(lambda: css(browser, ".cityos-made-claim"), what="the claim code")[0].text
    app_id = css(browser, ".cityos-made-id")[0].text.split(":")[-1].strip()
    claim = claim_label.split(":")[-1].strip()
    assert claim.startswith("cka_") and len(app_id) == 32
    screenshot(browser, "opendata-apply")
    # Checking before the decision: pending, no key.
    click(browser, ".cityos-claim-submit")
    wait_for(lambda: css(browser, ".cityos-app-pending"), what="the pending state")
    assert not css(browser, ".cityos-claimed-key")

    # The data office approves at 30 calls a minute.
    sign_in_as(browser, server, "keys-office", office["secret"], next_path="/data/keys")
    browser.get(f"{server.url}/data/keys")
    card = f".cityos-key-app-{app_id[:8]}"
    wait_for(lambda: css(browser, card), what="the application")
    assert "长者食堂地图" in css(browser, f"{card} .cityos-key-purpose")[0].text
    replace_number(browser, f"{card} .cityos-key-rate", "30")
    type_into(browser, f"{card} .cityos-key-note", "限速 30 次/分钟")
    screenshot(browser, "data-keys")
    click(browser, f"{card} .cityos-key-approve")
    wait_for(lambda: not css(browser, card) and css(browser, ".cityos-key-decided .cityos-app-approved"),
             what="the approved application")
    screenshot(browser, "data-keys-decided")

    # The developer claims the key, once, and reads the rows with it.
    browser.get(f"{server.url}/logout")
    browser.delete_all_cookies()
    browser.get(f"{server.url}/opendata/apply")
    type_into(browser, ".cityos-claim-id", app_id)
    type_into(browser, ".cityos-claim-code", claim)
    click(browser, ".cityos-claim-submit")
    # The code block shows the key and its copy button (whose icon name is text too).
    key = wait_for(lambda: css(browser, ".cityos-claimed-key"), what="the key")[0].text.strip().splitlines()[0]
    assert key.startswith("cok_")
    assert "30" in css(browser, ".cityos-claim-state")[0].text
    screenshot(browser, "opendata-claimed")
    with server.http() as http:
        rows = http.get("/api/3/action/datastore_search", params={"resource_id": CODE},
                        headers={"Authorization": key})
        assert rows.status_code == 200 and rows.json()["result"]["total"] == 2
        assert http.get("/api/3/action/datastore_search", params={"resource_id": CODE}).status_code == 403
    # A second claim: the state (issued) without the key (the first answer showed "issued" too, so wait
    # for the key to go).
    click(browser, ".cityos-claim-submit")
    wait_for(lambda: not css(browser, ".cityos-claimed-key") and css(browser, ".cityos-app-issued"),
             what="the issued state without the key")
    # A wrong claim code finds nothing.
    type_into(browser, ".cityos-claim-code", "x")
    click(browser, ".cityos-claim-submit")
    wait_for(lambda: any("Not found" in n.text for n in css(browser, ".q-notification")), what="not found")


def test_web_office_maintains_the_negative_list(server: Server, browser: Any, office: dict[str, str]) -> None:
    sign_in_as(browser, server, "keys-office", office["secret"], next_path="/data/negative")
    browser.get(f"{server.url}/data/negative?dataset={CODE}")
    # A select with input shows its choice as the input's value.
    wait_for(lambda: CODE in (css(browser, ".cityos-negative-dataset input")[0].get_attribute("value") or ""),
             what="the chosen dataset")
    # Bad input: no reason.
    click(browser, ".cityos-negative-field")
    _option(browser, "manager")
    click(browser, ".cityos-negative-add")
    wait_for(lambda: any("reason" in n.text for n in css(browser, ".q-notification")), what="the refusal")
    assert not _entries(browser)
    type_into(browser, ".cityos-negative-reason", "个人信息 personal data")
    click(browser, ".cityos-negative-add")
    entry = wait_for(lambda: _entries(browser), what="the entry")[0].text
    assert "manager" in entry and "个人信息" in entry
    screenshot(browser, "data-negative")
    with server.http(server.admin) as http:
        listed = http.get("/api/data/negative-list").json()["entries"]
        assert [(e["dataset"], e["field"]) for e in listed if e["dataset"] == CODE] == [(CODE, "manager")]
    _entries(browser)[0].find_element("css selector", ".cityos-negative-remove").click()
    wait_for(lambda: not _entries(browser), what="the entry removed")
    with server.http(server.admin) as http:
        assert not [e for e in http.get("/api/data/negative-list").json()["entries"] if e["dataset"] == CODE]
