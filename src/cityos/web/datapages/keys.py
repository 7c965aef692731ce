"""有条件开放 in pages: an outside developer applies for an API key, the data office decides, the developer
claims the key; and the data office's negative list (负面清单).

- `/opendata/apply` (anyone): the conditionally open datasets to choose, the applicant, a contact, the
  purpose and the calls a minute asked for. The answer is an application number and a claim code, shown
  once; the same page checks the state with both and, once approved, shows the key once;
- `/data/keys` (data.key.manage): the applications waiting, with approve (at the asked rate or lower)
  and reject (with a note), and the decided ones;
- `/data/negative` (data.negative.manage): the negative list, an entry added (a dataset, a field of a
  dataset, or a field on every dataset) or taken off.

Every action is the data API's with the signed-in user's token (or none): the API decides.
"""

from __future__ import annotations

from typing import Any

from fastapi.responses import RedirectResponse
from nicegui import ui

from cityos.data.keyapps import MAX_ASKED_RATE, MAX_DATASETS
from cityos.security.policy import roles_allowed
from cityos.web.auth import ApiError, Session, require_login
from cityos.web.datapages.common import department, when
from cityos.web.shell import add_nav, frame, panel

KEY_ROLES = roles_allowed("data.key.manage")
NEGATIVE_ROLES = roles_allowed("data.negative.manage")
add_nav("开放申请 Key applications", "/data/keys", KEY_ROLES, icon="key")
add_nav("负面清单 Negative list", "/data/negative", NEGATIVE_ROLES, icon="block")

APP_STATUSES: dict[str, tuple[str, str]] = {
    "pending": ("待审批 Pending", "info"), "approved": ("已批准，待领取 Approved, to claim", "positive"),
    "rejected": ("已驳回 Rejected", "negative"), "issued": ("已领取 Key issued", "grey-7")}


def app_badge(status: str) -> None:
    label, colour = APP_STATUSES.get(status, (status, "grey"))
    ui.badge(label, color=colour).classes(f"cityos-app-status cityos-app-{status}")


async def conditional_datasets(session: Session) -> dict[str, str]:
    """code → title of the conditionally open datasets, as an anonymous CKAN client sees them."""
    answer = await session.raw("GET", "/api/3/action/package_search",
                               params={"fq": 'open_type:"conditional"', "rows": 500, "sort": "name asc"})
    if answer.status_code != 200:
        return {}
    return {p["name"]: f"{p['title']} · {p['name']}" for p in answer.json()["result"]["results"]}


# ---------------------------------------------------------------------- the developer's page


