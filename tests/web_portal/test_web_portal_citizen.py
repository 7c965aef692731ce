"""A citizen in headless Chromium: registers with an SMS code, signs in, 随手拍 (photo with its EXIF
position, pin, category), follows the report and confirms the fix; the elderly mode on a 390 px phone.

The SMS code travels as it would through an e-mail-to-SMS gateway: the server's SMS sender mails
<number>@sms.test to a real local SMTP server (tests/smtp_mailbox.py), where the test reads it.
"""

from __future__ import annotations

import io
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from PIL.ExifTags import GPS, IFD
from portal_harness import PASSWORD, Browser, Installation, Portal
from stdnum.cn import ric

from smtp_mailbox import Mailbox, running_mailbox
from web_harness import free_port, running_server, server_env

PHONE = "13912345678"
PHONE_WIDTH = 390


def resident_id() -> str:
    body = "46010019901203042"  # Hainan codes (46) exist from 1988 on
    return body + ric.calc_check_digit(body + "0")


@pytest.fixture(scope="module")
def citizen_portal(tmp_path_factory: pytest.TempPathFactory,
                   portal_installation: Installation) -> Iterator[tuple[Portal, Mailbox]]:
    """A real `cityos serve` whose SMS goes out by e-mail to a local SMTP server."""
    root = tmp_path_factory.mktemp("citizen-e2e")
    port = free_port()
    with running_mailbox() as (mailbox, smtp_port):
        env = {**server_env(root, port), "CITYOS_SMTP_HOST": "127.0.0.1", "CITYOS_SMTP_PORT": str(smtp_port),
               "CITYOS_SMS_EMAIL_DOMAIN": "sms.test"}
        admin_secret = portal_installation.copy_to(root)
        log = root / "server.log"
        with running_server(env, port, log, start_timeout=180, poll_interval=0.5):
            yield Portal(f"http://127.0.0.1:{port}", log, admin_secret, env), mailbox


