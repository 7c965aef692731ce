"""Community pages (社区): a resident's one-click repair (一键报修) and notices, the 15-minute living circle on the
city map, and the community office's work orders and notices. Every figure comes from `/api/community` as the
signed-in user; times in the city's zone."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from nicegui import events, ui

from cityos.core import messages
from cityos.livelihood.community.circle import NEED_LABELS
from cityos.web.auth import Session
from cityos.web.portal import common
from cityos.web.portal.common import CITIZEN_ROLES, STAFF_ROLES, call, frame, problem_text

PLACES = {"lift": "电梯 Lift", "light": "楼道灯 Stair light", "pipe": "水管 Water pipe",
          "door": "单元门 Entrance door", "roof": "屋面渗漏 Roof leak", "other": "其他 Other"}
REPAIR_STEPS = ("reported", "accepted", "in_progress", "done", "confirmed")
REPAIR_STATUS = {"reported": ("已报修 Reported", "blue"), "accepted": ("已受理 Accepted", "indigo"),
                 "in_progress": ("维修中 In progress", "orange"), "done": ("待确认 Done, please confirm", "teal"),
                 "confirmed": ("已确认 Confirmed", "green"), "reopened": ("已重开 Reopened", "red")}
# What staff may do next with a work order (the API checks it again).
STAFF_NEXT = {"reported": [("accepted", "受理 Accept")],
              "accepted": [("in_progress", "开始维修 Start"), ("done", "已修好 Done")],
              "in_progress": [("done", "已修好 Done")],
              "reopened": [("in_progress", "重新维修 Start again"), ("done", "已修好 Done")]}
NEED_COLOURS = {"clinic": "#f472b6", "school": "#a78bfa", "market": "#f59e0b", "park": "#22c55e",
                "eldercare": "#fbbf24", "busStop": "#60a5fa"}
MAX_PHOTO_BYTES = 2 * 1024 * 1024


def register_nav() -> None:
    from cityos.web.shell import add_nav

    add_nav("报修 Repairs", "/portal/repairs", CITIZEN_ROLES, icon="build")
    add_nav("社区通知 Notices", "/portal/notices", CITIZEN_ROLES, icon="campaign")
    add_nav("15分钟生活圈 Living circle", "/portal/living-circle", icon="directions_walk")
    add_nav("社区办公室 Community office", "/community/office", STAFF_ROLES, icon="home_work")


def when(value: Any) -> str:
    return messages.local_time(value, "%m-%d %H:%M") if value else "—"


def status_chip(status: str) -> None:
    label, colour = REPAIR_STATUS.get(status, (status, "blue-grey"))
    ui.chip(label, color=colour, text_color="white").props("dense square").classes("t-repair-status")


async def _home_or_notice() -> dict[str, Any] | None:
    """The resident's community and building, or a notice that they are not registered yet."""
    home = await call("GET", "/api/community/home")
    if home.ok and isinstance(home.body, dict):
        ui.label(f"我的社区 My community: {home.body['community']} · {home.body['building']} 栋 building") \
            .classes("text-grey-8 t-home")
        return home.body
    ui.label("您尚未登记为社区居民，请联系社区办公室 You are not registered with a community yet; "
             "ask your community office").classes("text-negative t-not-resident")
    return None


# ---------------------------------------------------------------------------------- one-click repair


class RepairForm:
    def __init__(self) -> None:
        self.photo: bytes | None = None
        self.photo_name = "photo.jpg"
        self.photo_type = "image/jpeg"

    async def uploaded(self, event: events.UploadEventArguments) -> None:
        self.photo = await event.file.read()
        self.photo_name = event.file.name or "photo.jpg"
        self.photo_type = event.file.content_type or "image/jpeg"
        ui.notify("照片已选好 Photo attached", type="positive")


