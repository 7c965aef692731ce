"""Sign-in for the web UI, and the one way pages call the platform.

- `/login?next=…`: user name, password and (for staff roles) a TOTP code, sent to the real OAuth
  token endpoint (`POST /auth/token`, password grant) in-process. The tokens are kept in the
  user's server-side NiceGUI storage (`app.storage.user`, keyed by a signed session cookie; the
  files live in the data directory, not the browser).
- `/logout`: revokes the refresh token's session family (`POST /auth/revoke`) and forgets it.
- `Session.api(method, path, …)`: the app's own REST API via httpx's ASGI transport, with the
  user's bearer token and the browser's address, so the UI gets exactly the checks, scoping and
  audit an integrator gets. An expired access token is refreshed once with the refresh token.
- `require_login(roles)`: the signed-in user (from `/auth/me`), or a redirect to the login page.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, MutableMapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

import httpx
from fastapi import FastAPI
from fastapi.responses import RedirectResponse
from nicegui import app as ui_app
from nicegui import context, ui

from cityos.security.policy import MATRIX, TOTP_ROLES, Scope

_INTERNAL = "http://cityos.internal"
_app: FastAPI | None = None

ROLE_LABELS: dict[str, str] = {
    "operator": "值班员 Operator", "official": "部门人员 Official", "dept_admin": "部门管理员 Dept admin",
    "auditor": "审计员 Auditor", "sys_admin": "系统管理员 Sys admin", "citizen": "市民 Citizen",
    "enterprise": "企业 Enterprise",
}


def bind_app(app: FastAPI) -> None:
    """The FastAPI app the UI calls in-process (set once by `cityos.web.mount`)."""
    global _app
    _app = app


def fastapi_app() -> FastAPI:
    if _app is None:
        raise RuntimeError("the web UI is not mounted on an app")
    return _app


def can(role: str | None, action: str) -> bool:
    """Whether `role` may do `action` at all (the matrix in `cityos.security.policy`); for showing buttons.

    The API decides for real: a hidden button is a courtesy, not the access check.
    """
    return MATRIX.get(role or "", {}).get(action, Scope.NONE) not in (Scope.NONE,)


def safe_next(target: str | None, default: str = "/cockpit") -> str:
    """Only local paths (no scheme, no host, no `//`): the login page is no open redirect."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return default
    parts = urlsplit(target)
    if parts.scheme or parts.netloc:
        return default
    return target


class ApiError(Exception):
    """A non-2xx answer, with the ProblemDetails `detail` to show."""

    def __init__(self, response: httpx.Response) -> None:
        self.status = response.status_code
        try:
            body = response.json()
        except ValueError:
            body = {}
        self.body: dict[str, Any] = body if isinstance(body, dict) else {}
        self.detail = str(self.body.get("error_description") or self.body.get("detail") or self.body.get("title")
                          or response.reason_phrase or f"HTTP {self.status}")
        super().__init__(f"{self.status}: {self.detail}")


@dataclass
class Session:
    """One browser session: its server-side storage and address."""

    storage: MutableMapping[str, Any]
    ip: str = "127.0.0.1"

    @classmethod
    def current(cls) -> Session:
        """The session of the page being built or the handler running."""
        request = context.client.request
        ip = request.client.host if request is not None and request.client else "127.0.0.1"
        return cls(ui_app.storage.user, ip)

    @property
    def token(self) -> str | None:
        value = self.storage.get("access_token")
        return str(value) if value else None

    @property
    def user(self) -> dict[str, Any] | None:
        value = self.storage.get("user")
        return value if isinstance(value, dict) else None

    @property
    def role(self) -> str | None:
        user = self.user
        return str(user.get("role")) if user else None

    def can(self, action: str) -> bool:
        return can(self.role, action)

    async def _send(self, method: str, path: str, token: str | None, **kw: Any) -> httpx.Response:
        transport = httpx.ASGITransport(app=fastapi_app(), client=(self.ip, 0))
        headers = dict(kw.pop("headers", None) or {})
        if token:
            headers["Authorization"] = f"Bearer {token}"
        async with httpx.AsyncClient(transport=transport, base_url=_INTERNAL, timeout=30.0) as http:
            return await http.request(method, path, headers=headers, **kw)

    async def raw(self, method: str, path: str, **kw: Any) -> httpx.Response:
        """The API's answer as is (after one refresh on an expired token)."""
        response = await self._send(method, path, self.token, **kw)
        if response.status_code == 401 and self.storage.get("refresh_token") and await self.refresh():
            response = await self._send(method, path, self.token, **kw)
        return response

    async def api(self, method: str, path: str, **kw: Any) -> Any:
        """The decoded JSON answer (None for an empty body); `ApiError` on a non-2xx status."""
        response = await self.raw(method, path, **kw)
        if response.status_code >= 400:
            raise ApiError(response)
        if not response.content:
            return None
        return response.json()

    async def refresh(self) -> bool:
        refresh = self.storage.get("refresh_token")
        if not refresh:
            return False
        response = await self._send("POST", "/auth/token", None,
                                    data={"grant_type": "refresh_token", "refresh_token": refresh})
        if response.status_code != 200:
            self.forget()
            return False
        self._keep(response.json())
        return True

    def _keep(self, tokens: dict[str, Any]) -> None:
        self.storage["access_token"] = tokens["access_token"]
        if tokens.get("refresh_token"):
            self.storage["refresh_token"] = tokens["refresh_token"]
        if tokens.get("device_token"):
            # Kept across sign-outs: this browser is a known device that passes lockouts (OWASP device cookie).
            self.storage["device_token"] = tokens["device_token"]
        self.storage["expires_at"] = time.time() + float(tokens.get("expires_in") or 0)

    def forget(self) -> None:
        for key in ("access_token", "refresh_token", "expires_at", "user"):
            self.storage.pop(key, None)

    async def login(self, username: str, password: str, totp: str | None) -> None:
        """Password grant; raises `ApiError` (with the OAuth `error` in `.body`) when refused."""
        form = {"grant_type": "password", "username": username, "password": password}
        if totp:
            form["totp"] = totp
        if self.storage.get("device_token"):
            form["device_token"] = self.storage["device_token"]
        response = await self._send("POST", "/auth/token", None, data=form)
        if response.status_code != 200:
            raise ApiError(response)
        self._keep(response.json())
        self.storage["user"] = await self.api("GET", "/auth/me")

    async def logout(self) -> None:
        refresh = self.storage.get("refresh_token")
        if refresh:
            await self._send("POST", "/auth/revoke", self.token, data={"token": refresh})
        self.forget()

    async def me(self) -> dict[str, Any] | None:
        """The signed-in principal (`/auth/me`), or None when there is no usable session."""
        if not self.token:
            return None
        response = await self.raw("GET", "/auth/me")
        if response.status_code != 200:
            self.forget()
            return None
        user: dict[str, Any] = response.json()
        self.storage["user"] = user
        return user


