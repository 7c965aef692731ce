"""The page frame shared by the cockpit and the portal: theme, header, navigation, user menu.

    with frame(session, "城市运行一张图 City operations", active="/cockpit"):
        ...page content...

Sections register their navigation entries with `add_nav` (the cockpit does it on import; the
portal does the same for its pages); an entry shows only to the roles it names.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

from fastapi.responses import RedirectResponse
from nicegui import ui

from cityos.web.auth import ROLE_LABELS, Session, require_login

_CSS = """
:root { --cityos-bg: #060d1b; --cityos-panel: #0d1a30; --cityos-line: #1d3557; --cityos-accent: #22d3ee; }
body { font-family: Roboto, "PingFang SC", "Microsoft YaHei", "Noto Sans CJK SC", "WenQuanYi Micro Hei",
                    "Source Han Sans SC", sans-serif; }
body.body--dark, .q-page-container { background: radial-gradient(ellipse at top, #0c1d38 0%, #060d1b 60%); }
.cityos-panel { background: rgba(13, 26, 48, 0.92) !important; border: 1px solid var(--cityos-line);
                border-radius: 6px; box-shadow: 0 0 18px rgba(34, 211, 238, 0.06) inset; }
.cityos-panel-title { color: #7dd3fc; font-weight: 600; letter-spacing: .04em; font-size: 0.95rem; }
.cityos-header { background: linear-gradient(90deg, #07152b 0%, #0b2447 50%, #07152b 100%) !important;
                 border-bottom: 1px solid #1e4976; }
.cityos-nav .q-btn { color: #cbd5e1; }
.cityos-nav .cityos-nav-active { color: #22d3ee; border-bottom: 2px solid #22d3ee; border-radius: 0; }
.cityos-kpi-value { font-size: 2.2rem; font-weight: 700; line-height: 1.1; font-variant-numeric: tabular-nums; }
.cityos-kpi-label { color: #94a3b8; font-size: .85rem; }
.leaflet-container { background: #081426 !important; }
.leaflet-tooltip.cityos-district-label { background: rgba(6, 13, 27, .55); border: none; box-shadow: none;
                                         color: #e2e8f0; font-weight: 600; font-size: 13px; padding: 1px 6px; }
.leaflet-tooltip.cityos-district-label::before { display: none; }
.leaflet-tooltip { background: #0d1a30; color: #e2e8f0; border: 1px solid #1d3557; }
.cityos-incident-icon { background: transparent; border: none; }
.cityos-incident-pin { width: 26px; height: 26px; border-radius: 50% 50% 50% 0; transform: rotate(-45deg);
                       border: 2px solid #fff; box-shadow: 0 0 10px rgba(248, 113, 113, .9); }
.cityos-incident-pin span { display: block; transform: rotate(45deg); text-align: center; color: #fff;
                            font-weight: 800; line-height: 22px; font-size: 14px; }
path.cityos-alarm { animation: cityos-pulse 1.4s ease-in-out infinite; }
@keyframes cityos-pulse { 0%, 100% { stroke-opacity: 1; } 50% { stroke-opacity: .25; } }
.q-table__card { background: transparent !important; }
.q-timeline__subtitle { opacity: .8; }
/* below 1024 px the navigation folds into the menu button; on a phone the header keeps one short line */
.cityos-header { flex-wrap: nowrap; }
.cityos-header .cityos-brand-name, .cityos-header .cityos-brand-sub, .cityos-header .cityos-page-title,
.cityos-header .cityos-clock, .cityos-header .cityos-user-name { white-space: nowrap; }
.cityos-header > a, .cityos-header > .cityos-clock, .cityos-header > .cityos-user { flex-shrink: 0; }
.cityos-nav { flex: 0 1 auto; min-width: 0; flex-wrap: wrap; justify-content: flex-end; }
@media (max-width: 1023.98px) { .cityos-header .cityos-clock { display: none; } }
@media (max-width: 599.98px) {
  .cityos-header { padding: 4px 8px !important; gap: 4px !important; }
  .cityos-header .cityos-page-title, .cityos-header .cityos-brand-sub, .cityos-header .cityos-user-name {
    display: none; }
  .cityos-header .cityos-brand-name { font-size: 1rem; white-space: nowrap; }
}
"""


@dataclass(frozen=True)
class NavItem:
    label: str
    path: str
    roles: frozenset[str] | None = None  # None: everyone signed in
    icon: str | None = None


NAV: list[NavItem] = []


def add_nav(label: str, path: str, roles: Iterable[str] | None = None, icon: str | None = None) -> None:
    """A header navigation entry (once per path)."""
    if any(item.path == path for item in NAV):
        return
    NAV.append(NavItem(label, path, frozenset(roles) if roles is not None else None, icon))


def apply_theme(dark: bool = True) -> None:
    """Colours and styles for the current page."""
    ui.dark_mode(dark)
    ui.colors(primary="#0891b2", secondary="#1e3a5f", accent="#22d3ee", positive="#16a34a",
              negative="#dc2626", warning="#f59e0b", info="#38bdf8")
    ui.add_css(_CSS)


@contextmanager
def frame(session: Session | None, title: str, active: str = "", dark: bool = True) -> Iterator[ui.column]:
    """Header (brand, navigation for the user's role, user menu) and a full-width content column."""
    apply_theme(dark)
    user = session.user if session else None
    role = str(user.get("role")) if user else None
    with ui.header().classes("cityos-header items-center px-4 py-2 gap-4"):
        with ui.link(target="/").classes("no-underline"), ui.row().classes("items-center gap-2"):
            ui.icon("location_city", size="md").classes("text-cyan-300")
            with ui.column().classes("gap-0"):
                ui.label("CityOS 智慧城市").classes("text-lg font-bold text-slate-100 leading-tight cityos-brand-name")
                ui.label("一网统管 · 一网通办").classes("text-xs text-slate-400 leading-tight cityos-brand-sub")
        ui.label(title).classes("text-xl font-semibold text-cyan-200 ml-4 cityos-page-title")
        ui.space()
        entries = [item for item in NAV if item.roles is None or role in item.roles]
        shown, more = _row_and_more(entries, active)
        with ui.row().classes("cityos-nav gap-1 gt-sm no-wrap"):
            for item in shown:
                ui.button(item.label, icon=item.icon, on_click=lambda p=item.path: ui.navigate.to(p)) \
                    .props("flat no-caps").classes("cityos-nav-active" if _selected(item, active) else "")
            if more:
                with ui.button("更多 More", icon="expand_more").props("flat no-caps").classes("cityos-nav-more"), \
                        ui.menu().props("auto-close").classes("cityos-menu-list"):
                    _menu_items(more, active)
        if entries:
            _menu_button(entries, active)
        clock = ui.label("").classes("text-slate-300 font-mono text-sm ml-2 cityos-clock")
        ui.timer(1.0, lambda: clock.set_text(_now_text()))
        if user:
            with ui.button(icon="account_circle").props("flat no-caps").classes("text-slate-200 cityos-user"):
                ui.label(f"{user.get('username') or ''}").classes("ml-1 cityos-user-name")
                with ui.menu():
                    ui.item(ROLE_LABELS.get(role or "", role or "")).props("dense")
                    if user.get("department"):
                        ui.item(f"部门 Department: {user['department']}").props("dense")
                    ui.separator()
                    ui.item("退出 Sign out", on_click=lambda: ui.navigate.to("/logout")).classes("cityos-logout")
        else:
            ui.button("登录 Sign in", on_click=lambda: ui.navigate.to("/login")).props("flat")
    with ui.column().classes("w-full p-3 gap-3") as content:
        yield content


def _selected(item: NavItem, active: str) -> bool:
    return bool(active) and (active == item.path or active.startswith(item.path + "/"))


def _menu_button(entries: list[NavItem], active: str) -> None:
    """The navigation as a drop-down list behind one button, shown instead of the row on narrow screens
    (Quasar's lt-md: below 1024 px), so a phone's header stays one line."""
    with ui.button(icon="menu").props("flat round aria-label=菜单").classes("lt-md text-slate-200 cityos-menu"), \
            ui.menu().props("auto-close").classes("cityos-menu-list"):
        _menu_items(entries, active)


def _menu_items(entries: list[NavItem], active: str) -> None:
    for item in entries:
        with ui.item(on_click=lambda p=item.path: ui.navigate.to(p)) \
                .classes("cityos-menu-item" + (" text-cyan-600 text-weight-bold" if _selected(item, active) else "")):
            if item.icon:
                with ui.item_section().props("avatar"):
                    ui.icon(item.icon)
            ui.item_section(item.label)


# Entries in the header row on a wide screen; the rest go behind "更多 More", so the header stays one line
# (every domain adds pages, and a wrapped header pushed the cockpit's map and dialogs down).
NAV_ROW_ENTRIES = 5


def _row_and_more(entries: list[NavItem], active: str) -> tuple[list[NavItem], list[NavItem]]:
    """The row shows the role's own pages before the public ones, and always the page the user is on."""
    ordered = [item for item in entries if item.roles is not None] + [item for item in entries if item.roles is None]
    if len(ordered) <= NAV_ROW_ENTRIES + 1:
        return ordered, []
    shown, more = ordered[:NAV_ROW_ENTRIES], ordered[NAV_ROW_ENTRIES:]
    current = next((item for item in more if _selected(item, active)), None)
    if current is not None:
        more = [shown[-1]] + [item for item in more if item is not current]
        shown = [*shown[:-1], current]
    return shown, more


def _now_text() -> str:
    """The city's clock (CITYOS_TIMEZONE) with its zone, whatever zone the server or the browser is in."""
    from cityos.core import clock, messages

    return messages.local_time(clock.now(), "%Y-%m-%d %H:%M:%S")


def panel(title: str | None = None, classes: str = "") -> ui.card:
    """A dark panel with an optional title; use as a context manager."""
    card = ui.card().classes(f"cityos-panel p-3 gap-2 {classes}")
    if title:
        with card:
            ui.label(title).classes("cityos-panel-title")
    return card


@ui.page("/", title="CityOS 城市运行管理平台")
async def home_page(denied: str | None = None) -> None:
    """Start page: where each user can go."""
    from cityos.web.auth import COCKPIT_ROLES

    session = Session.current()
    await session.me()
    with frame(session, "首页 Home", active="/"):
        if denied:
            with panel(classes="w-full"):
                ui.label(f"无权访问 Not available to your role: {denied}").classes("text-amber-300 cityos-denied")
        with ui.row().classes("w-full gap-4"):
            entries: list[tuple[str, str, str, str, frozenset[str] | None]] = [
                ("/cockpit", "城市运行一张图 City operations", "运行监测、告警、事件处置 Monitoring, alarms, incidents",
                 "map", COCKPIT_ROLES)]
            entries += [(item.path, item.label, "", item.icon or "apps", item.roles) for item in NAV
                        if not item.path.startswith("/cockpit")]
            for path, label, note, icon, roles in entries:
                if roles is not None and session.role not in roles and session.user is not None:
                    continue
                with panel(classes="w-[360px] cursor-pointer hover:border-cyan-400") \
                        .on("click", lambda p=path: ui.navigate.to(p)):
                    ui.icon(icon, size="3rem").classes("text-cyan-300")
                    ui.label(label).classes("text-xl text-slate-100")
                    if note:
                        ui.label(note).classes("text-slate-400")


class LoadedView(Protocol):
    """A page's body built for a signed-in session, filled from the API by `load`."""

    def load(self) -> Awaitable[None]: ...


async def signed_in_view(roles: Iterable[str], heading: str, active: str,
                         view: Callable[[Session], LoadedView]) -> RedirectResponse | None:
    """The common page: sign-in (or a redirect) for `roles`, the frame, then the view built and loaded."""
    session = await require_login(roles)
    if not isinstance(session, Session):
        return session
    with frame(session, heading, active=active):
        await view(session).load()
    return None