@ui.page("/portal/repairs", title="一键报修 Repairs · CityOS")
async def portal_repairs() -> Any:
    session = await common.login(CITIZEN_ROLES)
    if not isinstance(session, Session):
        return session
    form = RepairForm()
    with frame(session, "一键报修 Repairs", active="/portal/repairs"):
        ui.label("一键报修 Report a fault in a shared space").classes("text-2xl gov-title")
        if await _home_or_notice() is None:
            return
        with ui.card().classes("gov-card w-full p-4 gap-3"):
            place = ui.select(PLACES, label="位置 What is broken").props("outlined").classes("w-full t-place")
            description = ui.textarea("描述 Describe the fault").props("outlined maxlength=1000") \
                .classes("w-full t-description")
            ui.upload(label="拍照 Photo (JPEG/PNG, ≤ 2 MB, 选填 optional)", auto_upload=True,
                      max_file_size=MAX_PHOTO_BYTES, on_upload=form.uploaded,
                      on_rejected=lambda: ui.notify("照片不能超过 2 MB The photo is larger than 2 MB",
                                                    type="negative")) \
                .props('accept="image/jpeg,image/png" capture=environment').classes("w-full t-photo")

            async def submit() -> None:
                if not place.value or not (description.value or "").strip():
                    ui.notify("请选择位置并描述问题 Choose where and describe the fault", type="negative")
                    return
                if form.photo:
                    reply = await call("POST", "/api/community/repairs",
                                       data={"place": place.value, "description": description.value},
                                       files={"photo": (form.photo_name, form.photo, form.photo_type)})
                else:
                    reply = await call("POST", "/api/community/repairs",
                                       json={"place": place.value, "description": description.value})
                if reply.ok:
                    ui.notify(f"已报修，承诺 {reply.body['slaHours']} 小时内处理 Reported; fixed within "
                              f"{reply.body['slaHours']} h", type="positive")
                    ui.navigate.reload()
                else:
                    ui.notify(f"未能报修 Not sent: {problem_text(reply.body, reply.status)}", type="negative")

            ui.button("提交报修 Send", on_click=submit).props("unelevated color=primary size=lg no-caps") \
                .classes("w-full t-send-repair")
        ui.label("我的报修 My reports").classes("section-title mt-2")
        reply = await call("GET", "/api/community/repairs", params={"open": "false"})
        mine = reply.body if reply.ok and isinstance(reply.body, list) else []
        if not mine:
            ui.label("暂无报修 No reports yet").classes("text-grey-8 t-no-repairs")
        for item in sorted(mine, key=lambda r: r["created"], reverse=True):
            _repair_card(item)


def _repair_card(item: dict[str, Any]) -> None:
    with ui.card().classes("gov-card w-full p-3 gap-2 t-repair"):
        with ui.row().classes("w-full items-center gap-2"):
            ui.label(item["placeLabel"]).classes("text-lg font-bold")
            status_chip(item["status"])
            if item["overdue"]:
                ui.chip("已超时 Overdue", color="red", text_color="white").props("dense square")
            ui.space()
            ui.label(f"报修 {when(item['created'])} · 承诺 {when(item['due'])} 前 due").classes("text-sm text-grey-7")
        ui.label(item["description"]).classes("text-grey-9")
        if item.get("hasPhoto"):
            with ui.row().classes("items-center gap-1 text-sm text-grey-7 t-has-photo"):
                ui.icon("photo_camera")
                ui.label("已附照片 Photo attached")
        # Progress: the steps so far, as the resident sees them (who did it is not shown to residents).
        reached = {step["status"] for step in item["history"]}
        with ui.row().classes("items-center gap-1 flex-wrap t-progress"):
            for index, step in enumerate(REPAIR_STEPS):
                done = step in reached
                ui.label(REPAIR_STATUS[step][0].split(" ")[0]).classes(
                    "px-2 py-1 rounded text-sm " + ("bg-green-7 text-white" if done else "bg-grey-3 text-grey-7"))
                if index < len(REPAIR_STEPS) - 1:
                    ui.icon("chevron_right").classes("text-grey-6")
        notes = [s for s in item["history"] if s.get("note")]
        for step in notes:
            ui.label(f"{when(step['at'])} {step['note']}").classes("text-sm text-grey-8")
        if item["status"] == "done":
            with ui.row().classes("items-center gap-3 t-confirm-row"):
                ui.label("修好了吗？请评价 Fixed? Rate it:")
                rating = ui.rating(value=5, max=5, size="md").classes("t-rating")
                ui.button("确认修好 Confirm", on_click=lambda i=item, r=rating: _confirm(i, int(r.value or 0))) \
                    .props("unelevated color=positive no-caps").classes("t-confirm")
                ui.button("没修好 Reopen", on_click=lambda i=item: _advance_own(i, "reopened")) \
                    .props("flat color=negative no-caps").classes("t-reopen")
        if item.get("rating"):
            ui.label(f"我的评价 My rating: {'★' * item['rating']}{'☆' * (5 - item['rating'])}") \
                .classes("text-amber-8 t-my-rating")


