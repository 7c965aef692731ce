"""`/data/sharing`: sharing between departments (数据共享) for department officials.

- 申请 Request: a dataset of another department, the fields (minimum necessary: each field beyond the
  public ones carries a justification, required for sensitive ones; confidential fields cannot be
  chosen), the purpose, the duration and the usage pledge (承诺书), signed by a click that the API
  records with the signer's identity, time and address;
- 我的申请 My requests and grants: status, granted fields, expiry; a granted request reads its rows
  (each read is audited with the grant id by the API);
- 待审批 To decide (the owning department): approve, narrow (untick fields) or reject; sensitive fields
  go through the two-person approval, whose state is shown; a department administrator of the owner
  gives the second approval here, then the owner activates the grant; a grant can be revoked.

Every action is the data API's, with the signed-in user's token: the page hides buttons the role lacks,
the API decides.
"""

from __future__ import annotations

from typing import Any

from fastapi.responses import RedirectResponse
from nicegui import ui

from cityos.data.sharing import MAX_DAYS, PLEDGE_TEXT
from cityos.security.policy import roles_allowed
from cityos.web.auth import ApiError, Session, require_login
from cityos.web.datapages.common import class_badge, department, status_badge, table, when
from cityos.web.shell import add_nav, frame, panel

SHARING_ROLES = roles_allowed("data.share.request") | roles_allowed("data.share.decide")
add_nav("数据共享 Sharing", "/data/sharing", SHARING_ROLES, icon="share")