@ui.page("/opendata/apply", title="申请 API key Apply for a key · CityOS")
async def apply_page(dataset: str = "") -> None:
    session = Session.current()
    await session.me()
    with frame(session, "申请 API key Apply for an API key", active="/opendata"):
        ui.link("← 数据开放 Open data", "/opendata").classes("text-cyan-300 text-sm")
        options = await conditional_datasets(session)
        with ui.row().classes("w-full gap-3 no-wrap items-start"):
            with panel("申请 Application", classes="w-[560px] shrink-0 cityos-apply-form"):
                ui.label("有条件开放的数据集须凭 API key 调用：说明用途和调用频率，由数据管理机构审批。 "
                         "Conditionally open datasets are read with an API key: state your purpose and rate; "
                         "the data office decides.").classes("text-sm text-slate-300")
                chosen = ui.select(options, label=f"数据集 Datasets (≤ {MAX_DATASETS})", multiple=True, with_input=True,
                                   value=[dataset] if dataset in options else []) \
                    .props("dark outlined dense use-chips").classes("w-full cityos-apply-datasets")
                applicant = ui.input("申请人/单位 Applicant (person or organisation)") \
                    .props("dark outlined dense").classes("w-full cityos-apply-applicant")
                contact = ui.input("联系方式 Contact (e-mail or phone)").props("dark outlined dense") \
                    .classes("w-full cityos-apply-contact")
                purpose = ui.textarea("用途 Purpose (10-2000 字 characters)").props("dark outlined dense autogrow") \
                    .classes("w-full cityos-apply-purpose")
                rate = ui.number(f"每分钟调用次数 Calls a minute (1-{MAX_ASKED_RATE})", value=60, min=1,
                                 max=MAX_ASKED_RATE, precision=0).props("dark outlined dense") \
                    .classes("w-64 cityos-apply-rate")
                answer = ui.column().classes("w-full gap-1 cityos-apply-answer")

                async def submit() -> None:
                    body = {"datasets": list(chosen.value or []), "applicant": applicant.value or "",
                            "contact": contact.value or "", "purpose": purpose.value or "",
                            "ratePerMinute": int(rate.value or 0)}
                    try:
                        made = await session.api("POST", "/opendata/key-applications", json=body)
                    except ApiError as exc:
                        ui.notify(f"未提交 Not submitted: {exc.detail}", type="negative", multi_line=True)
                        return
                    answer.clear()
                    with answer, ui.card().classes("w-full bg-slate-900 p-2 gap-1"):
                        ui.label("已提交，请保存以下信息（只显示一次） Submitted. Keep these (shown once):") \
                            .classes("text-sm text-amber-200")
                        ui.label(f"申请编号 Application: {made['id']}").classes("text-sm cityos-made-id")
                        ui.label(f"领取码 Claim code: {made['claim']}").classes("text-sm font-mono cityos-made-claim")
                    app_id.value, claim.value = made["id"], made["claim"]
                    send.disable()  # one application per form: a second click would file it again
                    ui.notify("已提交 Submitted", type="positive")

                send = ui.button("提交申请 Apply", icon="send", on_click=submit).props("unelevated no-caps") \
                    .classes("cityos-apply-submit")
            with panel("查询与领取 Check and claim", classes="flex-1 min-w-0 cityos-claim"):
                ui.label("审批通过后凭申请编号和领取码领取 key；key 只显示一次。 Once approved, the application "
                         "number and claim code give the key, shown once.").classes("text-sm text-slate-300")
                app_id = ui.input("申请编号 Application").props("dark outlined dense").classes("w-full cityos-claim-id")
                claim = ui.input("领取码 Claim code", password=True, password_toggle_button=True) \
                    .props("dark outlined dense").classes("w-full cityos-claim-code")
                state = ui.column().classes("w-full gap-1 cityos-claim-state")

                async def check() -> None:
                    try:
                        found = await session.api("POST", f"/opendata/key-applications/{(app_id.value or '').strip()}"
                                                  "/claim", json={"claim": (claim.value or "").strip()})
                    except ApiError as exc:
                        ui.notify(f"未找到 Not found: {exc.detail}", type="negative", multi_line=True)
                        return
                    state.clear()
                    with state:
                        with ui.row().classes("items-center gap-2"):
                            app_badge(found["status"])
                            ui.label(f"{found['ratePerMinute']} 次/分钟 calls a minute").classes("text-sm")
                        ui.label("数据集 Datasets: " + ", ".join(found["datasets"])).classes("text-xs text-slate-400")
                        if found.get("note"):
                            ui.label(f"审批意见 Note: {found['note']}").classes("text-sm text-slate-300")
                        if found.get("key"):
                            ui.label("您的 API key（只显示这一次）Your API key (shown this once):") \
                                .classes("text-sm text-amber-200")
                            ui.code(found["key"]).classes("w-full cityos-claimed-key")
                            ui.code(f"curl -H 'Authorization: {found['key']}' "
                                    "'https://<host>/api/3/action/datastore_search"
                                    f"?resource_id={found['datasets'][0]}&limit=5'",
                                    language="bash").classes("w-full text-xs")

                ui.button("查询/领取 Check / claim", icon="key", on_click=check).props("unelevated no-caps") \
                    .classes("cityos-claim-submit")


# ---------------------------------------------------------------------- the data office's pages


