"""Citizens' own pages: register, reset a password, 随手拍 (report with a photo), my reports.

- `/portal/register`: a citizen (resident ID) or a company (unified social credit code), phone code;
- `/portal/reset-password`: a new password with a code sent to the account's phone;
- `/portal/report`: 随手拍: photo (its EXIF position offered), a pin on the map, the category;
  it becomes an Open311 request (and so an incident) with the citizen as reporter;
- `/portal/reports`: the citizen's reports, their status, and the confirmation of a fix.

Every action goes through the REST API in-process (`common.call`), as an integrator's would.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from nicegui import events, ui

from cityos.core import messages
from cityos.web.auth import Session
from cityos.web.portal import common
from cityos.web.portal.common import call, first, frame, items_of, problem_text, when

REG = "/api/services/registration"
CITY_CENTRE = (20.02, 110.33)
REPORT_STATES = {"new": ("已受理 Received", "blue"), "dispatched": ("已派单 Dispatched", "indigo"),
                 "accepted": ("处置中 Being handled", "indigo"), "onsite": ("已到场 On site", "indigo"),
                 "in_progress": ("处置中 Being handled", "indigo"), "resolved": ("待您确认 Fixed? Please confirm",
                                                                              "orange"),
                 "closed": ("已办结 Closed", "green"), "reopened": ("重新处置 Reopened", "red"),
                 "merged": ("已合并 Merged", "grey")}


def _reply_text(reply: common.Reply) -> str:
    return problem_text(reply.body, reply.status)


def _code_button(phone: Any, purpose: str) -> ui.button:
    """「获取验证码」: asks the API to send a code; counts down before a resend is allowed."""
    async def send() -> None:
        reply = await call("POST", f"{REG}/phone-code", json={"phone": (phone.value or "").strip(),
                                                              "purpose": purpose})
        if not reply.ok:
            ui.notify(_reply_text(reply), type="negative", multi_line=True)
            return
        ui.notify("验证码已发送 Code sent by SMS", type="positive")
        left = [int(reply.body.get("resendAfter", 60))]
        button.disable()

        def tick() -> None:
            left[0] -= 1
            button.text = f"{left[0]} 秒后重发 Resend in {left[0]} s"
            if left[0] <= 0:
                timer.cancel()
                button.text = "获取验证码 Send code"
                button.enable()

        timer = ui.timer(1.0, tick)

    button = ui.button("获取验证码 Send code", on_click=send).props("outline no-caps").classes("t-send-code")
    return button


@ui.page("/portal/register", title="注册 Register · CityOS")
async def portal_register(kind: str = "citizen") -> None:
    session = Session.current()
    company = kind == "company"
    with frame(session, "注册 Register", citizen=False), \
            ui.card().classes("gov-card w-full max-w-xl p-6 gap-3 self-center register-card"):
            ui.label("注册账号 Create an account").classes("text-2xl gov-title")
            with ui.row().classes("gap-2"):
                for value, text in (("citizen", "个人 Citizen"), ("company", "法人 Company")):
                    ui.button(text, on_click=lambda v=value: ui.navigate.to(f"/portal/register?kind={v}")) \
                        .props(f"{'unelevated' if (value == 'company') == company else 'outline'} no-caps") \
                        .classes(f"t-kind-{value}")
            name = ui.input("企业名称 Company name" if company else "真实姓名 Real name") \
                .props("outlined").classes("w-full t-name")
            if company:
                ident = ui.input("统一社会信用代码 Unified social credit code (18)").props("outlined maxlength=18") \
                    .classes("w-full t-ident")
            else:
                ident = ui.input("居民身份证号 Resident ID number (18)").props("outlined maxlength=18") \
                    .classes("w-full t-ident")
            username = ui.input("用户名 User name").props("outlined").classes("w-full t-username")
            password = ui.input("密码 Password", password=True, password_toggle_button=True) \
                .props("outlined").classes("w-full t-password")
            ui.label("密码至少 12 位，不含姓名、用户名或手机号 At least 12 characters, not your name or phone") \
                .classes("text-grey-8 text-sm")
            phone = ui.input("手机号 Mobile phone").props("outlined inputmode=tel maxlength=13") \
                .classes("w-full t-phone")
            with ui.row().classes("w-full items-center gap-2 no-wrap"):
                code = ui.input("短信验证码 SMS code").props("outlined inputmode=numeric maxlength=6") \
                    .classes("grow t-code")
                _code_button(phone, "register")
            result = ui.label("").classes("t-result text-lg")

            async def submit() -> None:
                body = {"kind": "company" if company else "citizen", "name": (name.value or "").strip(),
                        "username": (username.value or "").strip(), "password": password.value or "",
                        "phone": (phone.value or "").strip(), "code": (code.value or "").strip(),
                        ("creditCode" if company else "idNumber"): (ident.value or "").strip()}
                reply = await call("POST", REG, json=body)
                if not reply.ok:
                    result.text = f"注册未成功 Not registered: {_reply_text(reply)}"
                    result.classes(replace="t-result text-lg text-negative")
                    return
                result.text = (f"注册成功 Registered: {reply.body['username']} ({reply.body['phone']})，"
                               "请登录 please sign in")
                result.classes(replace="t-result text-lg text-positive t-registered")
                ui.timer(1.5, lambda: ui.navigate.to("/login?next=/portal"), once=True)

            ui.button("注册 Register", on_click=submit).props("unelevated color=primary size=lg no-caps") \
                .classes("w-full t-register")
            with ui.row().classes("gap-4"):
                ui.link("已有账号，登录 Sign in", "/login?next=/portal")
                ui.link("忘记密码 Forgot password", "/portal/reset-password")
            ui.label("实名核验：校验证件号码校验位与出生日期，手机号以短信验证码确认。Real-name check: the ID's check "
                     "digit and birth date, and the phone by SMS code.").classes("text-grey-7 text-sm")


@ui.page("/portal/reset-password", title="找回密码 Reset password · CityOS")
async def portal_reset_password() -> None:
    session = Session.current()
    with frame(session, "找回密码 Reset password", citizen=False), \
            ui.card().classes("gov-card w-full max-w-xl p-6 gap-3 self-center reset-card"):
            ui.label("找回密码 Reset your password").classes("text-2xl gov-title")
            phone = ui.input("注册手机号 Registered mobile phone").props("outlined inputmode=tel maxlength=13") \
                .classes("w-full t-phone")
            with ui.row().classes("w-full items-center gap-2 no-wrap"):
                code = ui.input("短信验证码 SMS code").props("outlined inputmode=numeric maxlength=6") \
                    .classes("grow t-code")
                _code_button(phone, "reset")
            password = ui.input("新密码 New password", password=True, password_toggle_button=True) \
                .props("outlined").classes("w-full t-password")
            result = ui.label("").classes("t-result text-lg")

            async def submit() -> None:
                reply = await call("POST", f"{REG}/password-reset", json={
                    "phone": (phone.value or "").strip(), "code": (code.value or "").strip(),
                    "newPassword": password.value or ""})
                if not reply.ok:
                    result.text = f"未能重置 Not reset: {_reply_text(reply)}"
                    result.classes(replace="t-result text-lg text-negative")
                    return
                result.text = f"密码已重置 Password reset for {reply.body['username']}，请登录 please sign in"
                result.classes(replace="t-result text-lg text-positive t-reset-done")

            ui.button("重置密码 Reset password", on_click=submit) \
                .props("unelevated color=primary size=lg no-caps").classes("w-full t-reset")


# ---------------------------------------------------------------------------------- 随手拍


class ReportForm:
    """The 随手拍 form's state: the uploaded photo, the pin, and the chosen service."""

    def __init__(self) -> None:
        self.media: dict[str, Any] | None = None
        self.pin: tuple[float, float] | None = None
        self.marker: Any = None
        self.map: Any = None
        self.where: Any = None
        self.exif_row: Any = None

    def place(self, lat: float, lon: float, centre: bool = False) -> None:
        self.pin = (round(lat, 6), round(lon, 6))
        if centre:
            self.map.set_center(self.pin)
        if self.marker is None:
            self.marker = self.map.marker(latlng=self.pin)
        else:
            self.marker.move(*self.pin)
        self.where.text = f"位置 Location: {self.pin[0]:.5f}, {self.pin[1]:.5f}"

    async def uploaded(self, event: events.UploadEventArguments) -> None:
        data = await event.file.read()
        kind = event.file.content_type
        reply = await call("POST", "/api/ops/open311/media", content=data,
                           headers={"Content-Type": kind or "application/octet-stream"})
        if not reply.ok:
            ui.notify(f"照片未上传 Photo refused: {_reply_text(reply)}", type="negative", multi_line=True)
            return
        self.media = reply.body
        ui.notify("照片已上传 Photo uploaded", type="positive")
        location = reply.body.get("exifLocation")
        self.exif_row.clear()
        if location:
            with self.exif_row:
                ui.label(f"照片中含拍摄位置 The photo has a position: {location['lat']:.5f}, {location['long']:.5f}")
                ui.button("使用此位置 Use it", on_click=lambda: self.place(location["lat"], location["long"],
                                                                         centre=True)) \
                    .props("outline no-caps").classes("t-use-exif")