def current_token() -> str | None:
    return Session.current().token


async def current_user() -> dict[str, Any] | None:
    return await Session.current().me()


async def api(method: str, path: str, **kw: Any) -> Any:
    """The app's REST API in-process with the current user's token (see `Session.api`)."""
    return await Session.current().api(method, path, **kw)


def login_url(next_path: str) -> str:
    return f"/login?next={quote(safe_next(next_path), safe='/')}"


async def require_login(roles: Iterable[str] | None = None) -> Session | RedirectResponse:
    """The session of a signed-in user with one of `roles`, else a redirect (login, or the start page)."""
    session = Session.current()
    request = context.client.request
    here = request.url.path + (f"?{request.url.query}" if request.url.query else "") if request else "/"
    user = await session.me()
    if user is None:
        return RedirectResponse(login_url(here), status_code=303)
    if roles is not None and user.get("role") not in set(roles):
        return RedirectResponse("/?denied=" + quote(here, safe="/"), status_code=303)
    return session


@ui.page("/login", title="登录 Sign in · CityOS")
async def login_page(next: str = "/cockpit") -> None:
    from cityos.web.shell import apply_theme

    apply_theme(dark=True)
    target = safe_next(next)
    session = Session.current()
    with ui.column().classes("absolute-center items-center gap-6 w-full max-w-md"):
        with ui.column().classes("items-center gap-0"):
            ui.label("CityOS").classes("text-5xl font-bold text-cyan-300 tracking-wide")
            ui.label("城市运行管理平台 · City operations platform").classes("text-lg text-slate-300")
        with ui.card().classes("w-full cityos-panel p-6 gap-3"):
            ui.label("登录 Sign in").classes("text-xl text-slate-100")
            username = ui.input("用户名 User name").props("dark outlined autofocus").classes("w-full login-username")
            password = ui.input("密码 Password", password=True, password_toggle_button=True) \
                .props("dark outlined").classes("w-full login-password")
            totp = ui.input("动态口令 TOTP code (staff)").props("dark outlined inputmode=numeric maxlength=10") \
                .classes("w-full login-totp")
            error = ui.label("").classes("text-red-400 login-error")
            error.set_visibility(False)

            async def submit() -> None:
                error.set_visibility(False)
                button.props("loading")
                try:
                    await session.login((username.value or "").strip(), password.value or "",
                                        (totp.value or "").strip() or None)
                except ApiError as exc:
                    code = exc.body.get("error")
                    if code == "mfa_required":
                        error.text = "请输入动态口令 Enter your TOTP code"
                    elif code == "mfa_enrollment_required":
                        error.text = ("该角色需先用管理员发放的绑定码绑定动态口令 TOTP enrolment needed: "
                                      "POST /auth/totp/enroll with the enrolment code from an administrator")
                    else:
                        error.text = f"登录失败 Sign-in refused: {exc.detail}"
                    error.set_visibility(True)
                    password.value = "" if code not in ("mfa_required",) else password.value
                    return
                finally:
                    button.props(remove="loading")
                user = session.user or {}
                role = str(user.get("role", ""))
                destination = target
                if destination.startswith("/cockpit") and role not in COCKPIT_ROLES:
                    destination = "/"
                ui.navigate.to(destination)

            for field in (username, password, totp):
                field.on("keydown.enter", submit)
            button = ui.button("登录 Sign in", on_click=submit).props("unelevated color=cyan-7 size=lg") \
                .classes("w-full login-submit")
            ui.label(f"工作人员需动态口令 Staff roles ({', '.join(sorted(TOTP_ROLES))}) need a TOTP code.") \
                .classes("text-xs text-slate-400")
            with ui.row().classes("gap-4 text-sm"):
                ui.link("市民/企业注册 Register", "/portal/register").classes("text-cyan-300 t-register-link")
                ui.link("忘记密码 Forgot password", "/portal/reset-password").classes("text-cyan-300")


@ui.page("/logout", title="CityOS")
async def logout_page() -> RedirectResponse:
    await Session.current().logout()
    return RedirectResponse("/login", status_code=303)


# Who may open the cockpit (operations staff; the APIs scope what each of them sees).
COCKPIT_ROLES = frozenset({"operator", "official", "dept_admin", "auditor", "sys_admin"})