async def _confirm(item: dict[str, Any], rating: int) -> None:
    reply = await call("POST", f"/api/community/repairs/{quote(item['id'])}/advance",
                       json={"to": "confirmed", "rating": rating})
    _after(reply, "已确认，感谢评价 Confirmed, thank you")


async def _advance_own(item: dict[str, Any], to: str) -> None:
    reply = await call("POST", f"/api/community/repairs/{quote(item['id'])}/advance", json={"to": to})
    _after(reply, "已重新提交 Reopened")


def _after(reply: Any, done: str) -> None:
    if reply.ok:
        ui.notify(done, type="positive")
        ui.navigate.reload()
    else:
        ui.notify(problem_text(reply.body, reply.status), type="negative")


# ---------------------------------------------------------------------------------- notices


@ui.page("/portal/notices", title="社区通知 Notices · CityOS")
async def portal_notices(notice: str | None = None) -> Any:
    session = await common.login(CITIZEN_ROLES)
    if not isinstance(session, Session):
        return session
    with frame(session, "社区通知 Notices", active="/portal/notices"):
        ui.label("社区通知 Community notices").classes("text-2xl gov-title")
        if await _home_or_notice() is None:
            return
        if notice:
            opened = await call("GET", f"/api/community/notices/{quote(notice)}")  # reading it is the receipt
            if opened.ok:
                with ui.card().classes("gov-card w-full p-4 gap-2 t-notice-open"):
                    with ui.row().classes("items-center gap-2"):
                        if opened.body["urgent"]:
                            ui.chip("紧急 Urgent", color="red", text_color="white").props("dense square")
                        ui.label(opened.body["title"]).classes("text-xl font-bold gov-title")
                    ui.label(when(opened.body["created"])).classes("text-sm text-grey-7")
                    ui.label(opened.body["body"]).classes("text-base whitespace-pre-line t-notice-body")
            else:
                ui.label(problem_text(opened.body, opened.status)).classes("text-negative")
        reply = await call("GET", "/api/community/notices")
        items = reply.body if reply.ok and isinstance(reply.body, list) else []
        unread = sum(not n["read"] for n in items)
        ui.label(f"未读 {unread} 条 · {unread} unread").classes("section-title t-unread")
        if not items:
            ui.label("暂无通知 No notices").classes("text-grey-8")
        for item in items:
            link = ui.link(target=f"/portal/notices?notice={quote(item['id'])}") \
                .classes("w-full no-underline text-inherit t-notice")
            with link, ui.row().classes("gov-card w-full items-center gap-2 p-3"):
                ui.icon("mark_email_read" if item["read"] else "mark_email_unread") \
                    .classes("text-2xl " + ("text-grey-6" if item["read"] else "text-primary"))
                if item["urgent"]:
                    ui.chip("紧急 Urgent", color="red", text_color="white").props("dense square")
                ui.label(item["title"]).classes("font-bold" if not item["read"] else "")
                ui.space()
                ui.label(("已读 Read" if item["read"] else "未读 Unread") + f" · {when(item['created'])}") \
                    .classes("text-sm text-grey-7 t-read-state")


# ---------------------------------------------------------------------------------- the 15-minute living circle