class KeysPage:
    lists: ui.column

    def __init__(self, session: Session) -> None:
        self.session = session

    async def render(self) -> None:
        try:
            apps = (await self.session.api("GET", "/api/data/key-applications"))["applications"]
        except ApiError as exc:
            ui.label(f"无法读取申请 Cannot read the applications: {exc.detail}").classes("text-amber-300")
            return
        pending = [a for a in apps if a["status"] == "pending"]
        with panel(f"待审批 Waiting · {len(pending)}", classes="w-full cityos-keys-pending"):
            if not pending:
                ui.label("暂无待审批申请 Nothing waiting").classes("text-slate-500")
            for item in pending:
                self.pending_row(item)
        decided = [a for a in apps if a["status"] != "pending"]
        with panel("已处理 Decided", classes="w-full cityos-keys-decided"):
            if not decided:
                ui.label("暂无 None yet").classes("text-slate-500")
            for item in decided:
                with ui.row().classes("w-full items-center gap-3 cityos-key-decided"):
                    app_badge(item["status"])
                    ui.label(item["applicant"]).classes("text-sm")
                    ui.label(", ".join(item["datasets"])).classes("text-xs text-slate-400")
                    ui.label(f"{item['ratePerMinute']}/min").classes("text-xs")
                    ui.label(f"{item['decidedBy'] or ''} · {when(item['decidedAt'])}").classes("text-xs text-slate-500")

    def pending_row(self, item: dict[str, Any]) -> None:
        with ui.card().classes(f"w-full bg-slate-900 p-2 gap-1 cityos-key-app cityos-key-app-{item['id'][:8]}"):
            with ui.row().classes("w-full items-center gap-3"):
                app_badge(item["status"])
                ui.label(item["applicant"]).classes("text-base text-slate-100")
                ui.label(item["contact"]).classes("text-xs text-slate-400")
                ui.label(f"提交 Applied {when(item['createdAt'])}").classes("text-xs text-slate-500")
            ui.label("数据集 Datasets: " + ", ".join(item["datasets"])).classes("text-sm text-slate-300")
            ui.label(f"用途 Purpose: {item['purpose']}").classes("text-sm text-slate-200 cityos-key-purpose")
            with ui.row().classes("w-full items-center gap-2"):
                rate = ui.number(f"批准频率 Rate granted (≤ {item['ratePerMinute']}/min)", value=item["ratePerMinute"],
                                 min=1, max=item["ratePerMinute"], precision=0) \
                    .props("dark outlined dense").classes("w-64 cityos-key-rate")
                note = ui.input("意见 Note").props("dark outlined dense").classes("flex-1 cityos-key-note")
                ui.button("批准 Approve", icon="check",
                          on_click=lambda: self.decide(item, "approve", rate.value, note.value)) \
                    .props("unelevated no-caps color=positive").classes("cityos-key-approve")
                ui.button("驳回 Reject", icon="close", on_click=lambda: self.decide(item, "reject", None, note.value)) \
                    .props("flat no-caps color=negative").classes("cityos-key-reject")

    async def decide(self, item: dict[str, Any], verdict: str, rate: Any, note: Any) -> None:
        body: dict[str, Any] = {"decision": verdict}
        if rate is not None:
            body["ratePerMinute"] = int(rate)
        if note:
            body["note"] = str(note)
        try:
            await self.session.api("POST", f"/api/data/key-applications/{item['id']}/decision", json=body)
        except ApiError as exc:
            ui.notify(f"未完成 Failed: {exc.detail}", type="negative", multi_line=True)
            return
        ui.notify("已批准 Approved" if verdict == "approve" else "已驳回 Rejected", type="positive")
        self.lists.clear()
        with self.lists:
            await self.render()


@ui.page("/data/keys", title="开放申请 Key applications · CityOS")
async def keys_page() -> RedirectResponse | None:
    session = await require_login(KEY_ROLES)
    if not isinstance(session, Session):
        return session
    with frame(session, "API key 申请审批 Key applications", active="/data/keys"):
        page = KeysPage(session)
        page.lists = ui.column().classes("w-full gap-3")
        with page.lists:
            await page.render()
    return None