class SharingPage:
    lists: ui.column  # the requests' column, redrawn after each action

    def __init__(self, session: Session) -> None:
        self.session = session
        user = session.user or {}
        self.department = str(user.get("department") or "")
        self.datasets: list[dict[str, Any]] = []
        self.catalogue: dict[str, dict[str, Any]] = {}
        self.requests: list[dict[str, Any]] = []

    async def load(self) -> None:
        found = await self.session.api("GET", "/api/data/datasets", params={"rows": 500})
        self.catalogue = {d["code"]: d for d in found["datasets"]}
        # What this department may ask for: other departments' datasets that are shared at all.
        self.datasets = [d for d in found["datasets"]
                         if d["provider"] != self.department and d["shareType"] != "none"]
        self.requests = (await self.session.api("GET", "/api/data/share"))["requests"]

    # ------------------------------------------------------------------ the request form

    def request_form(self, preselect: str) -> None:
        with panel("申请共享 Request a dataset", classes="w-[560px] shrink-0 cityos-share-form"):
            options = {d["code"]: f"{d['name']} · {department(d['provider'])}" for d in self.datasets}
            chosen = ui.select(options, label="数据集 Dataset", with_input=True,
                               value=preselect if preselect in options else None) \
                .props("dark outlined dense").classes("w-full cityos-share-dataset")
            fields_box = ui.column().classes("w-full gap-1")
            purpose = ui.textarea("用途 Purpose").props("dark outlined dense autogrow") \
                .classes("w-full cityos-share-purpose")
            days = ui.number("期限（天）Duration (days)", value=30, min=1, max=MAX_DAYS, precision=0) \
                .props("dark outlined dense").classes("w-48 cityos-share-days")
            with ui.card().classes("w-full bg-slate-900 p-2 gap-1"):
                ui.label("数据使用承诺书 Usage pledge").classes("text-sm text-cyan-200")
                ui.label(PLEDGE_TEXT).classes("text-xs text-slate-300 cityos-pledge-text")
                pledge = ui.checkbox("本人代表本部门签署上述承诺 I sign this pledge for my department") \
                    .classes("cityos-share-pledge")
            picks: dict[str, ui.checkbox] = {}
            reasons: dict[str, ui.input] = {}

            def show_fields() -> None:
                fields_box.clear()
                picks.clear()
                reasons.clear()
                ds = next((d for d in self.datasets if d["code"] == chosen.value), None)
                if ds is None:
                    return
                with fields_box:
                    ui.label("字段（最小必要）Fields (minimum necessary)").classes("text-sm text-slate-300")
                    for f in ds["fields"]:
                        with ui.row().classes("w-full items-center no-wrap gap-2 cityos-share-field"):
                            box = ui.checkbox(f["id"]).classes(f"cityos-pick-{f['id']}")
                            class_badge(f["dataClass"])
                            if f["dataClass"] == "confidential":
                                box.disable()
                                ui.label("不予共享 never shared").classes("text-xs text-slate-500")
                                continue
                            picks[f["id"]] = box
                            if f["dataClass"] != "public":
                                need = "必填 required" if f["dataClass"] == "sensitive" else "可选 optional"
                                reasons[f["id"]] = ui.input(f"理由 Why needed ({need})") \
                                    .props("dark dense").classes(f"flex-1 cityos-why-{f['id']}")

            chosen.on_value_change(show_fields)
            show_fields()

            async def submit() -> None:
                body = {"dataset": chosen.value, "fields": [k for k, box in picks.items() if box.value],
                        "purpose": (purpose.value or "").strip(), "days": int(days.value or 0),
                        "justification": {k: (reasons[k].value or "").strip() for k in reasons
                                          if picks[k].value and (reasons[k].value or "").strip()},
                        "pledge": {"accepted": bool(pledge.value)}}
                try:
                    made = await self.session.api("POST", "/api/data/share", json=body)
                except ApiError as exc:
                    ui.notify(f"申请未提交 Not submitted: {exc.detail}", type="negative", multi_line=True)
                    return
                ui.notify(f"已提交 Submitted: {made['id'][:8]}", type="positive")
                await self.refresh()

            ui.button("提交申请 Submit", icon="send", on_click=submit).props("unelevated no-caps") \
                .classes("cityos-share-submit")

    # ------------------------------------------------------------------ lists

    def mine(self) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["requesterDepartment"] == self.department]

    def received(self) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["owner"] == self.department]

    async def refresh(self) -> None:
        await self.load()
        self.lists.clear()
        with self.lists:
            await self.render_lists()

    async def render_lists(self) -> None:
        with panel("我的申请与授权 My requests and grants", classes="w-full cityos-my-requests"):
            mine = self.mine()
            if not mine:
                ui.label("暂无申请 No requests yet").classes("text-slate-500")
            for item in mine:
                self.request_row(item, owner_side=False)
        if self.session.can("data.share.decide"):
            with panel("待我部门审批 Requests to my department", classes="w-full cityos-received"):
                received = self.received()
                if not received:
                    ui.label("暂无 None").classes("text-slate-500")
                for item in received:
                    approval = await self.approval_of(item)
                    self.request_row(item, owner_side=True, approval=approval)

    async def approval_of(self, item: dict[str, Any]) -> dict[str, Any] | None:
        if not item.get("approvalId"):
            return None
        try:
            found: dict[str, Any] = await self.session.api("GET", f"/auth/approvals/{item['approvalId']}")
        except ApiError:
            return None
        return found

    def request_row(self, item: dict[str, Any], owner_side: bool, approval: dict[str, Any] | None = None) -> None:
        ds = self.catalogue.get(item["dataset"])
        name = ds["name"] if ds else item["dataset"]
        with ui.card().classes(f"w-full bg-slate-900 p-2 gap-1 cityos-request cityos-request-{item['id']}"):
            with ui.row().classes("w-full items-center gap-2"):
                ui.label(name).classes("text-slate-100 font-semibold")
                ui.label(item["dataset"]).classes("font-mono text-xs text-slate-400")
                status_badge(item["status"])
                ui.space()
                who = (f"申请方 From: {department(item['requesterDepartment'])} · {item['requester']}" if owner_side
                       else f"提供方 Owner: {department(item['owner'])}")
                ui.label(who).classes("text-xs text-slate-300")
            ui.label(f"用途 Purpose: {item['purpose']}").classes("text-sm text-slate-300")
            ui.label(f"申请字段 Requested: {', '.join(item['fields'])} · 期限 {item['days']} 天 days")\
                .classes("text-xs text-slate-300")
            for field, why in (item.get("justification") or {}).items():
                ui.label(f"理由 Why {field}: {why}").classes("text-xs text-slate-400")
            pledge = item.get("pledge") or {}
            ui.label(f"承诺书 Pledge: {pledge.get('signer')} ({department(pledge.get('department'))}) 签署于 signed "
                     f"{when(pledge.get('signedAt'))}").classes("text-xs text-slate-400 cityos-pledge-signed")
            if item.get("grantedFields") is not None:
                granted = "授权字段 Granted" if item["status"] in ("approved", "revoked") else "拟授权 To grant"
                ui.label(f"{granted}: {', '.join(item['grantedFields'])}"
                         + (f" · 至 until {when(item['expiresAt'])}" if item.get("expiresAt") else "")) \
                    .classes("text-xs text-green-300 cityos-granted")
            if item.get("decisionNote"):
                ui.label(f"审批意见 Note: {item['decisionNote']} ({item.get('decidedBy') or ''})") \
                    .classes("text-xs text-slate-400")
            if approval is not None:
                self.approval_state(approval)
            with ui.row().classes("gap-2"):
                if owner_side:
                    self.owner_buttons(item, approval)
                elif item["status"] == "approved":
                    ui.button("查看数据 Read rows", icon="table_view", on_click=lambda i=item: self.read_rows(i)) \
                        .props("outline dense no-caps").classes("cityos-read-rows")

    def approval_state(self, approval: dict[str, Any]) -> None:
        states = {"pending": "待第二人审批 waiting for the second person", "approved": "第二人已同意 approved",
                  "refused": "第二人已拒绝 refused", "executed": "已执行 executed", "failed": "失败 failed"}
        by = str(approval.get("decided_by") or "").split(":")[-1]
        ui.label(f"双人审批 Two-person approval: {states.get(approval['status'], approval['status'])}"
                 + (f" · {by} {when(approval.get('decided_at'))}" if by else "")) \
            .classes(f"text-xs text-amber-300 cityos-two-person cityos-two-person-{approval['status']}")

    def owner_buttons(self, item: dict[str, Any], approval: dict[str, Any] | None) -> None:
        status = item["status"]
        if status == "pending" and self.session.can("data.share.decide"):
            ui.button("审批 Decide", icon="gavel", on_click=lambda: self.decide(item)) \
                .props("unelevated dense no-caps").classes("cityos-decide")
        if status == "awaiting_second" and approval is not None:
            mine = approval.get("requested_by") == (self.session.user or {}).get("id")
            if approval["status"] == "pending" and self.session.can("approval.decide") and not mine:
                ui.button("第二人同意 Second approval", icon="how_to_reg",
                          on_click=lambda: self.second(item, "approve")) \
                    .props("unelevated dense no-caps color=warning").classes("cityos-second-approve")
                ui.button("拒绝 Refuse", on_click=lambda: self.second(item, "refuse")) \
                    .props("flat dense no-caps").classes("cityos-second-refuse")
            if approval["status"] == "approved":
                ui.button("启用授权 Activate grant", icon="play_arrow", on_click=lambda: self.act(item, "activate")) \
                    .props("unelevated dense no-caps").classes("cityos-activate")
        if status == "approved":
            ui.button("撤销 Revoke", icon="block", on_click=lambda: self.act(item, "revoke")) \
                .props("flat dense no-caps color=negative").classes("cityos-revoke")

    async def decide(self, item: dict[str, Any]) -> None:
        """Approve all or some of the requested fields (narrowing), or reject with a note."""
        ds = self.catalogue.get(item["dataset"])
        classes = {f["id"]: f["dataClass"] for f in (ds["fields"] if ds else [])}
        with ui.dialog() as dialog, panel("审批共享申请 Decide", classes="w-[560px] cityos-decide-dialog") \
                .style("background:#0d1a30 !important"):
            ui.label("授权字段（可缩减）Fields to grant (untick to narrow)").classes("text-sm text-slate-300")
            boxes: dict[str, ui.checkbox] = {}
            for field in item["fields"]:
                with ui.row().classes("items-center gap-2"):
                    boxes[field] = ui.checkbox(field, value=True).classes(f"cityos-grant-{field}")
                    class_badge(classes.get(field, "confidential"))
                    why = (item.get("justification") or {}).get(field)
                    if why:
                        ui.label(f"理由 Why: {why}").classes("text-xs text-slate-400")
            ui.label("敏感字段须另一位部门管理员同意 Sensitive fields need a second person's approval") \
                .classes("text-xs text-amber-300")
            note = ui.input("审批意见 Note").props("dark outlined dense").classes("w-full cityos-decide-note")

            async def send(verdict: str) -> None:
                body: dict[str, Any] = {"decision": verdict, "note": note.value or None}
                if verdict == "approve":
                    body["fields"] = [f for f, box in boxes.items() if box.value]
                try:
                    await self.session.api("POST", f"/api/data/share/{item['id']}/decision", json=body)
                except ApiError as exc:
                    ui.notify(f"未完成 Failed: {exc.detail}", type="negative", multi_line=True)
                    return
                dialog.close()
                ui.notify("已处理 Done", type="positive")
                await self.refresh()

            with ui.row().classes("gap-2"):
                ui.button("同意 Approve", icon="check", on_click=lambda: send("approve")) \
                    .props("unelevated no-caps color=positive").classes("cityos-approve")
                ui.button("驳回 Reject", icon="close", on_click=lambda: send("reject")) \
                    .props("unelevated no-caps color=negative").classes("cityos-reject")
                ui.button("取消 Cancel", on_click=dialog.close).props("flat no-caps")
        dialog.on("hide", dialog.delete)
        dialog.open()

    async def second(self, item: dict[str, Any], verb: str) -> None:
        try:
            await self.session.api("POST", f"/auth/approvals/{item['approvalId']}/{verb}")
        except ApiError as exc:
            ui.notify(f"未完成 Failed: {exc.detail}", type="negative", multi_line=True)
            return
        ui.notify("已记录 Recorded", type="positive")
        await self.refresh()

    async def act(self, item: dict[str, Any], verb: str) -> None:
        try:
            await self.session.api("POST", f"/api/data/share/{item['id']}/{verb}")
        except ApiError as exc:
            ui.notify(f"未完成 Failed: {exc.detail}", type="negative", multi_line=True)
            return
        ui.notify("已完成 Done", type="positive")
        await self.refresh()

    async def read_rows(self, item: dict[str, Any]) -> None:
        try:
            found = await self.session.api("GET", f"/api/data/share/{item['id']}/rows", params={"limit": 50})
        except ApiError as exc:
            ui.notify(f"无法读取 Cannot read: {exc.detail}", type="negative", multi_line=True)
            return
        with ui.dialog() as dialog, panel(f"共享数据 Shared rows · {found['total']} 行 rows",
                                          classes="w-[900px] max-w-[95vw] cityos-grant-rows") \
                .style("background:#0d1a30 !important"):
            ui.label(f"授权 Grant {item['id'][:8]} · 每次读取均记入审计 every read is audited") \
                .classes("text-xs text-slate-400")
            table(found["fields"], found["records"])
            ui.button("关闭 Close", on_click=dialog.close).props("flat")
        dialog.on("hide", dialog.delete)
        dialog.open()


@ui.page("/data/sharing", title="数据共享 Sharing · CityOS")
async def sharing_page(dataset: str = "") -> RedirectResponse | None:
    session = await require_login(SHARING_ROLES)
    if not isinstance(session, Session):
        return session
    with frame(session, "数据共享 Data sharing", active="/data/sharing"):
        page = SharingPage(session)
        try:
            await page.load()
        except ApiError as exc:
            ui.label(f"无法读取目录 Cannot read the catalogue: {exc.detail}").classes("text-amber-300")
            return None
        with ui.row().classes("w-full gap-3 no-wrap items-start"):
            if session.can("data.share.request"):
                page.request_form(dataset[:128])
            page.lists = ui.column().classes("flex-1 gap-3 min-w-0")
            with page.lists:
                await page.render_lists()
    return None