def circle_layers(body: dict[str, Any], chosen: str | None) -> dict[str, Any]:
    """The map's data: each community's walkable area (green without gaps, red with), the places it reaches,
    and a note at its centre naming the gaps."""
    areas, places, notes = [], [], []
    for item in body.get("communities", []):
        if chosen and item.get("code") != chosen:
            continue
        tone = "gap" if item["gaps"] else "ok"
        if item.get("isochrone"):
            areas.append({"type": "Feature", "geometry": item["isochrone"],
                          "properties": {"fill": "#dc2626" if item["gaps"] else "#16a34a"}})
        lon, lat = item["centre"]
        text = f"{item['community']} · " + ("缺 " + "、".join(g.split(" ")[0] for g in item["gapLabels"])
                                            if item["gaps"] else "齐全 complete")
        notes.append([lat, lon, tone, text])
        for need, reached in item["reach"].items():
            for place in reached:
                if "lon" in place:
                    places.append([place["lat"], place["lon"], NEED_COLOURS.get(need, "#94a3b8"),
                                   f"{place['name']} · {place['minutes']} 分钟 min", 6])
    return {"areas": {"type": "FeatureCollection", "features": areas}, "places": places, "notes": notes}


@ui.page("/portal/living-circle", title="15分钟生活圈 Living circle · CityOS")
async def living_circle_page(community: str | None = None, minutes: int = 15) -> None:
    """Public: what each community reaches within a 15-minute walk on the streets, and what it lacks."""
    from cityos.web.cockpit.citymap import CityMap
    from cityos.web.tiles import city_frame

    session = Session.current()
    if session.token:
        await session.me()
    minutes = min(max(int(minutes), 5), 30)
    with frame(session if session.user else None, "15分钟生活圈 Living circle", active="/portal/living-circle",
               citizen=False):
        ui.label(f"{minutes} 分钟生活圈 What is within a {minutes}-minute walk").classes("text-2xl gov-title")
        reply = await call("GET", "/api/community/living-circle", params={"minutes": minutes})
        if not reply.ok or not isinstance(reply.body, dict):
            ui.label(problem_text(reply.body, reply.status)).classes("text-negative")
            return
        body = reply.body
        communities = body.get("communities", [])
        if not communities:
            ui.label("尚无社区数据 No community data yet").classes("text-grey-8 t-no-circle")
            return
        # a community is chosen by its code, the one repairs, notices, the council and waste sorting use
        chosen = community if community in {c.get("code") for c in communities} else None
        with ui.row().classes("gap-2 flex-wrap items-center"):
            ui.link("全部 All", f"/portal/living-circle?minutes={minutes}").classes(
                "font-bold" if chosen is None else "")
            for item in communities:
                ui.link(item["community"], f"/portal/living-circle?community={quote(item['code'])}&minutes={minutes}") \
                    .classes("t-community-link " + ("font-bold" if item["code"] == chosen else ""))
        missing = body.get("communitiesMissing", {})
        short = {need: label.split(" ")[0] for need, label in NEED_LABELS.items()}
        ui.label(f"步行 {minutes} 分钟（约 {minutes * 80} 米） · {len(communities)} 个社区 communities · "
                 f"{body.get('places', 0)} 处设施 places · 缺口 communities lacking: "
                 + ("、".join(f"{short.get(k, k)} {v}" for k, v in missing.items() if v) or "无 none")) \
            .classes("text-grey-8 t-circle-summary")
        shown = [c for c in communities if chosen is None or c.get("code") == chosen]
        bounds, labels = city_frame()
        centre = (shown[0]["centre"][1], shown[0]["centre"][0]) if chosen else None
        with ui.element("div").classes("w-full rounded-lg overflow-hidden t-circle-map").style("height: 26rem"):
            city = CityMap(bounds, labels, "w-full h-full", centre=centre or _middle(shown))
        layers = circle_layers(body, chosen)
        ui.timer(0.5, lambda: city.update(layers))  # until the map is ready, then only on change
        with ui.row().classes("w-full gap-3 flex-wrap"):
            for item in shown:
                _circle_card(item)


def _middle(items: list[dict[str, Any]]) -> tuple[float, float]:
    lons = [c["centre"][0] for c in items]
    lats = [c["centre"][1] for c in items]
    return (sum(lats) / len(lats), sum(lons) / len(lons))


