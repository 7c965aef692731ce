"""`/admin/users`: account administration (账号管理) for sys_admin and dept_admin.

The users the caller may see (`GET /auth/users`: a dept_admin sees its own departments) with their
role, department, TOTP enrolment and locked/disabled state, and per user: disable (with a reason) or
enable, unlock, reset TOTP, issue a TOTP enrolment code, change role/department. Below, the OAuth
clients (`GET /auth/clients`) with disable and "add client".

Every action is the REST API with the signed-in user's token (`Session.api`): the API decides who
may do what (a dept_admin manages its own departments' staff only; a tenant-wide or administrative
role needs a second person's approval) and audits it; buttons hidden by role are a courtesy only.
A refusal is shown with the API's own reason. One-time secrets (enrolment codes, client secrets)
are shown once in a dialog and not kept by the page.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from fastapi.responses import RedirectResponse
from nicegui import ui

from cityos.core import clock
from cityos.core.messages import local_time
from cityos.security.policy import ADMIN_ROLES, USER_ROLES
from cityos.web.auth import ROLE_LABELS, ApiError, Session, require_login
from cityos.web.shell import add_nav, frame, panel

ADMIN_PAGE_ROLES = frozenset({"sys_admin", "dept_admin"})
TIME_FORMAT = "%Y-%m-%d %H:%M"
OPAQUE = "background:#0d1a30 !important"  # a dialog's panel: the page behind must not show through

add_nav("账号管理 Accounts", "/admin/users", ADMIN_PAGE_ROLES, icon="manage_accounts")


def _role_label(role: str | None) -> str:
    return ROLE_LABELS.get(role or "", role or "—")


def _locked(user: dict[str, Any]) -> datetime | None:
    """When the account's lock ends, if it is locked now (stored times are UTC; a naive one is UTC)."""
    value = user.get("locked_until")
    if not value:
        return None
    try:
        until = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    if until.tzinfo is None:
        until = until.replace(tzinfo=UTC)
    return until if until > clock.now() else None


def _path(username: str) -> str:
    return "/auth/users/" + quote(username, safe="")


def refused(exc: ApiError, what: str) -> None:
    """The API's refusal, in its own words (a second person's approval is named as such)."""
    if exc.status == 403 and "approval" in exc.detail:
        ui.notify(f"{what}：需要第二人审批 Needs a second person's approval — {exc.detail}", type="warning",
                  multi_line=True, timeout=12000, classes="cityos-refusal cityos-needs-approval")
        return
    ui.notify(f"{what}：被拒绝 Refused ({exc.status}) — {exc.detail}", type="negative", multi_line=True,
              timeout=10000, classes="cityos-refusal")


def _state_badges(user: dict[str, Any]) -> None:
    if user.get("disabled") or user.get("disabled_at"):
        since = local_time(user.get("disabled_at"), TIME_FORMAT)
        ui.badge("已停用 Disabled", color="negative").classes("cityos-state-disabled") \
            .tooltip(f"停用于 Since {since}" if since else "已停用 Disabled")
    locked = _locked(user)
    if locked is not None:
        ui.badge(f"已锁定至 Locked until {local_time(locked, TIME_FORMAT)}", color="warning") \
            .classes("cityos-state-locked")
    elif user.get("failed_logins"):
        ui.badge(f"失败登录 {user['failed_logins']} failed sign-ins", color="grey-7")
    if not (user.get("disabled") or user.get("disabled_at")) and locked is None:
        ui.badge("正常 Active", color="positive").classes("cityos-state-active")


