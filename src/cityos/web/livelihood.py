"""一网协同 pages, each through the livelihood API with the signed-in user's token.

- `/portal/services-for-me`: a resident's or company's policies, why they qualify (each condition,
  the department and date of the data), payouts and their objection window, one-click confirmation
  of invitations, and the opt-out of proactive notices;
- `/livelihood/uptake`: staff: per policy eligible, notified, confirmed, opted out, paid and reach
  (aggregates only, no person);
- `/livelihood/care`: a community worker's people, today's alerts (acknowledge), visits and notes.
"""

from __future__ import annotations

from typing import Any

from fastapi.responses import RedirectResponse
from nicegui import ui

from cityos.core.messages import local_time
from cityos.security.policy import roles_allowed
from cityos.web.auth import ApiError, Session, require_login
from cityos.web.shell import frame, panel, signed_in_view

SERVICES_ROLES = roles_allowed("livelihood.services.read")
UPTAKE_ROLES = roles_allowed("livelihood.uptake.read")
CARE_ROLES = roles_allowed("livelihood.care.read")
STATUS = {"granted": "已发放 Granted", "notified": "待确认 Invited", "confirmed": "已确认 Confirmed",
          "opted-out": "已退订 Opted out", "lapsed": "已失效 Lapsed", "declined": "已谢绝 Declined"}
PAYOUT = {"objection-window": "公示期 Objection window", "awaiting-approval": "待审批 Awaiting approval",
          "approved": "已审批 Approved", "paid": "已支付 Paid", "objected": "有异议 Objected",
          "rejected": "未通过 Rejected"}
OPS = {"==": "=", "!=": "≠", ">": ">", ">=": "≥", "<": "<", "<=": "≤", "in": "∈", "not_in": "∉",
       "between": "介于"}


def why_line(item: dict[str, Any]) -> str:
    mark = "✓" if item.get("held") else "✗"
    if "policy" in item:
        return f"{mark} 符合政策 eligible for {item['policy']}"
    actual = item.get("actual") if item.get("known") else "未知 unknown"
    source = f" · {item['department']} {str(item.get('observedAt', ''))[:10]}" if item.get("department") else ""
    return f"{mark} {item['field']} {OPS.get(item['op'], item['op'])} {item['value']}(您的 yours: {actual}){source}"


class ServicesForMe:
    def __init__(self, session: Session) -> None:
        self.session = session
        self.box = ui.column().classes("w-full gap-3 cityos-services-for-me")

    async def load(self) -> None:
        self.box.clear()
        try:
            data = await self.session.api("GET", "/api/livelihood/me/services")
        except ApiError as exc:
            with self.box:
                ui.label(f"暂无档案 No profile linked to this account ({exc.status})").classes(
                    "text-amber-300 cityos-no-profile")
            return
        with self.box:
            with ui.row().classes("items-center gap-3"):
                ui.label(f"为您找到 {len(data['items'])} 项服务 {len(data['items'])} services for you") \
                    .classes("text-lg cityos-services-count")
                ui.switch("不再主动推送 Stop proactive notices", on_change=self.opt_out) \
                    .classes("cityos-opt-out")
            for item in data["items"]:
                self._item(item)

    def _item(self, item: dict[str, Any]) -> None:
        policy = item["policy"]
        with panel(f"{policy['name']} {policy['nameEn']}", classes=f"w-full cityos-service-{policy['id']}"):
            mode = "免申即享 Granted without application" if policy["mode"] == "automatic" else \
                "服务找人 We found this for you"
            benefit = policy["benefit"]
            amount = f"{benefit['amount']:g} 元 CNY" if benefit.get("amount") else benefit.get("unit", "")
            ui.label(f"{mode} · {amount} · {STATUS.get(item['status'], item['status'])}") \
                .classes("text-sm text-slate-200 cityos-service-status")
            ui.label(f"依据 Legal basis: {policy['legalBasis']}").classes("text-xs text-slate-400")
            with ui.column().classes("gap-0 cityos-service-why"):
                ui.label("为什么符合 Why you qualify").classes("text-xs text-slate-300")
                for why in item["why"]:
                    ui.label(why_line(why)).classes("text-xs text-slate-200")
            payout = item.get("payout")
            if payout:
                until = local_time(payout["objectionUntil"])
                ui.label(f"发放 Payout: {payout['amount']:g} 元 · {PAYOUT.get(payout['status'], payout['status'])}"
                         f" · 公示至 objections until {until}").classes("text-sm cityos-service-payout")
            if policy["mode"] == "invite" and item["status"] == "notified":
                ui.button("一键确认 Confirm with one click", icon="check",
                          on_click=lambda p=policy["id"]: self.confirm(p)).props("no-caps color=primary") \
                    .classes(f"cityos-confirm-{policy['id']}")
                ui.button("不需要 Not for me", icon="close",
                          on_click=lambda p=policy["id"]: self.decline(p)).props("no-caps flat color=grey") \
                    .classes(f"cityos-decline-{policy['id']}")
            if item.get("application"):
                app = item["application"]
                ui.label(f"已生成预填申请 Pre-filled application {app['serviceCode']} · 数据来自 data from "
                         f"{', '.join(app['prefilledFrom'])}").classes("text-xs text-green-300 cityos-prefilled")
                if app.get("receipt"):
                    ui.label(f"一网通办已受理 Received by the service desk · 受理号 receipt {app['receipt']}") \
                        .classes("text-xs text-green-300 cityos-prefilled-receipt")
                elif app.get("refused"):
                    ui.label(f"未能受理 Not accepted: {app['refused']}").classes("text-xs text-amber-300")

    async def confirm(self, policy_id: str) -> None:
        try:
            await self.session.api("POST", f"/api/livelihood/me/confirm/{policy_id}")
        except ApiError as exc:
            ui.notify(f"确认失败 Refused ({exc.status}): {exc.detail}", type="negative")
            return
        ui.notify("已生成预填申请 Pre-filled application created", type="positive")
        await self.load()

    async def decline(self, policy_id: str) -> None:
        try:
            await self.session.api("POST", f"/api/livelihood/me/decline/{policy_id}")
        except ApiError as exc:
            ui.notify(f"操作失败 Refused ({exc.status}): {exc.detail}", type="negative")
            return
        ui.notify("已记录:您不需要这项服务 Noted: not for you", type="info")
        await self.load()

    async def opt_out(self, event: Any) -> None:
        try:
            await self.session.api("PUT", "/api/livelihood/me/opt-out", json={"optOut": bool(event.value)})
        except ApiError as exc:
            ui.notify(f"设置失败 Refused ({exc.status}): {exc.detail}", type="negative")


