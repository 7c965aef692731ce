"""The profile fields departments may share, with their type, data class and authoritative source.

A field's authoritative department wins when two departments contradict each other; the other
record is flagged. Values of sensitive and confidential fields are stored encrypted and shown
masked (or not at all) according to `cityos.security.policy.VISIBILITY`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Any

FieldType = str  # int | float | bool | code | date


@dataclass(frozen=True)
class FieldSpec:
    name: str
    type: FieldType
    data_class: str
    authority: str  # the department whose record wins on contradiction
    zh: str
    codes: tuple[str, ...] = ()  # the vocabulary of a code field

    def parse(self, value: Any) -> Any:
        """The value checked and normalised for this field; ValueError on a wrong type."""
        if self.type == "bool":
            if not isinstance(value, bool):
                raise ValueError(f"{self.name} is true or false")
            return value
        if self.type == "int":
            if isinstance(value, bool) or not isinstance(value, int) or not -10**9 < value < 10**9:
                raise ValueError(f"{self.name} is an integer")
            return value
        if self.type == "float":
            if isinstance(value, bool) or not isinstance(value, int | float) or not -1e12 < value < 1e12:
                raise ValueError(f"{self.name} is a number")
            return float(value)
        if self.type == "code":
            if not isinstance(value, str) or (self.codes and value not in self.codes) or len(value) > 32:
                allowed = ", ".join(self.codes) if self.codes else "a short code"
                raise ValueError(f"{self.name} is one of {allowed}")
            return value
        if self.type == "date":
            if not isinstance(value, str):
                raise ValueError(f"{self.name} is an ISO date (YYYY-MM-DD)")
            try:
                parsed = date.fromisoformat(value)
            except ValueError as exc:
                raise ValueError(f"{self.name} is an ISO date (YYYY-MM-DD)") from exc
            if not date(1890, 1, 1) <= parsed <= date(2200, 1, 1):
                raise ValueError(f"{self.name} is out of range")
            return parsed.isoformat()
        raise ValueError(f"unknown field type {self.type}")


# Departments (the ids the departments' accounts carry).
PUBLIC_SECURITY = "public-security"      # 公安 (户籍)
CIVIL_AFFAIRS = "civil-affairs"          # 民政
DISABLED_FED = "disabled-persons"        # 残联
HUMAN_RESOURCES = "human-resources"      # 人社 (就业, 社保)
HEALTH = "health"                        # 卫健 (计生, 医疗)
VETERANS = "veterans"                    # 退役军人事务
MARKET = "market-regulation"             # 市场监管 (登记)
TAX = "tax"                              # 税务
SCIENCE = "science-technology"           # 科技 (高企认定)
INDUSTRY = "industry-it"                 # 工信 (专精特新)

INDUSTRY_SECTIONS = tuple("ABCDEFGHIJKLMNOPQRST")  # GB/T 4754-2017 门类
INDUSTRY_NAMES = dict(zip(INDUSTRY_SECTIONS, (
    "农、林、牧、渔业", "采矿业", "制造业", "电力、热力、燃气及水生产和供应业", "建筑业", "批发和零售业",
    "交通运输、仓储和邮政业", "住宿和餐饮业", "信息传输、软件和信息技术服务业", "金融业", "房地产业",
    "租赁和商务服务业", "科学研究和技术服务业", "水利、环境和公共设施管理业", "居民服务、修理和其他服务业", "教育",
    "卫生和社会工作", "文化、体育和娱乐业", "公共管理、社会保障和社会组织", "国际组织"), strict=True))
SIZE_CLASSES = ("micro", "small", "medium", "large")  # 大中小微 (统计上大中小微型企业划分办法)
EMPLOYMENT = ("employed", "unemployed", "retired", "student", "none")
CREDIT_GRADES = ("A", "B", "M", "C", "D")  # 纳税信用等级
HUKOU = ("local", "other")

PERSON_FIELDS: dict[str, FieldSpec] = {f.name: f for f in (
    FieldSpec("birth_date", "date", "internal", PUBLIC_SECURITY, "出生日期"),
    FieldSpec("hukou", "code", "internal", PUBLIC_SECURITY, "户籍", HUKOU),
    FieldSpec("household_size", "int", "internal", PUBLIC_SECURITY, "家庭人口"),
    FieldSpec("living_alone", "bool", "sensitive", CIVIL_AFFAIRS, "独居"),
    FieldSpec("disability_level", "int", "sensitive", DISABLED_FED, "残疾等级(0 无, 1 最重)"),
    FieldSpec("employment", "code", "internal", HUMAN_RESOURCES, "就业状态", EMPLOYMENT),
    FieldSpec("unemployed_months", "int", "internal", HUMAN_RESOURCES, "失业月数"),
    FieldSpec("pension_insured", "bool", "internal", HUMAN_RESOURCES, "参加养老保险"),
    FieldSpec("income_per_capita", "float", "confidential", CIVIL_AFFAIRS, "家庭人均月收入"),
    FieldSpec("household_assets", "float", "confidential", CIVIL_AFFAIRS, "家庭财产"),
    FieldSpec("one_child_certificate", "bool", "internal", HEALTH, "独生子女证"),
    FieldSpec("care_level", "int", "sensitive", HEALTH, "失能等级(0-3)"),
    FieldSpec("children_under_3", "int", "internal", PUBLIC_SECURITY, "三岁以下子女数"),
    FieldSpec("veteran", "bool", "internal", VETERANS, "退役军人"),
    FieldSpec("graduation_year", "int", "internal", HUMAN_RESOURCES, "毕业年份"),
    FieldSpec("business_owner", "bool", "internal", MARKET, "个体或创业"),
)}

COMPANY_FIELDS: dict[str, FieldSpec] = {f.name: f for f in (
    FieldSpec("registered_on", "date", "public", MARKET, "成立日期"),
    FieldSpec("industry", "code", "public", MARKET, "行业门类(GB/T 4754)", INDUSTRY_SECTIONS),
    FieldSpec("size_class", "code", "internal", MARKET, "企业规模", SIZE_CLASSES),
    FieldSpec("employees", "int", "internal", HUMAN_RESOURCES, "参保职工数"),
    FieldSpec("layoff_rate", "float", "internal", HUMAN_RESOURCES, "裁员率"),
    FieldSpec("social_insurance_paid", "bool", "internal", HUMAN_RESOURCES, "足额缴纳社保"),
    FieldSpec("new_graduate_hires", "int", "internal", HUMAN_RESOURCES, "新招高校毕业生"),
    FieldSpec("tax_credit", "code", "confidential", TAX, "纳税信用等级", CREDIT_GRADES),
    FieldSpec("revenue", "float", "confidential", TAX, "年营业收入(万元)"),
    FieldSpec("rd_ratio", "float", "confidential", TAX, "研发费用占比"),
    FieldSpec("high_tech_certified", "bool", "public", SCIENCE, "高新技术企业"),
    FieldSpec("specialized_sme", "bool", "public", INDUSTRY, "专精特新"),
    FieldSpec("startup_loan", "float", "internal", HUMAN_RESOURCES, "创业担保贷款余额(万元)"),
)}

# Derived fields the engine computes at the evaluation date (never shared by a department).
DERIVED: dict[str, tuple[str, str]] = {"age": ("birth_date", "int"), "company_age": ("registered_on", "int")}


def fields_of(kind: str) -> dict[str, FieldSpec]:
    return PERSON_FIELDS if kind == "person" else COMPANY_FIELDS


def field_type(kind: str, name: str) -> str | None:
    if name in DERIVED and DERIVED[name][0] in fields_of(kind):
        return DERIVED[name][1]
    spec = fields_of(kind).get(name)
    return spec.type if spec else None