def _one_time_dialog(host: ui.element, title: str, label: str, value: str, note: str) -> None:
    """A secret shown once: the page keeps no copy, closing the dialog forgets it."""
    with host, ui.dialog().props("persistent") as dialog, \
            ui.card().classes("cityos-panel min-w-[460px] cityos-once").style(OPAQUE):
        ui.label(title).classes("text-lg text-slate-100")
        ui.label(label).classes("text-slate-300 text-sm")
        ui.label(value).classes("font-mono text-2xl text-cyan-200 select-all cityos-secret")
        ui.label(note).classes("text-xs text-amber-300")
        with ui.row().classes("w-full justify-end"):
            ui.button("复制 Copy", icon="content_copy",
                      on_click=lambda: ui.clipboard.write(value)).props("flat no-caps")
            ui.button("我已记下 Done", on_click=dialog.close).props("unelevated color=cyan-7 no-caps") \
                .classes("cityos-once-close")
    dialog.on("hide", dialog.delete)
    dialog.open()


class AccountAdmin:
    """The page's state: the signed-in session and the lists last read from the API."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.users: list[dict[str, Any]] = []
        self.clients: list[dict[str, Any]] = []
        self.me = str((session.user or {}).get("username") or "")
        # Dialogs live here, outside the refreshed lists and the dialog that opened them: an element
        # made in a handler goes into the clicked button's slot, which a refresh or a closed dialog deletes.
        self.host = ui.element("div")

    async def load(self) -> None:
        try:
            self.users = list(await self.session.api("GET", "/auth/users"))
        except ApiError as exc:
            self.users = []
            refused(exc, "读取用户 Listing users")
        self.clients = []
        if self.session.can("client.read"):
            try:
                self.clients = list(await self.session.api("GET", "/auth/clients"))
            except ApiError as exc:
                refused(exc, "读取客户端 Listing clients")

    async def reload(self) -> None:
        await self.load()
        self.show.refresh()

    async def call(self, what: str, method: str, path: str, **kw: Any) -> Any:
        """The API's answer, or None after showing its refusal."""
        try:
            answer = await self.session.api(method, path, **kw)
        except ApiError as exc:
            refused(exc, what)
            return None
        return answer if answer is not None else {}

    @ui.refreshable_method
    def show(self) -> None:
        self._users_panel()
        if self.session.can("client.read"):
            self._clients_panel()

    # ------------------------------------------------------------------ users

    def _users_panel(self) -> None:
        with panel(f"用户 Users（{len(self.users)}）", classes="w-full cityos-users"):
            with ui.row().classes("w-full no-wrap gap-2 text-xs text-slate-400 border-b border-slate-700 pb-1"):
                for text, width in (("用户名 User", "w-56"), ("角色 Role", "w-44"), ("部门 Department", "w-32"),
                                    ("TOTP", "w-28"), ("状态 State", "w-72"), ("操作 Actions", "flex-1")):
                    ui.label(text).classes(width)
            if not self.users:
                ui.label("无可管理的用户 No users you can manage").classes("text-slate-400")
            for user in self.users:
                self._user_row(user)

    def _user_row(self, user: dict[str, Any]) -> None:
        name = str(user["username"])
        disabled = bool(user.get("disabled") or user.get("disabled_at"))
        css_name = "".join(c if c.isalnum() or c in "-_" else "_" for c in name)
        dim = " opacity-60" if disabled else ""  # a disabled account reads as such at a glance
        with ui.row().classes(f"w-full no-wrap items-center gap-2 cityos-user-row cityos-user-{css_name}{dim}") \
                .props(f'data-username="{quote(name)}"'):
            with ui.column().classes("w-56 gap-0"):
                ui.label(name).classes("text-slate-100 font-mono cityos-username")
                extra = " · ".join(x for x in (user.get("display_name"), user.get("tenant") and
                                              f"租户 Tenant {user['tenant']}",
                                              user.get("external_iss") and "外部身份 External",
                                              name == self.me and "本人 You") if x)
                if extra:
                    ui.label(extra).classes("text-xs text-slate-400")
            ui.label(_role_label(user.get("role"))).classes("w-44 text-slate-200 cityos-role")
            ui.label(user.get("department") or "—").classes("w-32 text-slate-200 cityos-department")
            with ui.row().classes("w-28"):
                if user.get("totp_enabled"):
                    ui.badge("已绑定 Enrolled", color="positive").classes("cityos-totp-on")
                else:
                    ui.badge("未绑定 Not enrolled", color="grey-7").classes("cityos-totp-off")
            with ui.row().classes("w-72 gap-1 cityos-state"):
                _state_badges(user)
            with ui.row().classes("flex-1 gap-1"):
                self._user_actions(user, name, disabled)

    def _user_actions(self, user: dict[str, Any], name: str, disabled: bool) -> None:
        def button(label: str, icon: str, css: str, handler: Callable[[], Awaitable[None]],
                   colour: str = "cyan-3") -> None:
            ui.button(label, icon=icon, on_click=handler).props(f"flat dense no-caps color={colour}").classes(css)

        if self.session.can("user.disable") and name != self.me:
            if disabled:
                button("启用 Enable", "check_circle", "cityos-enable", lambda: self.enable(name), "green-4")
            else:
                button("停用 Disable", "block", "cityos-disable", lambda: self.disable_dialog(name), "red-4")
        if self.session.can("user.manage") and (_locked(user) is not None or user.get("failed_logins")):
            button("解锁 Unlock", "lock_open", "cityos-unlock", lambda: self.unlock(name), "amber-4")
        # Your own TOTP reset would end this session and lock you out until someone issues a code.
        if self.session.can("user.reset_totp") and user.get("totp_enabled") and name != self.me:
            button("重置TOTP Reset TOTP", "phonelink_erase", "cityos-reset-totp", lambda: self.reset_dialog(name))
        if self.session.can("user.enrol") and not user.get("totp_enabled"):
            button("绑定码 Enrolment code", "qr_code", "cityos-enrol", lambda: self.enrolment_code(name))
        if self.session.can("user.manage") and name != self.me:
            button("角色 Role", "badge", "cityos-change-role", lambda: self.role_dialog(user))

    async def disable_dialog(self, name: str) -> None:
        with self.host, ui.dialog() as dialog, \
                ui.card().classes("cityos-panel min-w-[440px] cityos-disable-dialog").style(OPAQUE):
            ui.label(f"停用账号 Disable {name}").classes("text-lg text-slate-100")
            ui.label("其会话立即失效，订阅暂停 Its sessions end at once and its subscriptions are suspended") \
                .classes("text-xs text-slate-400")
            reason = ui.textarea("原因（必填，记入审计）Reason (required, audited)") \
                .props("dark outlined autogrow maxlength=500").classes("w-full cityos-disable-reason")
            with ui.row().classes("w-full justify-end"):
                ui.button("取消 Cancel", on_click=dialog.close).props("flat no-caps")

                async def confirm() -> None:
                    text = (reason.value or "").strip()
                    if not text:
                        ui.notify("请填写原因 Please give a reason", type="warning")
                        return
                    if await self.call(f"停用 Disable {name}", "POST", f"{_path(name)}/disable",
                                       json={"reason": text}) is None:
                        return
                    dialog.close()
                    ui.notify(f"已停用 Disabled: {name}", type="positive")
                    await self.reload()

                ui.button("停用 Disable", on_click=confirm).props("unelevated color=negative no-caps") \
                    .classes("cityos-confirm")
        dialog.on("hide", dialog.delete)
        dialog.open()

    async def enable(self, name: str) -> None:
        if await self.call(f"启用 Enable {name}", "POST", f"{_path(name)}/enable") is not None:
            ui.notify(f"已启用 Enabled: {name}", type="positive")
            await self.reload()

    async def unlock(self, name: str) -> None:
        if await self.call(f"解锁 Unlock {name}", "POST", f"{_path(name)}/unlock") is not None:
            ui.notify(f"已解锁 Unlocked: {name}", type="positive")
            await self.reload()

    def _show_code(self, name: str, answer: dict[str, Any]) -> None:
        until = local_time(answer.get("expires_at"), TIME_FORMAT)
        _one_time_dialog(self.host, f"TOTP 绑定码 Enrolment code · {name}",
                         "请当面或经可靠渠道交给本人 Hand it to the user in person or over a trusted channel",
                         str(answer.get("enrolment_code") or ""),
                         f"仅显示一次，{until} 前有效 · Shown once; valid until {until}")

    async def reset_dialog(self, name: str) -> None:
        with self.host, ui.dialog() as dialog, \
                ui.card().classes("cityos-panel min-w-[440px] cityos-reset-dialog").style(OPAQUE):
            ui.label(f"重置 TOTP Reset TOTP · {name}").classes("text-lg text-slate-100")
            ui.label("旧的验证器失效、会话结束，并生成新的绑定码 The old authenticator stops working, the user's "
                     "sessions end and a new enrolment code is issued").classes("text-sm text-slate-300")
            with ui.row().classes("w-full justify-end"):
                ui.button("取消 Cancel", on_click=dialog.close).props("flat no-caps")

                async def confirm() -> None:
                    answer = await self.call(f"重置 TOTP Reset TOTP {name}", "POST", f"{_path(name)}/totp/reset")
                    if answer is None:
                        return
                    dialog.close()
                    self._show_code(name, answer)
                    await self.reload()

                ui.button("重置 Reset", on_click=confirm).props("unelevated color=warning no-caps") \
                    .classes("cityos-confirm")
        dialog.on("hide", dialog.delete)
        dialog.open()

    async def enrolment_code(self, name: str) -> None:
        answer = await self.call(f"绑定码 Enrolment code {name}", "POST", f"{_path(name)}/enrolment-code")
        if answer is not None:
            self._show_code(name, answer)

    def _departments(self) -> list[str]:
        known = {str(u["department"]) for u in self.users if u.get("department")}
        known |= set((self.session.user or {}).get("departments") or [])
        return sorted(known)

    async def role_dialog(self, user: dict[str, Any]) -> None:
        name = str(user["username"])
        roles = {r: _role_label(r) for r in USER_ROLES}
        with self.host, ui.dialog() as dialog, \
                ui.card().classes("cityos-panel min-w-[440px] cityos-role-dialog").style(OPAQUE):
            ui.label(f"角色与部门 Role and department · {name}").classes("text-lg text-slate-100")
            role = ui.select(roles, value=user.get("role"), label="角色 Role") \
                .props("dark outlined").classes("w-full cityos-role-select")
            department = ui.select(self._departments(), value=user.get("department"), with_input=True,
                                   new_value_mode="add-unique", clearable=True, label="部门 Department") \
                .props("dark outlined").classes("w-full cityos-department-select")
            ui.label("全市性或管理员角色需第二人审批 A tenant-wide or administrator role needs a second person's "
                     "approval").classes("text-xs text-slate-400")
            with ui.row().classes("w-full justify-end"):
                ui.button("取消 Cancel", on_click=dialog.close).props("flat no-caps")

                async def confirm() -> None:
                    body: dict[str, Any] = {"role": role.value, "department": department.value or None}
                    answer = await self.call(f"修改角色 Change role {name}", "PUT", f"{_path(name)}/role", json=body)
                    if answer is None:
                        return
                    dialog.close()
                    ui.notify(f"已修改 Changed: {name} → {_role_label(answer.get('role'))} "
                              f"{answer.get('department') or ''}", type="positive")
                    await self.reload()

                ui.button("保存 Save", on_click=confirm).props("unelevated color=cyan-7 no-caps") \
                    .classes("cityos-confirm")
        dialog.on("hide", dialog.delete)
        dialog.open()

    # ------------------------------------------------------------------ OAuth clients

    def _clients_panel(self) -> None:
        with panel(f"OAuth 客户端 Clients（{len(self.clients)}）", classes="w-full cityos-clients"):
            if self.session.can("client.manage"):
                ui.button("添加客户端 Add client", icon="add", on_click=self.client_dialog) \
                    .props("outline dense no-caps").classes("px-2 cityos-add-client")
            if not self.clients:
                ui.label("暂无客户端 No clients yet").classes("text-slate-400")
            for client in self.clients:
                client_id = str(client["client_id"])
                with ui.row().classes("w-full no-wrap items-center gap-2 cityos-client-row"):
                    ui.label(client_id).classes("w-56 font-mono text-slate-100")
                    ui.label(_role_label(client.get("role"))).classes("w-44 text-slate-200")
                    ui.label(client.get("department") or "—").classes("w-32 text-slate-200")
                    ui.label(f"创建 Created {local_time(client.get('created_at'), TIME_FORMAT)}") \
                        .classes("w-72 text-xs text-slate-400")
                    if client.get("disabled"):
                        ui.badge("已停用 Disabled", color="negative")
                    else:
                        ui.badge("正常 Active", color="positive")
                        if self.session.can("client.manage"):
                            ui.button("停用 Disable", icon="block",
                                      on_click=lambda c=client_id: self.disable_client(c)) \
                                .props("flat dense no-caps color=red-4").classes("cityos-client-disable")

    async def disable_client(self, client_id: str) -> None:
        path = "/auth/clients/" + quote(client_id, safe="") + "/disable"
        if await self.call(f"停用客户端 Disable client {client_id}", "POST", path) is not None:
            ui.notify(f"已停用 Disabled: {client_id}", type="positive")
            await self.reload()

    async def client_dialog(self) -> None:
        roles = {r: _role_label(r) for r in USER_ROLES if r not in ADMIN_ROLES}
        with self.host, ui.dialog() as dialog, \
                ui.card().classes("cityos-panel min-w-[440px] cityos-client-dialog").style(OPAQUE):
            ui.label("添加 OAuth 客户端 Add an OAuth client (client credentials)").classes("text-lg text-slate-100")
            client_id = ui.input("客户端 ID Client id（字母、数字、._-）").props("dark outlined maxlength=128") \
                .classes("w-full cityos-client-id")
            role = ui.select(roles, value="operator", label="角色 Role").props("dark outlined") \
                .classes("w-full cityos-client-role")
            department = ui.select(self._departments(), with_input=True, new_value_mode="add-unique",
                                   clearable=True, label="部门（可选）Department (optional)") \
                .props("dark outlined").classes("w-full cityos-client-department")
            with ui.row().classes("w-full justify-end"):
                ui.button("取消 Cancel", on_click=dialog.close).props("flat no-caps")

                async def confirm() -> None:
                    body = {"client_id": (client_id.value or "").strip(), "role": role.value,
                            "department": department.value or None}
                    answer = await self.call("添加客户端 Add client", "POST", "/auth/clients", json=body)
                    if answer is None:
                        return
                    dialog.close()
                    _one_time_dialog(self.host, f"客户端密钥 Client secret · {answer.get('client_id')}",
                                     "配置到调用方系统 Configure it in the calling system",
                                     str(answer.get("client_secret") or ""),
                                     "仅显示一次，平台只存摘要 Shown once; the platform keeps only a digest")
                    await self.reload()

                ui.button("添加 Add", on_click=confirm).props("unelevated color=cyan-7 no-caps") \
                    .classes("cityos-confirm")
        dialog.on("hide", dialog.delete)
        dialog.open()


@ui.page("/admin/users", title="账号管理 Accounts · CityOS")
async def admin_users_page() -> RedirectResponse | None:
    session = await require_login(ADMIN_PAGE_ROLES)
    if not isinstance(session, Session):
        return session
    with frame(session, "账号管理 Account administration", active="/admin/users"):
        page = AccountAdmin(session)
        await page.load()
        with ui.row().classes("items-center gap-2"):
            ui.label(f"{_role_label(session.role)} · 操作均经 API 授权并记入审计 Every action is authorised by "
                     "the API and audited").classes("text-slate-400 text-sm")
            ui.button("刷新 Refresh", icon="refresh", on_click=page.reload).props("flat dense no-caps") \
                .classes("text-cyan-300 cityos-refresh")
        page.show()
    return None