class NegativePage:
    entries: ui.column

    def __init__(self, session: Session) -> None:
        self.session = session
        self.datasets: dict[str, dict[str, Any]] = {}

    async def render_entries(self) -> None:
        try:
            found = (await self.session.api("GET", "/api/data/negative-list"))["entries"]
        except ApiError as exc:
            ui.label(f"无法读取 Cannot read: {exc.detail}").classes("text-amber-300")
            return
        if not found:
            ui.label("负面清单为空 The negative list is empty").classes("text-slate-500")
        for entry in found:
            ds = self.datasets.get(entry["dataset"])
            with ui.row().classes("w-full items-center gap-3 cityos-negative-entry"):
                ui.label("全部数据集 Every dataset" if entry["dataset"] == "*" else
                         f"{ds['name'] if ds else ''} · {entry['dataset']}").classes("text-sm text-slate-100")
                ui.label(f"字段 Field: {entry['field']}" if entry["field"] else "整个数据集 Whole dataset") \
                    .classes("text-sm text-amber-200")
                ui.label(entry["reason"]).classes("text-sm text-slate-300 flex-1")
                ui.label(f"{entry['createdBy']} · {when(entry['createdAt'])}").classes("text-xs text-slate-500")
                ui.button("移出 Remove", icon="delete", on_click=lambda e=entry: self.remove(e)) \
                    .props("flat dense no-caps color=negative").classes("cityos-negative-remove")

    async def redraw(self) -> None:
        self.entries.clear()
        with self.entries:
            await self.render_entries()

    async def remove(self, entry: dict[str, Any]) -> None:
        try:
            await self.session.api("DELETE", f"/api/data/negative-list/{entry['id']}")
        except ApiError as exc:
            ui.notify(f"未移出 Not removed: {exc.detail}", type="negative", multi_line=True)
            return
        ui.notify("已移出 Removed", type="positive")
        await self.redraw()

    def add_form(self, preselect: str) -> None:
        with panel("加入负面清单 Add an entry", classes="w-[480px] shrink-0 cityos-negative-form"):
            ui.label("清单内的数据集或字段，任何部门申请共享均被拒绝。 A dataset or field on the list is refused to "
                     "every requester.").classes("text-sm text-slate-300")
            options = {"*": "* 全部数据集的该字段 This field on every dataset"} | {
                code: f"{d['name']} · {code} · {department(d['provider'])}" for code, d in self.datasets.items()}
            dataset = ui.select(options, label="数据集 Dataset", with_input=True,
                                value=preselect if preselect in options else None) \
                .props("dark outlined dense").classes("w-full cityos-negative-dataset")
            field = ui.select([], label="字段 Field (空 = 整个数据集 empty = whole dataset)", with_input=True,
                              new_value_mode="add-unique", clearable=True) \
                .props("dark outlined dense").classes("w-full cityos-negative-field")
            reason = ui.input("理由 Reason").props("dark outlined dense").classes("w-full cityos-negative-reason")

            def fields_of() -> None:
                ds = self.datasets.get(str(dataset.value))
                field.set_options([f["id"] for f in ds["fields"]] if ds else [])
                field.value = None

            dataset.on_value_change(fields_of)
            fields_of()

            async def add() -> None:
                body = {"dataset": dataset.value or "", "field": field.value or None, "reason": reason.value or ""}
                try:
                    await self.session.api("POST", "/api/data/negative-list", json=body)
                except ApiError as exc:
                    ui.notify(f"未加入 Not added: {exc.detail}", type="negative", multi_line=True)
                    return
                ui.notify("已加入 Added", type="positive")
                reason.value = ""
                await self.redraw()

            ui.button("加入 Add", icon="block", on_click=add).props("unelevated no-caps color=negative") \
                .classes("cityos-negative-add")


@ui.page("/data/negative", title="负面清单 Negative list · CityOS")
async def negative_page(dataset: str = "") -> RedirectResponse | None:
    session = await require_login(NEGATIVE_ROLES)
    if not isinstance(session, Session):
        return session
    with frame(session, "负面清单 Negative list", active="/data/negative"):
        page = NegativePage(session)
        try:
            found = await session.api("GET", "/api/data/datasets", params={"rows": 500})
        except ApiError as exc:
            ui.label(f"无法读取目录 Cannot read the catalogue: {exc.detail}").classes("text-amber-300")
            return None
        page.datasets = {d["code"]: d for d in found["datasets"]}
        with ui.row().classes("w-full gap-3 no-wrap items-start"):
            page.add_form(dataset[:128])
            with panel("负面清单 The list", classes="flex-1 min-w-0 cityos-negative-list"):
                page.entries = ui.column().classes("w-full gap-1")
                with page.entries:
                    await page.render_entries()
    return None