def _circle_card(item: dict[str, Any]) -> None:
    with ui.card().classes("gov-card p-3 gap-1 t-circle").style("min-width: 18rem; flex: 1"):
        with ui.row().classes("items-center gap-2"):
            ui.label(item["community"]).classes("text-lg font-bold gov-title")
            ui.label(f"{item.get('code', '')}" + (f" · {item['district']}" if item.get("district") else "")) \
                .classes("text-grey-7 text-sm t-circle-code")
            if item["gaps"]:
                ui.chip(f"缺 {len(item['gaps'])} 项 {len(item['gaps'])} gaps", color="red", text_color="white") \
                    .props("dense square").classes("t-gap-count")
            else:
                ui.chip("齐全 Complete", color="green", text_color="white").props("dense square")
        for need, label in NEED_LABELS.items():
            reached = item["reach"].get(need, [])
            with ui.row().classes("items-center gap-2 no-wrap"):
                ui.icon("check_circle" if reached else "cancel").classes(
                    "text-positive" if reached else "text-negative")
                ui.label(label).classes("w-36")
                ui.label(f"{reached[0]['name']} · {reached[0]['minutes']:.0f} 分钟 min" if reached
                         else "15 分钟内没有 none within reach").classes(
                    "text-sm " + ("text-grey-8" if reached else "text-negative t-gap"))


async def community_picker(page: str, value: str | None, classes: str) -> ui.select:
    """The communities staff may act on (GET /api/community/communities: the hub's communities and the codes
    already in use), to pick rather than type; a new code can still be entered. Choosing one opens `page` for it."""
    reply = await call("GET", "/api/community/communities")
    options: dict[str, str] = {}
    for item in reply.body if reply.ok and isinstance(reply.body, list) else []:
        label = item["code"] if item.get("name") in (None, item["code"]) else f"{item['name']} {item['code']}"
        options[item["code"]] = label + (f" · {item['district']}" if item.get("district") else "")
    if value and value not in options:
        options[value] = value

    def open_page(event: events.ValueChangeEventArguments) -> None:
        if event.value:
            ui.navigate.to(f"{page}?community={quote(str(event.value))}")

    return ui.select(options, label="社区 Community", value=value or None, with_input=True,
                     new_value_mode="add-unique", on_change=open_page) \
        .props("outlined dense options-dense").classes(f"min-w-[16rem] {classes}")


# ---------------------------------------------------------------------------------- the community office


@ui.page("/community/office", title="社区办公室 Community office · CityOS")
async def community_office(community: str | None = None) -> Any:
    session = await common.login(STAFF_ROLES)
    if not isinstance(session, Session):
        return session
    with frame(session, "社区办公室 Community office", active="/community/office", citizen=False):
        ui.label("社区办公室 Community office").classes("text-2xl gov-title")
        await community_picker("/community/office", community, "t-office-community")
        await _work_orders(community)
        await _notice_desk(community)


async def _work_orders(community: str | None) -> None:
    ui.label("报修工单 Repair work orders (超时优先 overdue first)").classes("section-title mt-2")
    params = {"open": "true", **({"community": community} if community else {})}
    reply = await call("GET", "/api/community/repairs", params=params)
    if not reply.ok:
        ui.label(problem_text(reply.body, reply.status)).classes("text-negative")
        return
    orders = reply.body if isinstance(reply.body, list) else []
    orders.sort(key=lambda r: (not r["overdue"], r["due"]))
    overdue = sum(r["overdue"] for r in orders)
    ui.label(f"未完成 {len(orders)} 单 open · 超时 {overdue} overdue").classes("t-order-count")
    for item in orders:
        with ui.row().classes("gov-card w-full items-center gap-2 p-2 t-work-order"):
            ui.label(f"{item['community']} {item['building']} 栋").classes("font-bold")
            ui.label(item["placeLabel"])
            status_chip(item["status"])
            sla = f"SLA {item['slaHours']} h · 截止 due {when(item['due'])}"
            ui.label(sla).classes("text-sm " + ("text-negative font-bold t-overdue" if item["overdue"]
                                                else "text-grey-7"))
            ui.label(item["description"][:60]).classes("text-sm text-grey-8")
            if item.get("hasPhoto"):
                ui.link("照片 Photo", f"/community/office/photo/{quote(item['id'])}", new_tab=True) \
                    .classes("text-sm")
            ui.space()
            for to, label in STAFF_NEXT.get(item["status"], []):
                ui.button(label, on_click=lambda i=item, t=to: _staff_advance(i, t)) \
                    .props("dense no-caps outline").classes(f"t-advance-{to}")


