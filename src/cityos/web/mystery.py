"""`/decision/mystery-shopper`: the form of the 28-item mystery-shopper check (神秘人暗访).

The assessor names the site, the visit's date and time (entered in the city's zone, sent with its
offset) and sets every item to pass or fail: an item left unanswered is refused here, because a
silent default would score a visit that was not really checked. The answer goes through the
evaluation API with the signed-in user's token; the score and the failed items it returns are shown,
and its refusals (400/403) are shown as they come.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi.responses import RedirectResponse
from nicegui import ui

from cityos.core.messages import city_zone
from cityos.security.policy import roles_allowed
from cityos.web.auth import ApiError, Session, require_login
from cityos.web.shell import frame, panel

# The roles `evaluation.assess` is granted to in cityos.security.policy.
MYSTERY_ROLES = roles_allowed("evaluation.assess")  # from the policy matrix, not a copy of it
PATH = "/decision/mystery-shopper"
VERDICTS = {True: "通过 Pass", False: "不合格 Fail"}


def visited_at(day: str, time_of_day: str) -> str:
    """The visit as an ISO 8601 string with the city's offset, from a date and a time entered in its zone."""
    local = datetime.fromisoformat(f"{day.strip()}T{time_of_day.strip()}")
    if local.tzinfo is not None:
        raise ValueError("the time is entered in the city's zone, without an offset")
    return local.replace(tzinfo=city_zone()).isoformat(timespec="minutes")