async def district_outlines() -> list[dict[str, Any]]:
    reply = await call("GET", "/ngsi-ld/v1/entities", params={"type": "District", "options": "keyValues",
                                                              "limit": 100}, headers={"Accept": "application/json"})
    return [d for d in items_of(reply.body) if isinstance(d, dict) and isinstance(d.get("location"), dict)]


async def district_map(centre: tuple[float, float], zoom: int, height: str) -> ui.leaflet:
    """A Leaflet map with no outside tile server: the city's district outlines give the bearings."""
    # The dark theme's Leaflet background wins over an inline style: without tiles the map would be black.
    ui.add_css(".t-map.leaflet-container { background: #e8eef5 !important; }")
    leaflet = ui.leaflet(center=centre, zoom=zoom).classes("w-full t-map").style(f"height: {height}")
    leaflet.layers.clear()
    await leaflet.initialized()
    for district in await district_outlines():
        leaflet.generic_layer(name="geoJSON", args=[district["location"], {
            "color": "#0d3b66", "weight": 1, "fillOpacity": 0.05}])
    return leaflet


@ui.page("/portal/report", title="随手拍 Report a problem · CityOS")
async def portal_report() -> Any:
    session = await common.login(common.CITIZEN_ROLES)
    if not isinstance(session, Session):
        return session
    form = ReportForm()
    with frame(session, "随手拍 Report", active="/portal/report"):
        ui.label("随手拍 Report a problem in the city").classes("text-2xl gov-title")
        services = await call("GET", "/open311/v2/services.json")
        options = {str(s["service_code"]): f"{messages.category(s.get('service_code'))}"
                   if messages.category(s.get("service_code")) != str(s.get("service_code"))
                   else str(s.get("service_name")) for s in (services.body or []) if isinstance(s, dict)}
        with ui.card().classes("gov-card w-full p-4 gap-3"):
            ui.label("1 拍照 Photo").classes("section-title")
            ui.upload(label="拍照或选择照片 Take or choose a photo (JPEG/PNG/WebP, ≤ 8 MB)", auto_upload=True,
                      max_file_size=8 * 1024 * 1024, on_upload=form.uploaded,
                      on_rejected=lambda: ui.notify("照片不能超过 8 MB The photo is larger than 8 MB",
                                                    type="negative")) \
                .props('accept="image/jpeg,image/png,image/webp" capture=environment') \
                .classes("w-full t-photo")
            form.exif_row = ui.row().classes("items-center gap-2 t-exif")
            ui.label("2 位置 Where is it? 点击地图放置图钉 Tap the map to drop a pin").classes("section-title")
            form.map = await district_map(CITY_CENTRE, 12, "18rem")
            form.map.on("map-click", lambda e: form.place(e.args["latlng"]["lat"], e.args["latlng"]["lng"]))
            form.where = ui.label("位置 Location: 未选择 not chosen").classes("t-where")
            ui.label("3 问题类别 What is it?").classes("section-title")
            category = ui.select(options, label="类别 Category").props("outlined").classes("w-full t-category")
            description = ui.textarea("描述 Description (选填 optional)").props("outlined maxlength=2000") \
                .classes("w-full t-description")
            result = ui.label("").classes("t-result text-lg")

            async def submit() -> None:
                if not category.value or form.pin is None:
                    result.text = "请选择类别并在地图上放置图钉 Choose a category and drop a pin on the map"
                    result.classes(replace="t-result text-lg text-negative")
                    return
                data = {"service_code": category.value, "lat": str(form.pin[0]), "long": str(form.pin[1]),
                        "description": description.value or ""}
                if form.media:
                    data["media_url"] = form.media["mediaUrl"]
                reply = await call("POST", "/open311/v2/requests.json", data=data)
                if not reply.ok:
                    result.text = f"未能提交 Not sent: {_reply_text(reply)}"
                    result.classes(replace="t-result text-lg text-negative")
                    return
                sent = reply.body[0]
                result.text = f"已提交，编号 {sent['service_request_id']} Sent, request {sent['service_request_id']}"
                result.classes(replace="t-result text-lg text-positive t-sent")
                ui.timer(1.5, lambda: ui.navigate.to("/portal/reports"), once=True)

            ui.button("提交 Send", on_click=submit).props("unelevated color=primary size=lg no-caps") \
                .classes("w-full t-send")


