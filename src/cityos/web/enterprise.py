"""惠企 pages, each through the livelihood API with the signed-in user's token.

- `/portal/policy-calculator`: a company's policies: eligible or not, a score (the share of conditions
  met), why (each condition, the company's value, the department and date of the data), what is
  missing; "what if" inputs recompute without storing anything;
- `/portal/financing`: a company posts financing needs and sees, per need, banks' products with the
  matching rules (amount, term, industry, credit grade) and asks for contact;
- `/livelihood/financing`: a bank's or the financial office's staff publish loan products and see the
  needs that match them and the contacts asked.
"""

from __future__ import annotations

from typing import Any

from fastapi.responses import RedirectResponse
from nicegui import ui

from cityos.core.messages import local_time
from cityos.livelihood.profiles.fields import (
    COMPANY_FIELDS,
    CREDIT_GRADES,
    DERIVED,
    INDUSTRY_NAMES,
    INDUSTRY_SECTIONS,
    SIZE_CLASSES,
)
from cityos.security.policy import roles_allowed
from cityos.web.auth import ApiError, Session
from cityos.web.livelihood import OPS
from cityos.web.shell import add_nav, panel, signed_in_view

COMPANY_ROLES = roles_allowed("livelihood.finance.need")
DESK_ROLES = roles_allowed("livelihood.finance.broker")
RULES = {"amount": "金额 Amount", "term": "期限 Term", "industry": "行业 Industry", "credit": "纳税信用 Credit grade"}
# What-if inputs: (field, label, kind) — kind int / float / code list / bool.
WHAT_IF: tuple[tuple[str, str, Any], ...] = (
    ("employees", "参保职工数 Employees", int), ("new_graduate_hires", "新招高校毕业生 Graduates hired", int),
    ("revenue", "年营业收入(万元) Revenue", float), ("rd_ratio", "研发费用占比 R&D ratio (0-1)", float),
    ("layoff_rate", "裁员率 Layoff rate (0-1)", float), ("size_class", "企业规模 Size class", SIZE_CLASSES),
    ("tax_credit", "纳税信用等级 Tax credit grade", CREDIT_GRADES),
    ("high_tech_certified", "高新技术企业 High-tech certified", bool),
    ("specialized_sme", "专精特新 Specialised SME", bool),
    ("social_insurance_paid", "足额缴纳社保 Social insurance paid", bool),
)

add_nav("政策计算器 Policy calculator", "/portal/policy-calculator", COMPANY_ROLES, icon="calculate")
add_nav("融资对接 Financing", "/portal/financing", COMPANY_ROLES, icon="savings")
add_nav("融资对接 Financing desk", "/livelihood/financing", DESK_ROLES, icon="account_balance")


def why_line(item: dict[str, Any]) -> str:
    """One condition for a company: ✓/✗, the field in Chinese and its id, the rule, its value, the source."""
    met = item.get("held") != item.get("negated", False)
    mark = "✓" if met else "✗"
    if "policy" in item:
        return f"{mark} 符合政策 eligible for {item['policy']}"
    name = item["field"]
    label = "成立年限" if name == "company_age" else COMPANY_FIELDS[name].zh if name in COMPANY_FIELDS else name
    actual = item.get("actual") if item.get("known") else "未知 unknown"
    if item.get("department") == "what-if":
        source = " · 试算输入 what-if"
    elif item.get("department"):
        source = f" · {item['department']} {str(item.get('observedAt', ''))[:10]}"
    else:
        source = ""
    derived = f" ← {DERIVED[name][0]}" if name in DERIVED else ""
    rule = f"{OPS.get(item['op'], item['op'])} {item['value']}"
    return f"{mark} {label} {name} {rule}(贵企业 yours: {actual}{derived}){source}"


def industry_label(section: str | None) -> str:
    return f"{section} {INDUSTRY_NAMES.get(section, '')}" if section else "—"


def _refused(exc: ApiError) -> None:
    ui.notify(f"未成功 Refused ({exc.status}): {exc.detail}", type="negative")


