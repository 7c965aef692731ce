"""Chinese + English display names for the codes the services API returns (departments, licence
types, enumeration values, life events). Unknown codes are shown as they are."""

from __future__ import annotations

from cityos.core import messages

# Departments come from the one message catalogue (cityos.core.messages), shared with the cockpit.
DEPARTMENTS: dict[str, str] = messages.DEPARTMENTS

LICENCE_TYPES: dict[str, str] = {
    "business-licence": "营业执照 Business licence",
    "id-card": "居民身份证 ID card",
    "household-register": "户口簿 Household register",
    "property-certificate": "不动产权证书 Property certificate",
    "birth-certificate": "出生医学证明 Birth certificate",
    "construction-permit": "建筑工程施工许可证 Construction permit",
    "construction-planning-permit": "建设工程规划许可证 Planning permit",
    "social-security-card": "社会保障卡 Social security card",
}

LIFE_EVENTS: dict[str, str] = {
    "": "全部 All",
    "birth": "出生 Birth",
    "start-business": "开办企业 Starting a business",
    "run-business": "企业经营 Running a business",
    "employment": "就业 Employment",
    "housing": "住房 Housing",
    "construction": "工程建设 Construction",
    "retirement": "退休 Retirement",
}

VALUES: dict[str, str] = {
    "llc": "有限责任公司 LLC", "sole-proprietorship": "个人独资企业 Sole proprietorship",
    "partnership": "合伙企业 Partnership", "joint-stock": "股份有限公司 Joint-stock company",
    "contact": "联络信息 Contact details", "address": "住所 Address", "name": "名称 Name",
    "capital": "注册资本 Registered capital", "legal-representative": "法定代表人 Legal representative",
    "scope": "经营范围 Business scope", "male": "男 Male", "female": "女 Female",
    "rent": "租房 Rent", "purchase": "购房 Purchase", "retirement": "退休 Retirement", "medical": "大病医疗 Medical",
    "icbc": "工商银行 ICBC", "abc": "农业银行 ABC", "boc": "中国银行 BOC", "ccb": "建设银行 CCB",
    "bocom": "交通银行 BOCOM", "online": "网上办理 Online", "hall": "窗口办理 Service hall",
    "citizen": "个人 Citizens", "enterprise": "法人 Companies",
}


FIELDS: dict[str, str] = {
    "companyName": "企业名称 Company name", "creditCode": "统一社会信用代码 Unified credit code",
    "changeType": "变更事项 Change", "newValue": "变更后内容 New value", "withinCity": "市内迁移 Within the city",
}


def field(name: str) -> str:
    """A form field's label when its schema gives no title."""
    return FIELDS.get(name, name)


def department(code: object) -> str:
    return DEPARTMENTS.get(str(code), str(code)) if code else ""


def licence_type(code: object) -> str:
    return LICENCE_TYPES.get(str(code), str(code)) if code else ""


def value(code: object) -> str:
    return VALUES.get(str(code), str(code))