def sms_code(mailbox: Mailbox, phone: str, seen: int) -> str:
    """The code in the newest SMS (mail to <phone>@sms.test) after the first `seen` messages."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for message, recipients in list(zip(mailbox.messages, mailbox.recipients, strict=True))[seen:]:
            if f"{phone}@sms.test" in recipients:
                found = re.search(r"验证码 (\d{6})", str(message["Subject"]))
                if found:
                    return found.group(1)
        time.sleep(0.25)
    raise AssertionError(f"no SMS to {phone}")


def gps_photo(path: Path) -> Path:
    image = Image.new("RGB", (640, 480), (120, 120, 110))
    for x in range(200, 440):  # a dark "pothole"
        for y in range(180, 300):
            if (x - 320) ** 2 / 120 ** 2 + (y - 240) ** 2 / 60 ** 2 < 1:
                image.putpixel((x, y), (40, 35, 30))
    exif = image.getexif()
    gps = exif.get_ifd(IFD.GPSInfo)
    gps[GPS.GPSLatitudeRef], gps[GPS.GPSLatitude] = "N", (20.0, 1.8, 0.0)     # 20.03 N
    gps[GPS.GPSLongitudeRef], gps[GPS.GPSLongitude] = "E", (110.0, 19.8, 0.0)  # 110.33 E
    out = io.BytesIO()
    image.save(out, "JPEG", exif=exif)
    path.write_bytes(out.getvalue())
    return path


def phone_screen(driver: Any, on: bool) -> None:
    """Emulate a 390 px wide phone (CSS pixels), or go back to the desktop window."""
    if on:
        driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
            "width": PHONE_WIDTH, "height": 844, "deviceScaleFactor": 1, "mobile": True})
    else:
        driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def overflow(b: Browser) -> int:
    return int(b.driver.execute_script("return document.scrollingElement.scrollWidth"))


WIDE = """return Array.from(document.querySelectorAll('body *')).filter(e => e.getBoundingClientRect().right > 391)
  .slice(0, 5).map(e => e.tagName + '.' + (e.className.baseVal ?? e.className) + ' ' +
  Math.round(e.getBoundingClientRect().right)).join(' | ')"""


def test_citizen_registers_reports_and_confirms(citizen_portal: tuple[Portal, Mailbox], chromium: Any,
                                                tmp_path: Path) -> None:
    portal, mailbox = citizen_portal
    b = Browser(chromium, portal)

    # 1. Registration: a bad ID is refused with its reason; then the SMS code and a good ID.
    b.go("/logout")
    b.driver.delete_all_cookies()
    b.go("/login")
    b.click(".t-register-link")
    b.find(".register-card")
    b.type(".t-name input", "王小明")
    b.type(".t-ident input", resident_id()[:-1] + ("0" if resident_id()[-1] != "0" else "1"))
    b.type(".t-username input", "wangxm")
    b.type(".t-password input", PASSWORD)
    b.type(".t-phone input", PHONE)
    seen = len(mailbox.messages)
    b.click(".t-send-code")
    b.wait_text("重发 Resend in")
    b.type(".t-code input", sms_code(mailbox, PHONE, seen))
    b.click(".t-register")
    b.wait_text("校验位")
    b.shot("citizen-01-register-refused")
    b.type(".t-ident input", resident_id())
    b.click(".t-register")
    b.find(".t-registered")
    b.shot("citizen-02-registered", keep=True)

    # 2. Sign in as the new citizen.
    b.wait(lambda d: "/login" in d.current_url, 30, "login page")
    b.type(".login-username input", "wangxm")
    b.type(".login-password input", PASSWORD)
    b.click(".login-submit")
    b.wait(lambda d: "/login" not in d.current_url, 60, "signed in")

    # 3. 随手拍: the photo's position is offered; a category; sent as an Open311 request.
    b.go("/portal/report")
    b.find(".t-map")
    from selenium.webdriver.common.by import By

    b.find(".t-photo").find_element(By.CSS_SELECTOR, "input[type=file]").send_keys(
        str(gps_photo(tmp_path / "pothole.jpg")))
    b.click(".t-use-exif")
    b.wait_text("20.03000, 110.33000")
    b.choose(".t-category", "道路坑洼")
    b.type(".t-description textarea", "人行道旁路面塌陷，有积水")
    b.shot("citizen-03-report", keep=True)
    b.click(".t-send")
    b.find(".t-sent")
    b.wait(lambda d: d.current_url.endswith("/portal/reports"), 30, "my reports")
    card = b.find(".report-card")
    assert "道路坑洼" in card.text and "已上报" in card.text
    incident_id = re.search(r"编号 No\. (\S+)", card.text)
    assert incident_id, card.text

    # 4. The city fixes it (operator through the API); the citizen confirms the fix.
    operator = "duty-op"
    portal.add_user(operator, "operator")
    with portal.http(portal.token(operator)) as http:
        for step in ("dispatch", "accept", "arrive", "resolve"):
            reply = http.post(f"/api/ops/incidents/{incident_id.group(1)}/{step}")
            assert reply.status_code == 200, reply.text
    b.go("/portal/reports")
    b.find(".t-confirm-fixed")
    b.shot("citizen-04-confirm")
    b.click(".t-confirm-fixed")
    b.wait(lambda _d: "已办结 Closed" in b.text(), 30, "closed")

    # 5. The elderly mode on a 390 px phone: nothing wider than the screen.
    b.go("/portal/services")
    b.click(".t-elderly")
    b.wait(lambda d: "elderly" in (d.find_element(By.TAG_NAME, "body").get_attribute("class") or ""), 30,
           "elderly mode")
    phone_screen(b.driver, True)
    try:
        widths: dict[str, int] = {}
        wide: dict[str, str] = {}
        for path in ("/portal/services", "/portal/applications", "/portal/wallet", "/portal/reports",
                     "/portal/report", "/portal/service/company-establishment"):
            b.go(path)
            b.find(".portal-main")
            time.sleep(0.5)
            widths[path] = overflow(b)
            if widths[path] > PHONE_WIDTH:
                wide[path] = str(b.driver.execute_script(WIDE))
            if path == "/portal/reports":
                b.shot("citizen-05-elderly-phone", keep=True)
        b.go("/portal/register")
        b.find(".register-card")
        widths["/portal/register"] = overflow(b)
        b.shot("citizen-06-register-phone", keep=True)
    finally:
        phone_screen(b.driver, False)
    assert all(w <= PHONE_WIDTH for w in widths.values()), f"{widths} {wide}"