class PolicyCalculator:
    def __init__(self, session: Session) -> None:
        self.session = session
        self.inputs: dict[str, Any] = {}
        with panel("试算 What if (留空即按已有数据 empty: your records)", classes="w-full cityos-what-if"), \
                ui.row().classes("items-end gap-3 flex-wrap"):
                for name, label, kind in WHAT_IF:
                    box: ui.number | ui.select
                    if kind in (int, float):
                        box = ui.number(label, format="%.2f" if kind is float else "%d").props("dense outlined")
                    elif kind is bool:
                        box = ui.select({"": "—", "yes": "是 Yes", "no": "否 No"}, label=label, value="") \
                            .props("dense outlined")
                    else:
                        box = ui.select(["", *kind], label=label, value="").props("dense outlined")
                    self.inputs[name] = box.classes(f"w-48 cityos-what-if-{name}")
                ui.button("试算 Try", icon="calculate", on_click=self.try_what_if) \
                    .props("no-caps color=primary").classes("cityos-what-if-try")
                ui.button("重置 Reset", icon="restart_alt", on_click=self.reset).props("no-caps outline") \
                    .classes("cityos-what-if-reset")
        self.box = ui.column().classes("w-full gap-3 cityos-policy-match")

    def what_if(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, _label, kind in WHAT_IF:
            value = self.inputs[name].value
            if value in (None, ""):
                continue
            out[name] = int(value) if kind is int else float(value) if kind is float else \
                (value == "yes") if kind is bool else value
        return out

    async def load(self, what_if: dict[str, Any] | None = None) -> None:
        self.box.clear()
        try:
            if what_if:
                data = await self.session.api("POST", "/api/livelihood/me/policy-match", json={"whatIf": what_if})
            else:
                data = await self.session.api("GET", "/api/livelihood/me/policy-match")
        except ApiError as exc:
            with self.box:
                ui.label(f"暂无企业档案 No company profile ({exc.status}): {exc.detail}").classes(
                    "text-amber-300 cityos-no-profile")
            return
        with self.box:
            tried = " · 试算结果 what-if result" if what_if else ""
            ui.label(f"符合 {data['eligible']} 项政策 Eligible for {data['eligible']} of {len(data['items'])}{tried}") \
                .classes("text-lg cityos-match-count")
            for item in data["items"]:
                self._item(item)

    def _item(self, item: dict[str, Any]) -> None:
        policy = item["policy"]
        state = "符合 Eligible" if item["eligible"] else "暂不符合 Not yet"
        with panel(f"{policy['name']} {policy['nameEn']}", classes=f"w-full cityos-match-{policy['id']}"):
            with ui.row().classes("items-center gap-3"):
                ui.label(f"{state} · 匹配度 Score {item['score']}").classes(
                    "text-sm font-semibold " + ("text-green-300" if item["eligible"] else "text-amber-300")
                ).classes("cityos-match-score")
                ui.linear_progress(item["score"] / 100, show_value=False).classes("w-40")
                benefit = policy["benefit"]
                amount = f"{benefit['amount']:g} 元 CNY" if benefit.get("amount") else benefit.get("unit", "")
                mode = "免申即享 No application" if policy["mode"] == "automatic" else "服务找人 Invitation"
                ui.label(f"{mode} · {amount} · {policy['department']}").classes("text-xs text-slate-300")
            with ui.column().classes("gap-0 cityos-match-why"):
                for why in item["why"]:
                    ui.label(why_line(why)).classes("text-xs " + ("text-slate-200" if why["held"] != why.get("negated")
                                                         else "text-amber-200"))

    async def try_what_if(self) -> None:
        await self.load(self.what_if())

    async def reset(self) -> None:
        for _name, _label, kind in WHAT_IF:
            self.inputs[_name].set_value(None if kind in (int, float) else "")
        await self.load()


@ui.page("/portal/policy-calculator", title="惠企政策计算器 · CityOS")
async def policy_calculator_page() -> RedirectResponse | None:
    return await signed_in_view(COMPANY_ROLES, "惠企政策计算器 Policy calculator",
                                "/portal/policy-calculator", PolicyCalculator)


class CompanyFinancing:
    def __init__(self, session: Session) -> None:
        self.session = session
        with panel("发布融资需求 Post a financing need", classes="w-full cityos-need-form"), \
                ui.row().classes("items-end gap-3"):
                self.amount = ui.number("金额(万元) Amount", min=0).props("dense outlined").classes(
                    "w-40 cityos-need-amount")
                self.term = ui.number("期限(月) Term (months)", min=1, format="%d").props("dense outlined") \
                    .classes("w-40 cityos-need-term")
                self.purpose = ui.input("用途 Purpose").props("dense outlined").classes("w-96 cityos-need-purpose")
                ui.button("发布 Post", icon="send", on_click=self.post).props("no-caps color=primary") \
                    .classes("cityos-need-post")
        self.box = ui.column().classes("w-full gap-3 cityos-needs")

    async def post(self) -> None:
        body = {"amount": self.amount.value, "term": int(self.term.value) if self.term.value else None,
                "purpose": self.purpose.value}
        try:
            await self.session.api("POST", "/api/livelihood/finance/me/needs", json=body)
        except ApiError as exc:
            _refused(exc)
            return
        ui.notify("已发布 Posted", type="positive")
        await self.load()

    async def load(self) -> None:
        self.box.clear()
        try:
            data = await self.session.api("GET", "/api/livelihood/finance/me/needs")
        except ApiError as exc:
            with self.box:
                ui.label(f"暂无企业档案 No company profile ({exc.status}): {exc.detail}").classes(
                    "text-amber-300 cityos-no-profile")
            return
        with self.box:
            ui.label(f"我的融资需求 My needs: {len(data['items'])}").classes("text-lg cityos-needs-count")
            for need in data["items"]:
                self._need(need)

    def _need(self, need: dict[str, Any]) -> None:
        title = f"{need['amount']:g} 万元 · {need['term']} 个月 months · {need['purpose']}"
        with panel(title, classes=f"w-full cityos-need cityos-need-{need['id']}"):
            ui.label(f"发布于 Posted {local_time(need['createdAt'])} · 匹配产品 {need['matches']} matching products") \
                .classes("text-xs text-slate-300 cityos-need-matches")
            for offer in need["offers"]:
                product = offer["product"]
                with ui.row().classes("items-center gap-3 w-full cityos-offer"):
                    mark = "✓ 匹配 Match" if offer["matched"] else "✗ 不匹配 No match"
                    ui.label(f"{product['bank']} · {product['name']} · {product['rate'] or ''} · {mark}").classes(
                        "text-sm " + ("text-green-300" if offer["matched"] else "text-slate-400"))
                    rules = " ".join(f"{'✓' if r['held'] else '✗'}{RULES[r['rule']]}" for r in offer["rules"])
                    ui.label(rules).classes("text-xs text-slate-300")
                    if offer["contactRequested"]:
                        ui.label("已申请对接 Contact requested").classes("text-xs text-cyan-300 cityos-contact-done")
                    elif offer["matched"]:
                        ui.button("申请对接 Request contact", icon="call",
                                  on_click=lambda n=need["id"], p=product["id"]: self.contact(n, p)) \
                            .props("no-caps dense color=primary").classes("cityos-contact")

    async def contact(self, need_id: str, product_id: str) -> None:
        try:
            await self.session.api("POST", f"/api/livelihood/finance/me/needs/{need_id}/contact",
                                   json={"product": product_id})
        except ApiError as exc:
            _refused(exc)
            return
        ui.notify("已通知银行 The bank will contact you", type="positive")
        await self.load()


@ui.page("/portal/financing", title="融资对接 · CityOS")
async def company_financing_page() -> RedirectResponse | None:
    return await signed_in_view(COMPANY_ROLES, "融资对接 Financing matchmaking",
                                "/portal/financing", CompanyFinancing)


class FinancingDesk:
    def __init__(self, session: Session) -> None:
        self.session = session
        user = session.user or {}
        with panel("发布贷款产品 Publish a loan product", classes="w-full cityos-product-form"), \
                ui.row().classes("items-end gap-3 flex-wrap"):
                self.bank = ui.input("银行 Bank").props("dense outlined").classes("w-48 cityos-product-bank")
                self.name = ui.input("产品名称 Product").props("dense outlined").classes("w-48 cityos-product-name")
                self.amount = [ui.number(f"金额{label}(万元)", min=0).props("dense outlined").classes(f"w-44 {c}")
                               for label, c in (("最低 Min", "cityos-product-amin"),
                                                ("最高 Max", "cityos-product-amax"))]
                self.term = [ui.number(f"期限{label}(月)", min=1, format="%d").props("dense outlined")
                             .classes(f"w-44 {c}")
                             for label, c in (("最短 Min", "cityos-product-tmin"),
                                              ("最长 Max", "cityos-product-tmax"))]
                sections = {s: industry_label(s) for s in INDUSTRY_SECTIONS}
                self.industries = ui.select(sections, multiple=True, value=[],
                                            label="行业门类 GB/T 4754 (空=全部 empty: all)") \
                    .props("dense outlined use-chips").classes("w-64 cityos-product-industries")
                self.credit = ui.select(list(CREDIT_GRADES), value="B", label="最低纳税信用 Min credit") \
                    .props("dense outlined").classes("w-40 cityos-product-credit")
                self.rate = ui.input("利率 Rate").props("dense outlined").classes("w-32 cityos-product-rate")
                self.department = ui.input("发布部门 Department", value=str(user.get("department") or "")) \
                    .props("dense outlined").classes("w-48 cityos-product-department")
                ui.button("发布 Publish", icon="publish", on_click=self.publish).props("no-caps color=primary") \
                    .classes("cityos-product-publish")
        self.box = ui.column().classes("w-full gap-3 cityos-financing-desk")

    async def publish(self) -> None:
        body = {"bank": self.bank.value, "name": self.name.value, "amountMin": self.amount[0].value,
                "amountMax": self.amount[1].value,
                "termMin": int(self.term[0].value) if self.term[0].value else None,
                "termMax": int(self.term[1].value) if self.term[1].value else None,
                "industries": list(self.industries.value or []), "minCredit": self.credit.value,
                "rate": self.rate.value or None, "department": self.department.value or None}
        try:
            await self.session.api("POST", "/api/livelihood/finance/products", json=body)
        except ApiError as exc:
            _refused(exc)
            return
        ui.notify("已发布 Published", type="positive")
        await self.load()

    async def load(self) -> None:
        self.box.clear()
        try:
            data = await self.session.api("GET", "/api/livelihood/finance/desk")
        except ApiError as exc:
            with self.box:
                ui.label(f"无法读取 Cannot read: {exc}").classes("text-amber-300")
            return
        names = {p["id"]: f"{p['bank']} · {p['name']}" for p in data["products"]}
        with self.box:
            self._table("贷款产品 Products", "cityos-products-table", "id", [
                ("bank", "银行 Bank"), ("name", "产品 Product"), ("amount", "金额(万元) Amount"),
                ("term", "期限(月) Term"), ("industries", "行业 Industries"), ("minCredit", "最低信用 Min credit"),
                ("rate", "利率 Rate"), ("status", "状态 Status")],
                [{**p, "amount": f"{p['amountMin']:g}–{p['amountMax']:g}", "term": f"{p['termMin']}–{p['termMax']}",
                  "industries": "、".join(industry_label(i) for i in p["industries"]) or "全部 all",
                  "status": "在架 Active" if p["status"] == "active" else "已下架 Withdrawn"}
                 for p in data["products"]])
            self._table("匹配的融资需求 Matching needs", "cityos-needs-table", "id", [
                ("company", "企业 Company"), ("industry", "行业 Industry"), ("amount", "金额(万元) Amount"),
                ("term", "期限(月) Term"), ("purpose", "用途 Purpose"), ("products", "匹配产品 Products"),
                ("createdAt", "发布 Posted")],
                [{**n, "industry": industry_label(n["industry"]),
                  "products": ", ".join(names.get(p, p) for p in n["products"]),
                  "createdAt": local_time(n["createdAt"])} for n in data["needs"]])
            self._table("对接申请 Contact requests", "cityos-contacts-table", "id", [
                ("company", "企业 Company"), ("product", "产品 Product"), ("status", "状态 Status"),
                ("createdAt", "申请时间 Asked at")],
                [{**c, "product": names.get(c["product"], c["product"]),
                  "status": "待联系 Requested" if c["status"] == "requested" else c["status"],
                  "createdAt": local_time(c["createdAt"])} for c in data["contacts"]])

    @staticmethod
    def _table(title: str, classes: str, key: str, columns: list[tuple[str, str]], rows: list[dict[str, Any]]) -> None:
        with panel(f"{title} ({len(rows)})", classes="w-full"):
            ui.table(columns=[{"name": k, "label": label, "field": k, "align": "left"} for k, label in columns],
                     rows=rows, row_key=key).classes(f"w-full {classes}").props("dense flat")


@ui.page("/livelihood/financing", title="融资对接 · CityOS")
async def financing_desk_page() -> RedirectResponse | None:
    return await signed_in_view(DESK_ROLES, "融资对接 Financing desk",
                                "/livelihood/financing", FinancingDesk)
