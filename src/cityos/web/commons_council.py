"""Citizens' council pages (市民议事厅): a verified resident's community proposals, comments and votes (changeable
until the close, results after it; a moderated proposal shows its author the reason), and the community
office's moderation. Through `/api/council` as the signed-in user; times in the city's zone."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from nicegui import ui

from cityos.core import messages
from cityos.web.auth import Session
from cityos.web.commons_community import community_picker
from cityos.web.portal import common
from cityos.web.portal.common import CITIZEN_ROLES, STAFF_ROLES, call, frame, problem_text

CHOICES = {"yes": ("赞成 Yes", "positive"), "no": ("反对 No", "negative"), "abstain": ("弃权 Abstain", "grey")}


def register_nav() -> None:
    from cityos.web.shell import add_nav

    add_nav("议事厅 Council", "/portal/council", CITIZEN_ROLES, icon="how_to_vote")
    add_nav("议事审核 Moderation", "/council/moderation", STAFF_ROLES, icon="gavel")


def when(value: Any) -> str:
    return messages.local_time(value, "%m-%d %H:%M") if value else "—"


@ui.page("/portal/council", title="市民议事厅 Council · CityOS")
async def portal_council(community: str | None = None, proposal: str | None = None) -> Any:
    session = await common.login(CITIZEN_ROLES)
    if not isinstance(session, Session):
        return session
    with frame(session, "市民议事厅 Council", active="/portal/council"):
        ui.label("市民议事厅 Citizens' council").classes("text-2xl gov-title")
        mine = await call("GET", "/api/council/memberships")
        communities = mine.body if mine.ok and isinstance(mine.body, list) else []
        if not communities:
            ui.label("您还不是已核验的社区居民，请到社区办公室核验后参与议事 You are not a verified resident yet; "
                     "the community office verifies residents").classes("text-negative t-not-member")
            return
        shown = str(community if community in communities else communities[0])
        if len(communities) > 1:
            with ui.row().classes("gap-2"):
                for name in communities:
                    ui.link(name, f"/portal/council?community={quote(name)}").classes(
                        "font-bold" if name == shown else "")
        ui.label(f"社区 Community: {shown}").classes("text-grey-8 t-council-community")
        _proposal_form(shown)
        reply = await call("GET", f"/api/council/communities/{quote(shown)}/proposals")
        items = reply.body if reply.ok and isinstance(reply.body, list) else []
        ui.label("议题 Proposals").classes("section-title mt-2")
        if not items:
            ui.label("暂无议题 No proposals yet").classes("text-grey-8")
        for item in items:
            await _proposal_card(item, shown, expanded=item["id"] == proposal)


def _proposal_form(community: str) -> None:
    with ui.expansion("提出议题 Make a proposal", icon="add_comment").classes("gov-card w-full t-propose-open"):
        title = ui.input("标题 Title").props("outlined dense maxlength=200").classes("w-full t-p-title")
        body = ui.textarea("内容 What and why").props("outlined maxlength=5000").classes("w-full t-p-body")
        days = ui.number("投票天数 Voting days", value=14, min=1, max=60, step=1).props("outlined dense") \
            .classes("t-p-days")

        async def propose() -> None:
            reply = await call("POST", "/api/council/proposals", json={
                "community": community, "title": title.value or "", "body": body.value or "",
                "days": int(days.value or 14)})
            if reply.ok:
                ui.notify("议题已发布 Proposal published", type="positive")
                ui.navigate.reload()
            else:
                ui.notify(problem_text(reply.body, reply.status), type="negative")

        ui.button("发布 Publish", on_click=propose).props("unelevated color=primary no-caps").classes("t-propose")


async def _proposal_card(item: dict[str, Any], community: str, expanded: bool) -> None:
    with ui.card().classes("gov-card w-full p-3 gap-2 t-proposal"):
        with ui.row().classes("w-full items-center gap-2"):
            ui.label(item["title"]).classes("text-lg font-bold gov-title")
            if item["status"] == "hidden":
                ui.chip("已被审核隐藏 Hidden by moderation", color="red", text_color="white").props("dense square")
            elif item["closed"]:
                ui.chip("已结束 Closed", color="grey", text_color="white").props("dense square")
            else:
                ui.chip("投票中 Voting", color="blue", text_color="white").props("dense square")
            if item["mine"]:
                ui.chip("我的 Mine", color="teal", text_color="white").props("dense square")
            ui.space()
            ui.label(f"截止 closes {when(item['closes'])}").classes("text-sm text-grey-7")
        ui.label(item["body"]).classes("whitespace-pre-line")
        if item.get("moderationReason"):
            ui.label(f"审核理由 Reason given: {item['moderationReason']}").classes(
                "text-negative font-bold t-moderation-reason")
            return
        if item["closed"] and item.get("results"):
            results = item["results"]
            total = sum(results.values()) or 1
            with ui.row().classes("items-center gap-4 t-results"):
                ui.label("结果 Results:").classes("font-bold")
                for choice, (label, colour) in CHOICES.items():
                    ui.label(f"{label} {results.get(choice, 0)}（{results.get(choice, 0) * 100 / total:.0f}%）") \
                        .classes(f"text-{colour}")
        elif not item["closed"]:
            with ui.row().classes("items-center gap-2 t-vote-row"):
                current = item.get("myVote")
                ui.label(f"我的投票 My vote: {CHOICES[current][0] if current else '未投 none'}").classes("t-my-vote")
                for choice, (label, colour) in CHOICES.items():
                    ui.button(label, on_click=lambda c=choice, i=item: _vote(i, c)) \
                        .props(f"{'unelevated' if current == choice else 'outline'} color={colour} no-caps dense") \
                        .classes(f"t-vote-{choice}")
                if current:
                    ui.label("截止前可改票 You can change it until the close").classes("text-sm text-grey-7")
        with ui.expansion("讨论 Comments", value=expanded) \
                .classes("w-full t-comments" + ("" if item["closed"] else " t-comments-open")):
            reply = await call("GET", f"/api/council/proposals/{quote(item['id'])}/comments")
            comments = reply.body if reply.ok and isinstance(reply.body, list) else []
            for comment in comments:
                ui.label(f"{when(comment['at'])} · {comment['body']}").classes("text-grey-9 t-comment")
            if not comments:
                ui.label("还没有评论 No comments yet").classes("text-grey-7")
            if not item["closed"]:
                box = ui.input("写评论 Add a comment").props("outlined dense maxlength=2000").classes("w-full t-c-body")
                ui.button("发表 Post", on_click=lambda i=item, b=box: _comment(i, community, b.value or "")) \
                    .props("no-caps dense").classes("t-c-send")


async def _vote(item: dict[str, Any], choice: str) -> None:
    reply = await call("POST", f"/api/council/proposals/{quote(item['id'])}/votes", json={"choice": choice})
    if reply.ok:
        ui.notify(("已改票 Vote changed: " if reply.body["changed"] else "已投票 Voted: ") + CHOICES[choice][0],
                  type="positive")
        ui.navigate.reload()
    else:
        ui.notify(problem_text(reply.body, reply.status), type="negative")


async def _comment(item: dict[str, Any], community: str, text: str) -> None:
    reply = await call("POST", f"/api/council/proposals/{quote(item['id'])}/comments", json={"body": text})
    if reply.ok:
        ui.navigate.to(f"/portal/council?community={quote(community)}&proposal={quote(item['id'])}")
    else:
        ui.notify(problem_text(reply.body, reply.status), type="negative")


# ---------------------------------------------------------------------------------- moderation (staff)


@ui.page("/council/moderation", title="议事审核 Moderation · CityOS")
async def council_moderation(community: str | None = None) -> Any:
    session = await common.login(STAFF_ROLES)
    if not isinstance(session, Session):
        return session
    with frame(session, "议事审核 Moderation", active="/council/moderation", citizen=False):
        ui.label("议事厅审核 Council moderation").classes("text-2xl gov-title")
        picker = await community_picker("/council/moderation", community, "t-m-community")
        with ui.expansion("核验居民 Verify a resident", icon="verified_user").classes("gov-card w-full"):
            person = ui.input("居民账号 Resident's account id").props("outlined dense").classes("t-m-person")

            async def verify() -> None:
                reply = await call("POST", "/api/council/members", json={"community": picker.value or "",
                                                                         "person": person.value or ""})
                ui.notify("已核验 Verified" if reply.ok else problem_text(reply.body, reply.status),
                          type="positive" if reply.ok else "negative")

            ui.button("核验 Verify", on_click=verify).props("no-caps").classes("t-m-verify")
        if not community:
            return
        reply = await call("GET", f"/api/council/communities/{quote(community)}/proposals")
        if not reply.ok:
            ui.label(problem_text(reply.body, reply.status)).classes("text-negative")
            return
        items = reply.body if isinstance(reply.body, list) else []
        ui.label(f"{len(items)} 个公开议题 public proposals").classes("section-title t-m-count")
        for item in items:
            with ui.card().classes("gov-card w-full p-3 gap-1 t-m-proposal"):
                with ui.row().classes("w-full items-center gap-2"):
                    ui.label(item["title"]).classes("font-bold")
                    ui.label("已结束 closed" if item["closed"] else f"截止 closes {when(item['closes'])}") \
                        .classes("text-sm text-grey-7")
                ui.label(item["body"][:300]).classes("text-grey-9")
                with ui.row().classes("w-full items-center gap-2"):
                    reason = ui.input("隐藏理由（作者可见） Reason, shown to the author") \
                        .props("outlined dense maxlength=1000").classes("flex-grow t-m-reason")
                    ui.button("隐藏 Hide", on_click=lambda i=item, r=reason: _moderate(i, r.value or "")) \
                        .props("color=negative no-caps dense").classes("t-m-hide")


async def _moderate(item: dict[str, Any], reason: str) -> None:
    if not reason.strip():
        ui.notify("请写明理由 A reason is required; the author sees it", type="negative")
        return
    reply = await call("POST", f"/api/council/proposals/{quote(item['id'])}/moderate", json={"reason": reason})
    if reply.ok:
        ui.notify("已隐藏，作者可见理由 Hidden; the author sees the reason", type="positive")
        ui.navigate.reload()
    else:
        ui.notify(problem_text(reply.body, reply.status), type="negative")


register_nav()