class MysteryShopperForm:
    def __init__(self, session: Session, items: list[dict[str, Any]]) -> None:
        self.session = session
        self.items = items
        now = datetime.now(city_zone())
        with ui.row().classes("w-full gap-3 items-start"):
            with panel("暗访信息 Visit", classes="w-[360px] cityos-mystery-visit"):
                self.site = ui.input("场所 Site", placeholder="如：市民中心 e.g. Citizen centre") \
                    .props("dense outlined").classes("w-full cityos-mystery-site")
                with ui.row().classes("w-full no-wrap gap-2"):
                    # Text with a mask and a picker, not the browser's date/time fields: those follow the
                    # browser's locale (12-hour clocks, month first) while the city writes 2026-03-02 09:30.
                    self.day = ui.input("日期 Date", value=now.strftime("%Y-%m-%d")) \
                        .props("dense outlined mask=####-##-##").classes("flex-1 cityos-mystery-date")
                    with self.day.add_slot("append"), ui.icon("event").classes("cursor-pointer"), \
                            ui.menu():  # opens on a click on the icon
                        ui.date(mask="YYYY-MM-DD").bind_value(self.day)
                    self.time = ui.input("时间 Time", value=now.strftime("%H:%M")) \
                        .props("dense outlined mask=##:##").classes("w-32 cityos-mystery-time")
                    with self.time.add_slot("append"), ui.icon("schedule").classes("cursor-pointer"), \
                            ui.menu():  # opens on a click on the icon
                        ui.time(mask="HH:mm").props("format24h").bind_value(self.time)
                ui.label(f"按城市时区 In the city's time zone: {now.tzname()} (UTC{now.strftime('%z')[:3]}:"
                         f"{now.strftime('%z')[3:]})").classes("text-xs text-slate-400")
                self.note = ui.textarea("备注 Note（可选 optional）").props("dense outlined autogrow") \
                    .classes("w-full cityos-mystery-note")
                self.progress = ui.label().classes("text-sm text-slate-300 cityos-mystery-progress")
                with ui.row().classes("gap-2"):
                    ui.button("全部通过 All pass", icon="done_all", on_click=self.all_pass) \
                        .props("outline no-caps").classes("cityos-mystery-all-pass")
                    ui.button("提交 Submit", icon="send", on_click=self.submit) \
                        .props("no-caps color=primary").classes("cityos-mystery-submit")
                self.result = ui.column().classes("w-full gap-1 cityos-mystery-result")
            with panel(f"检查项 The {len(items)} items",
                       classes="flex-1 min-w-[560px] max-w-[880px] cityos-mystery-items"):
                self.toggles: dict[str, ui.toggle] = {}
                for number, item in enumerate(items, start=1):
                    with ui.row().classes(f"w-full items-center no-wrap gap-3 cityos-mystery-item "
                                          f"cityos-mystery-item-{item['id']}"):
                        ui.label(f"{number}.").classes("w-6 text-right text-slate-400")
                        with ui.column().classes("flex-1 gap-0"):
                            ui.label(item["zh"]).classes("text-slate-100 text-sm")
                            ui.label(item["en"]).classes("text-slate-400 text-xs")
                        self.toggles[item["id"]] = ui.toggle(
                            VERDICTS, value=None, on_change=self._changed).props("no-caps dense unelevated")
        self._count()

    def _unanswered(self) -> list[str]:
        return [i for i, toggle in self.toggles.items() if toggle.value is None]

    def _changed(self, event: Any) -> None:
        # a failed item is red and a passed one green: one colour for both hid the failures at a glance
        event.sender.props(f"toggle-color={'positive' if event.value else 'negative'}")
        self._count()

    def _count(self) -> None:
        left = len(self._unanswered())
        failed = sum(1 for toggle in self.toggles.values() if toggle.value is False)
        self.progress.set_text(f"已答 {len(self.toggles) - left}/{len(self.toggles)} answered · "
                               f"不合格 {failed} failed")

    def all_pass(self) -> None:
        """Marks the unanswered items as passed (the ones already set keep their answer)."""
        for toggle in self.toggles.values():
            if toggle.value is None:
                toggle.set_value(True)

    async def submit(self) -> None:
        left = self._unanswered()
        if left:
            ui.notify(f"还有 {len(left)} 项未评 {len(left)} items are not answered yet", type="warning")
            return
        try:
            when = visited_at(str(self.day.value or ""), str(self.time.value or ""))
        except ValueError:
            ui.notify("日期或时间无效 The date or time is not valid", type="negative")
            return
        body: dict[str, Any] = {"site": str(self.site.value or "").strip(), "visitedAt": when,
                                "answers": {i: bool(t.value) for i, t in self.toggles.items()}}
        if str(self.note.value or "").strip():
            body["note"] = str(self.note.value).strip()
        try:
            answer = await self.session.api("POST", "/api/evaluation/mystery-shopper", json=body)
        except ApiError as exc:
            ui.notify(f"提交被拒绝 Refused ({exc.status}): {exc.detail}", type="negative", multi_line=True,
                      classes="cityos-mystery-refused")
            return
        self._show(answer)
        ui.notify(f"已记录 Recorded: {answer['score']:g}", type="positive")

    def _show(self, answer: dict[str, Any]) -> None:
        failed_ids = set(answer.get("failed") or [])
        failed = [item for item in self.items if item["id"] in failed_ids]  # in the form's order
        self.result.clear()
        with self.result:
            ui.separator()
            ui.label("本次得分 Score").classes("text-slate-300 text-sm")
            ui.label(f"{answer['score']:g}").classes("cityos-kpi-value cityos-mystery-score") \
                .style("font-size:2.6rem; color:" + ("#4ade80" if not failed else "#facc15"))
            ui.label(f"{len(self.toggles) - len(failed)}/{len(self.toggles)} 项通过 passed · "
                     f"{answer['site']}").classes("text-xs text-slate-400 cityos-mystery-passed")
            if failed:
                ui.label("不合格项 Failed items").classes("text-sm text-red-300 mt-1")
                for item in failed:
                    ui.label(f"✗ {item['zh']} {item['en']}").classes("text-xs text-red-200 cityos-mystery-failed")


@ui.page(PATH, title="神秘人暗访 · CityOS")
async def mystery_shopper_page() -> RedirectResponse | None:
    session = await require_login(MYSTERY_ROLES)
    if not isinstance(session, Session):
        return session
    with frame(session, "神秘人暗访 Mystery shopper", active="/decision"):
        with ui.row().classes("items-center gap-2"):
            ui.button("返回驾驶舱 Back to the cockpit", icon="arrow_back",
                      on_click=lambda: ui.navigate.to("/decision")).props("flat no-caps")
        try:
            items = (await session.api("GET", "/api/evaluation/mystery-shopper/items"))["items"]
        except ApiError as exc:
            ui.label(f"无法读取检查项 Cannot read the items: {exc}").classes("text-amber-300")
            return None
        MysteryShopperForm(session, items)
    return None