@ui.page("/portal/reports", title="我的上报 My reports · CityOS")
async def portal_reports() -> Any:
    session = await common.login(common.CITIZEN_ROLES)
    if not isinstance(session, Session):
        return session
    with frame(session, "我的上报 My reports", active="/portal/reports"):
        with ui.row().classes("items-center w-full"):
            ui.label("我的上报 My reports").classes("text-2xl gov-title")
            ui.space()
            ui.button("随手拍 New report", icon="photo_camera", on_click=lambda: ui.navigate.to("/portal/report")) \
                .props("unelevated no-caps color=red-9")

        @ui.refreshable
        async def listing() -> None:
            reply = await call("GET", "/api/ops/incidents", params={"limit": 50})
            items = [i for i in items_of(reply.body) if isinstance(i, dict)] if reply.ok else []
            if not items:
                ui.label("暂无上报 No reports yet").classes("text-grey-8")
            for item in items:
                _report_card(item, listing.refresh)

        await listing()


def _report_card(item: dict[str, Any], refresh: Any) -> None:
    ident = str(item.get("id", ""))
    status = str(item.get("status", ""))
    label, colour = REPORT_STATES.get(status, (messages.label("status", status), "grey"))
    with ui.card().classes(f"gov-card w-full p-4 gap-2 report-card report-{ident}"):
        with ui.row().classes("items-center w-full gap-3"):
            ui.label(messages.category(first(item, "category", default=""))).classes("text-lg font-bold gov-title")
            ui.chip(label, color=colour).props("dense").classes("text-white t-report-status")
            ui.space()
            ui.label(f"编号 No. {ident}").classes("text-grey-8 text-sm")
        ui.label(f"上报于 Reported {when(first(item, 'reportedAt', 'createdAt'))} · "
                 f"{messages.department(first(item, 'department', default=''))}").classes("text-grey-8 text-sm")
        if item.get("description"):
            ui.label(str(item["description"])).classes("break-all")
        if item.get("mediaUrl") or item.get("media_url"):
            url = str(item.get("mediaUrl") or item.get("media_url"))
            ui.image(f"/api/ops/open311/media/{quote(url.rsplit('/', 1)[-1])}").classes("w-40 rounded")
        if status == "resolved":
            async def confirm(satisfied: bool) -> None:
                reply = await call("POST", f"/api/ops/incidents/{quote(ident)}/confirm",
                                   json={"satisfied": satisfied, "note": "" if satisfied else "问题仍在 still there"})
                if not reply.ok:
                    ui.notify(_reply_text(reply), type="negative")
                    return
                ui.notify("感谢确认 Thank you" if satisfied else "已退回重新处置 Sent back to be fixed",
                          type="positive")
                refresh()

            with ui.row().classes("gap-2 w-full"):
                ui.button("已解决 Fixed", icon="check", on_click=lambda: confirm(True)) \
                    .props("unelevated no-caps color=green-8").classes("t-confirm-fixed")
                ui.button("未解决 Not fixed", icon="replay", on_click=lambda: confirm(False)) \
                    .props("outline no-caps color=red-9").classes("t-confirm-not-fixed")