async def _staff_advance(item: dict[str, Any], to: str) -> None:
    reply = await call("POST", f"/api/community/repairs/{quote(item['id'])}/advance", json={"to": to})
    _after(reply, "工单已更新 Work order updated")


@ui.page("/community/office/photo/{repair_id}")
async def repair_photo(repair_id: str) -> Any:
    """The report's photo for staff, through the API as the signed-in user (never a public URL)."""
    session = await common.login(STAFF_ROLES)
    if not isinstance(session, Session):
        return session
    import base64

    with frame(session, "报修照片 Photo", active="/community/office", citizen=False):
        reply = await call("GET", f"/api/community/repairs/{quote(repair_id)}/photo")
        if not reply.ok or not isinstance(reply.body, bytes):
            ui.label(problem_text(reply.body, reply.status)).classes("text-negative")
            return
        kind = "image/png" if reply.body[:4] == b"\x89PNG" else "image/jpeg"
        ui.image(f"data:{kind};base64,{base64.b64encode(reply.body).decode()}").classes("max-w-xl t-photo-view")


async def _notice_desk(community: str | None) -> None:
    ui.label("发布通知 Publish a notice").classes("section-title mt-4")
    with ui.card().classes("gov-card w-full p-4 gap-2"):
        target = ui.input("社区 Community", value=community or "").props("outlined dense").classes("t-n-community")
        buildings = ui.input("楼栋 Buildings (逗号分隔，空为全社区 comma-separated, empty = all)") \
            .props("outlined dense").classes("w-full t-n-buildings")
        title = ui.input("标题 Title").props("outlined dense maxlength=200").classes("w-full t-n-title")
        body = ui.textarea("内容 Text").props("outlined maxlength=5000").classes("w-full t-n-body")
        urgent = ui.checkbox("紧急通知（同时发短信） Emergency: also by SMS").classes("t-n-urgent")

        async def publish() -> None:
            chosen = [b.strip() for b in (buildings.value or "").replace("，", ",").split(",") if b.strip()]
            reply = await call("POST", "/api/community/notices", json={
                "community": target.value or "", "title": title.value or "", "body": body.value or "",
                "buildings": chosen, "urgent": bool(urgent.value)})
            if reply.ok:
                ui.notify(f"已发送给 {reply.body['recipients']} 户，短信 {reply.body['sms']} 条 Sent to "
                          f"{reply.body['recipients']} residents, {reply.body['sms']} by SMS", type="positive")
                ui.navigate.to(f"/community/office?community={quote(reply.body['community'])}")
            else:
                ui.notify(problem_text(reply.body, reply.status), type="negative")

        ui.button("发布 Publish", on_click=publish).props("unelevated color=primary no-caps").classes("t-publish")
    if not community:
        return
    reply = await call("GET", "/api/community/notices", params={"community": community})
    items = reply.body if reply.ok and isinstance(reply.body, list) else []
    ui.label("已发通知与阅读回执 Notices and read receipts").classes("section-title mt-2")
    for item in items:
        with ui.row().classes("gov-card w-full items-center gap-2 p-2 t-sent-notice"):
            if item["urgent"]:
                ui.chip("紧急 SMS", color="red", text_color="white").props("dense square")
            ui.label(item["title"]).classes("font-bold")
            ui.label(", ".join(item["buildings"]) or "全社区 whole community").classes("text-sm text-grey-7")
            ui.space()
            ui.label(f"已读 {item['readCount']}/{item['recipients']} read").classes("t-receipts")
            ui.label(when(item["created"])).classes("text-sm text-grey-7")


register_nav()
