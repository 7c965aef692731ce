"""Shared pieces of the portal pages: look, bilingual labels, the elderly-friendly mode, API calls."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from nicegui import app, ui

from cityos.core import messages

PORTAL_CSS = """
:root { --gov-red: #b71c1c; --gov-navy: #0d3b66; --gov-bg: #f4f6f9; }
body, .q-page-container { background: var(--gov-bg) !important; }
.material .q-uploader { width: 100%; max-width: 30rem; max-height: 9rem; box-shadow: none; }
.material .q-uploader__header { background: #e8eef5; color: #0d3b66; }
.material .q-uploader__list { min-height: 0; padding: 4px 8px; }
.gov-banner { background: linear-gradient(90deg, #0d3b66 0%, #14507f 70%, #b71c1c 140%); color: #fff; }
.gov-banner .brand-zh { font-size: 1.35rem; font-weight: 700; letter-spacing: .08em; }
.gov-banner .brand-en { font-size: .8rem; opacity: .85; letter-spacing: .04em; }
.gov-card { background: #fff; border-radius: 8px; border: 1px solid #dde3ea; box-shadow: 0 1px 2px rgba(0,0,0,.04); }
.gov-title { color: var(--gov-navy); font-weight: 700; }
.section-title { color: var(--gov-navy); font-weight: 700; font-size: 1.1rem; border-left: 4px solid var(--gov-red);
                 padding-left: 8px; }
.badge-green { background: #2e7d32 !important; color: #fff !important; }
.badge-yellow { background: #f9a825 !important; color: #111 !important; }
.badge-red { background: #c62828 !important; color: #fff !important; }
.verified-badge { background: #1b5e20; color: #fff; border-radius: 4px; padding: 2px 8px; font-weight: 700; }
.unverified-badge { background: #c62828; color: #fff; border-radius: 4px; padding: 2px 8px; font-weight: 700; }
.kv-key { color: #5f6b7a; min-width: 9rem; }
.gov-footer { color: #6b7785; font-size: .8rem; }
/* 适老化 elderly-friendly: twice the type size, high contrast, big targets */
body.elderly { background: #fff; }
body.elderly .portal-main { font-size: 200%; line-height: 1.5; color: #000; }
body.elderly .portal-main .q-field, body.elderly .portal-main .q-field__native,
body.elderly .portal-main .q-field__label, body.elderly .portal-main .q-uploader,
body.elderly .portal-main .q-btn, body.elderly .portal-main .q-item, body.elderly .portal-main .q-checkbox__label,
body.elderly .portal-main .text-caption, body.elderly .portal-main .text-sm, body.elderly .portal-main .q-chip,
body.elderly .portal-main .q-tab__label, body.elderly .portal-main .q-table { font-size: 1em !important; }
body.elderly .portal-main .text-grey-8, body.elderly .portal-main .kv-key { color: #000 !important; }
body.elderly .portal-main .gov-card { border: 3px solid #000; }
body.elderly .portal-main .q-btn { min-height: 3em; font-weight: 700; }
body.elderly .portal-main .q-field--outlined .q-field__control:before { border: 2px solid #000; }
body.elderly .portal-main .q-field__control { min-height: 2.6em; }
body.elderly .gov-banner { background: #000; }
body.elderly .cityos-nav .q-btn { font-size: 1.2rem; }
/* a phone (390 px): one column, wrapping rows, nothing wider than the screen */
@media (max-width: 640px) {
  .portal-main { max-width: 100vw; }
  .portal-main .q-card, .portal-main .gov-card { max-width: 100%; }
  .portal-main .row, .portal-main .no-wrap { flex-wrap: wrap !important; }
  .portal-main .row > *, .portal-main .column > * { min-width: 0 !important; max-width: 100%; }
  .portal-main [style*="min-width"] { min-width: 0 !important; }
  .portal-main .grid { grid-template-columns: minmax(0, 1fr) !important; }
  .portal-main .q-field, .portal-main .q-uploader { width: 100% !important; max-width: 100% !important; }
  .portal-main .q-btn { max-width: 100%; white-space: normal; }
  .portal-main .q-badge { white-space: normal; max-width: 100%; height: auto; }
  .portal-main, .portal-main * { overflow-wrap: anywhere; }
  .gov-banner { padding: 8px 12px; }
  body.elderly .portal-main { font-size: 150%; }
}
"""

STATUS_LABELS: dict[str, tuple[str, str]] = {
    # status → (label, Quasar colour)
    "draft": ("草稿 Draft", "grey"),
    "submitted": ("已提交 Submitted", "blue"),
    "received": ("已受理 Accepted", "blue"),
    "accepted": ("已受理 Accepted", "blue"),
    "in_review": ("审批中 In review", "indigo"),
    "in_progress": ("审批中 In review", "indigo"),
    "processing": ("审批中 In review", "indigo"),
    "pending": ("待办 Pending", "indigo"),
    "supplement_requested": ("待补正 Supplement needed", "orange"),
    "supplement": ("待补正 Supplement needed", "orange"),
    "awaiting_supplement": ("待补正 Supplement needed", "orange"),
    "approved": ("已办结 Approved", "green"),
    "completed": ("已办结 Completed", "green"),
    "done": ("已办结 Completed", "green"),
    "issued": ("已出证 Licence issued", "green"),
    "rejected": ("不予许可 Rejected", "red"),
    "partially_rejected": ("部分不予许可 Partly rejected", "deep-orange"),
    "withdrawn": ("已撤回 Withdrawn", "grey"),
}

DONE_STATES = {"approved", "completed", "done", "issued"}

DEADLINE_COLOURS = {"green": "badge-green", "yellow": "badge-yellow", "red": "badge-red"}


def status_label(status: str | None) -> tuple[str, str]:
    if not status:
        return ("—", "grey")
    return STATUS_LABELS.get(status, (status, "blue-grey"))


def status_chip(status: str | None) -> ui.chip:
    text, colour = status_label(status)
    return ui.chip(text, color=colour, text_color="white").props("dense square").classes(f"status-{status}")


def when(value: Any) -> str:
    """An ISO timestamp as 'YYYY-MM-DD HH:MM CST' in the city's zone, CITYOS_TIMEZONE ('' when missing)."""
    return messages.local_time(value, "%Y-%m-%d %H:%M")


FINISHED_STATES = DONE_STATES | {"rejected", "partially_rejected", "withdrawn"}


def deadline_badge(deadline: dict[str, Any] | None, *, compact: bool = False, status: str | None = None) -> None:
    """Time used / left of a statutory deadline, coloured green / yellow / red; for a finished case
    (`status`) the time it took, never time "left"."""
    if not isinstance(deadline, dict) or not deadline:
        ui.label("—").classes("text-grey-7")
        return
    state = str(deadline.get("state") or "green")
    left, used, limit = deadline.get("leftDays"), deadline.get("usedDays"), deadline.get("limitDays")
    if status in FINISHED_STATES:
        text = (f"已办结，用时 {used} 个工作日 done in {used} working days" if used is not None
                else "已办结 Finished")
        if not compact and limit is not None:
            text += f"（时限 {limit} 个工作日 limit {limit}）"
        ui.label(text).classes("deadline deadline-finished rounded px-2 py-1 text-sm font-medium "
                               "bg-grey-3 text-grey-9")
        return
    paused = bool(deadline.get("paused"))
    if compact:
        text = f"剩 {left} 个工作日 {left} d left" if left is not None else state
    else:
        text = (f"已用 {used} / 时限 {limit} 个工作日，剩余 {left} 天 · used {used} of {limit} working days, "
                f"{left} left")
    if paused:
        text += " ⏸ 暂停计时 paused"
    ui.label(text).classes(f"{DEADLINE_COLOURS.get(state, 'badge-green')} deadline deadline-{state} "
                           "rounded px-2 py-1 text-sm font-medium")


def first(doc: Any, *keys: str, default: Any = None) -> Any:
    """The first present key of `doc` (API spellings differ between camelCase and snake_case)."""
    if not isinstance(doc, dict):
        return default
    for key in keys:
        if key in doc and doc[key] is not None:
            return doc[key]
    return default


def items_of(body: Any, *keys: str) -> list[Any]:
    """A list answer, bare or wrapped in {'items': [...]} (or one of `keys`)."""
    if isinstance(body, list):
        return body
    if isinstance(body, dict):
        for key in (*keys, "items", "results", "data"):
            if isinstance(body.get(key), list):
                return list(body[key])
    return []


def problem_text(body: Any, status: int) -> str:
    if isinstance(body, dict):
        return str(body.get("detail") or body.get("title") or body.get("error_description") or f"HTTP {status}")
    return f"HTTP {status}"


# ---------------------------------------------------------------------------------- elderly mode


def _account_key() -> str | None:
    user = app.storage.user.get("user")
    ident = user.get("id") or user.get("username") if isinstance(user, dict) else None
    return f"portal.elderly.{ident}" if ident else None


def elderly() -> bool:
    """Whether the signed-in person chose the elderly-friendly mode (kept per account, across sign-ins)."""
    try:
        key = _account_key()
        if key is not None and key in app.storage.general:
            return bool(app.storage.general[key])
        return bool(app.storage.user.get("elderly", False))
    except (RuntimeError, AssertionError):
        return False


def set_elderly(on: bool) -> None:
    app.storage.user["elderly"] = on
    key = _account_key()
    if key is not None:
        app.storage.general[key] = on
    if on:
        ui.query("body").classes(add="elderly")
    else:
        ui.query("body").classes(remove="elderly")


def toggle_elderly(on: bool) -> None:
    set_elderly(on)
    ui.navigate.reload()  # the forms redraw one question per step


# ---------------------------------------------------------------------------------- API


@dataclass
class Reply:
    status: int
    body: Any

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


async def call(method: str, path: str, **kwargs: Any) -> Reply:
    """The CityOS REST API in-process as the signed-in user (`web.auth.Session`); never raises on a status."""
    from cityos.web.auth import Session

    response = await Session.current().raw(method, path, **kwargs)
    body: Any = None
    if response.content:
        kind = response.headers.get("content-type", "")
        if "json" in kind:
            try:
                body = response.json()
            except ValueError:
                body = response.text
        elif kind.startswith(("text/", "image/svg")):
            body = response.text
        else:
            body = response.content
    return Reply(response.status_code, body)


async def get(path: str, **kwargs: Any) -> Any:
    """GET → body, or None after showing the error."""
    reply = await call("GET", path, **kwargs)
    if reply.ok:
        return reply.body
    ui.notify(f"{problem_text(reply.body, reply.status)}", type="negative")
    return None


async def login(roles: tuple[str, ...] | frozenset[str] | None = None) -> Any:
    """The signed-in `Session`, or the redirect (to the login page) the page must return."""
    from cityos.web import auth

    return await auth.require_login(roles)


# ---------------------------------------------------------------------------------- frame

CITIZEN_ROLES = frozenset({"citizen", "enterprise"})
STAFF_ROLES = frozenset({"official", "dept_admin", "sys_admin"})
SUPERVISION_ROLES = frozenset({"dept_admin", "auditor", "sys_admin"})


def register_nav() -> None:
    from cityos.web.shell import add_nav

    add_nav("办事 Services", "/portal/services", CITIZEN_ROLES, icon="account_balance")
    add_nav("办件 Cases", "/portal/applications", CITIZEN_ROLES, icon="assignment")
    add_nav("证照 Wallet", "/portal/wallet", CITIZEN_ROLES, icon="badge")
    add_nav("随手拍 Report", "/portal/reports", CITIZEN_ROLES, icon="photo_camera")
    add_nav("停车 Parking", "/portal/parking", CITIZEN_ROLES, icon="local_parking")
    add_nav("审批 Workbench", "/workbench", STAFF_ROLES, icon="inbox")
    add_nav("监督 Oversight", "/supervision", SUPERVISION_ROLES, icon="insights")
    add_nav("核验 Verify", "/verify", icon="qr_code_scanner")


@contextmanager
def frame(session: Any, title: str, *, active: str = "", citizen: bool = True) -> Iterator[None]:
    """The shared shell (light theme) with the portal's banner and, for citizens, the elderly switch."""
    from cityos.web.shell import frame as shell_frame

    with shell_frame(session, title, active=active, dark=False):
        ui.add_css(PORTAL_CSS)
        if citizen and elderly():
            ui.query("body").classes(add="elderly")
        with ui.column().classes("portal-main w-full max-w-6xl mx-auto gap-4"):
            with ui.row().classes("gov-banner w-full items-center rounded-lg px-5 py-3 gap-4"):
                with ui.column().classes("gap-0"):
                    ui.label("一网通办").classes("brand-zh")
                    ui.label("One-stop government services").classes("brand-en")
                ui.space()
                if citizen and session is not None and session.user is not None:
                    ui.switch("长辈模式 Elderly mode", value=elderly(),
                              on_change=lambda e: toggle_elderly(bool(e.value))) \
                        .props("color=amber keep-color").classes("t-elderly text-white text-base")
            yield
            with ui.row().classes("w-full justify-center gov-footer py-4"):
                ui.label("CityOS 一网通办 · 政务服务 Government services · 全程网办 online, zero trips")