@ui.page("/portal/services-for-me", title="为您服务 · CityOS")
async def services_for_me_page() -> RedirectResponse | None:
    return await signed_in_view(SERVICES_ROLES, "为您服务 Services for me",
                                "/portal", ServicesForMe)


@ui.page("/livelihood/uptake", title="政策触达 · CityOS")
async def uptake_page() -> RedirectResponse | None:
    session = await require_login(UPTAKE_ROLES)
    if not isinstance(session, Session):
        return session
    with frame(session, "政策触达 Policy uptake and reach", active="/livelihood/uptake"):
        try:
            items = (await session.api("GET", "/api/livelihood/uptake"))["items"]
        except ApiError as exc:
            ui.label(f"无法读取 Cannot read: {exc}").classes("text-amber-300")
            return None
        columns = [{"name": k, "label": label, "field": k, "align": "left"} for k, label in (
            ("name", "政策 Policy"), ("department", "部门 Department"), ("mode", "方式 Mode"),
            ("eligible", "符合 Eligible"), ("notified", "已通知 Notified"), ("confirmed", "已确认 Confirmed"),
            ("declined", "谢绝 Declined"), ("optedOut", "退订 Opted out"), ("paid", "已支付 Paid"),
            ("reach", "触达率 Reach %"))]
        rows = [{**i, "mode": "免申即享" if i["mode"] == "automatic" else "服务找人",
                 "reach": "—" if i["reach"] is None else f"{i['reach']:g}"} for i in items]
        ui.table(columns=columns, rows=rows, row_key="policy").classes("w-full cityos-uptake-table") \
            .props("dense flat")
    return None


class CareDesk:
    def __init__(self, session: Session) -> None:
        self.session = session
        self.box = ui.column().classes("w-full gap-3 cityos-care")

    async def load(self) -> None:
        self.box.clear()
        try:
            roster = await self.session.api("GET", "/api/livelihood/care/roster", params={"mine": "true"})
        except ApiError as exc:
            with self.box:
                ui.label(f"无法读取 Cannot read: {exc}").classes("text-amber-300")
            return
        with self.box:
            ui.label(f"我的关爱对象 People in my care: {len(roster['people'])}").classes("text-lg cityos-care-count")
            for person in roster["people"]:
                self._person(person)

    def _person(self, person: dict[str, Any]) -> None:
        with panel(f"{person['subject']} · {person.get('district') or ''}",
                   classes=f"w-full cityos-care-person-{person['subject']}"):
            last = local_time(person["lastActivityAt"]) if person.get("lastActivityAt") else "—"
            ui.label(f"最近活动 Last activity {last} · 设备 devices {len(person['devices'])}").classes("text-xs")
            for alert in person["alerts"]:
                steps = " → ".join(f"{s['role']}({s['outcome']})" for s in alert["steps"])
                with ui.row().classes(f"items-center gap-2 cityos-care-alert cityos-care-alert-{alert['status']}"):
                    ui.label(f"{local_time(alert['raisedAt'])} {alert['kind']} · {alert['status']} · {steps}") \
                        .classes("text-sm")
                    if alert["status"] in ("open", "escalated-120", "unanswered"):
                        ui.button("确认 Acknowledge", on_click=lambda a=alert["id"]: self.ack(a)) \
                            .props("no-caps dense color=primary").classes("cityos-care-ack")
            for note in person["notes"][-5:]:
                ui.label(f"{local_time(note['at'])} {note['kind']} · {note['text']}").classes("text-xs text-slate-300")
            text = ui.input("探访记录 Visit note").props("dense outlined").classes("w-full cityos-care-note")
            ui.button("记录探访 Record visit", on_click=lambda s=person["subject"], t=text: self.note(s, t.value)) \
                .props("no-caps outline dense").classes("cityos-care-note-save")

    async def ack(self, alert_id: str) -> None:
        try:
            await self.session.api("POST", f"/api/livelihood/care/alerts/{alert_id}/ack")
        except ApiError as exc:
            ui.notify(f"确认失败 Refused ({exc.status}): {exc.detail}", type="negative")
            return
        await self.load()

    async def note(self, subject: str, text: Any) -> None:
        try:
            await self.session.api("POST", f"/api/livelihood/care/people/{subject}/notes",
                                   json={"kind": "visit", "text": str(text or "")})
        except ApiError as exc:
            ui.notify(f"记录失败 Refused ({exc.status}): {exc.detail}", type="negative")
            return
        await self.load()


@ui.page("/livelihood/care", title="独居老人关爱 · CityOS")
async def care_page() -> RedirectResponse | None:
    return await signed_in_view(CARE_ROLES, "独居老人关爱 Care for elderly people living alone",
                                "/livelihood/care", CareDesk)
