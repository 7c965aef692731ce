"""The message catalogue: every code a page or a generated title shows, Chinese first with English beside.

One place for display names, so a category, level, department, status or timeline entry reads the
same in an incident title (written by the ops domain), in the cockpit and in the portal. Domains
and pages call `label(kind, code)`; an unknown code is shown as it is (never an empty string), and a
dotted category falls back to its nearest known parent (`environment.air.pm25` → 空气污染).

Times shown to people go through `local_time` (the city's zone, `CITYOS_TIMEZONE`, default
Asia/Shanghai, with the zone written out); APIs keep ISO 8601 in UTC.
"""

from __future__ import annotations

import os
from datetime import datetime, tzinfo
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

CATEGORIES: dict[str, str] = {
    "environment": "环境 Environment",
    "environment.air": "空气污染 Air pollution",
    "environment.water": "水质污染 Water pollution",
    "environment.noise": "噪声扰民 Noise",
    "flood": "洪水 Flood",
    "fire": "火灾 Fire",
    "smoke": "烟雾报警 Smoke alarm",
    "health": "健康 Health",
    "health.fall": "老人跌倒 Fall",
    "traffic": "交通 Traffic",
    "traffic.congestion": "交通拥堵 Congestion",
    "parking": "停车 Parking",
    "pothole": "道路坑洼 Pothole",
    "streetlight": "路灯故障 Streetlight",
    "graffiti": "乱涂乱画 Graffiti",
    "waste": "垃圾满溢 Waste",
    "sanitation": "环境卫生 Sanitation",
    "urban": "城市管理 Urban management",
    "energy": "能源 Energy",
    "eldercare": "养老 Elderly care",
    "water": "供水 Water supply",
    "network": "网络 Network",
    "network.outage": "网络中断 Network outage",
    "device": "设备 Device",
    "device.fault": "设备故障 Device fault",
    "device.offline": "设备离线 Device offline",
    "device.battery": "电池低电量 Low battery",
    "device.data": "数据质量 Data quality",
    "storm": "告警风暴 Alarm storm",
    # alarm category.subCategory (rules without an incident category)
    "device.lowBattery": "电池低电量 Low battery",
    "device.dataSpike": "数据突变 Data spike",
    "device.dataFrozen": "数据冻结 Frozen data",
    "environment.airPollution": "空气污染 Air pollution",
    "environment.waterPollution": "水质污染 Water pollution",
    "environment.noisePollution": "噪声扰民 Noise",
    "environment.wasteContainerFull": "垃圾满溢 Waste bin full",
    "naturalDisaster.flood": "洪水 Flood",
    "security.fire": "火灾 Fire",
    "traffic.trafficJam": "交通拥堵 Congestion",
    "traffic.parkingSensor": "车位传感器离线 Parking sensor silent",
    "cityOperations": "城市运行 City operations",
    "naturalDisaster": "自然灾害 Natural disaster",
    "security": "安全 Safety",
}

LEVELS: dict[str, str] = {
    "general": "一般 General", "large": "较大 Large", "major": "重大 Major",
    "especially_major": "特别重大 Especially major",
}

SEVERITIES: dict[str, str] = {
    "critical": "严重 Critical", "major": "主要 Major", "minor": "次要 Minor", "warning": "警告 Warning",
    "info": "提示 Info", "informational": "提示 Info", "low": "低 Low", "medium": "中 Medium", "high": "高 High",
}

STATUSES: dict[str, str] = {
    "reported": "已上报 Reported", "dispatched": "已派遣 Dispatched", "accepted": "已接单 Accepted",
    "on_site": "已到场 On site", "resolved": "已处置 Resolved", "closed": "已关闭 Closed",
    "reopened": "已重开 Reopened", "merged": "已合并 Merged",
    # alarms
    "active": "活动 Active", "acknowledged": "已确认 Acknowledged", "cleared": "已清除 Cleared",
    # devices
    "offline": "离线 Offline", "inactive": "未激活 Inactive", "disabled": "已停用 Disabled",
    "normal": "正常 Normal", "alarm": "告警 Alarm",
}

# Device profiles (cityos/iot/profiles.json ids).
PROFILES: dict[str, str] = {
    "air-quality": "空气质量微站 Air quality station", "water-quality": "水质探头 Water-quality probe",
    "noise": "噪声监测 Noise monitor", "traffic-flow": "车流检测器 Traffic detector",
    "traffic-zone": "视频/雷达检测区 Traffic zone detector",
    "parking-spot": "车位传感器 Parking sensor", "smoke": "烟感 Smoke detector",
    "water-level": "水位计 Water-level gauge", "smart-meter": "智能电表 Smart meter",
    "waste-bin": "智能垃圾桶 Smart waste bin", "streetlight": "智慧路灯 Smart streetlight",
    "wearable": "智能手环 Wristband", "gateway": "网关 Gateway",
}

SOURCES: dict[str, str] = {
    "alarm": "告警 Alarm", "open311": "市民上报 Citizen report", "hotline": "12345 热线 Hotline",
    "manual": "人工录入 Manual", "environment": "环境监测 Environment monitoring",
}

# Timeline entries of an incident (its `action`).
ACTIONS: dict[str, str] = {
    "report": "上报 Reported", "dispatch": "派遣 Dispatched", "accept": "接单 Accepted", "arrive": "到场 On site",
    "resolve": "处置完成 Resolved", "close": "关闭 Closed", "reopen": "重开 Reopened", "merge": "合并 Merged",
    "split": "拆分 Split", "update": "升级 Updated", "escalate": "超时升级 Escalated",
    "sla.yellow": "临期提醒 SLA at risk", "alarm.cleared": "告警已清除 Alarm cleared",
    "affected": "受影响设备 Affected devices", "storm": "告警风暴 Alarm storm",
}

DEPARTMENTS: dict[str, str] = {
    "city-operations": "城市运行管理中心 City Operations Centre",
    "environment": "生态环境局 Ecology & Environment",
    "water-authority": "水务局 Water Authority",
    "fire-rescue": "消防救援支队 Fire & Rescue",
    "urban-management": "城市管理局 Urban Management",
    "transport": "交通运输局 Transport",
    "sanitation": "环卫中心 Sanitation",
    "energy": "供电局 Energy",
    "civil-affairs": "民政局 Civil Affairs",
    "it-operations": "信息中心运维 IT Operations",
    "market-regulation": "市场监管局 Market Regulation",
    "public-security": "公安局 Public Security",
    "tax": "税务局 Taxation",
    "human-resources-social-security": "人社局 Human Resources & Social Security",
    "housing-construction": "住建局 Housing & Construction",
    "natural-resources": "自然资源局 Natural Resources",
    "health": "卫健委 Health Commission",
    "housing-fund": "公积金中心 Housing Provident Fund",
    "medical-insurance": "医保局 Medical Insurance",
    "applicant": "申请人 Applicant",
}

# Places of the simulated city (its districts and rivers are named in pinyin in the hub).
PLACES: dict[str, str] = {
    "Xiuying": "秀英区", "Longhua": "龙华区", "Qiongshan": "琼山区", "Meilan": "美兰区", "Haidian": "海甸",
    "Binhai": "滨海", "Jinpan": "金盘", "Guoxing": "国兴", "Fucheng": "府城", "Baishamen": "白沙门",
    "Xinbu": "新埠", "Lingshan": "灵山", "Yehai": "椰海", "Changliu": "长流", "Dongshan": "东山",
    "Shishan": "石山", "Yongxing": "永兴", "Sanjiang": "三江",
    "Nandu River": "南渡江", "Meishe River": "美舍河", "Wuyuan River": "五源河",
    # Roads of the simulated city (the base map's labels).
    "Xiuying Road": "秀英路", "Longkun Road": "龙昆路", "Haixiu Road": "海秀路", "Guomao Road": "国贸路",
    "Datong Road": "大同路", "Haifu Road": "海府路", "Qiongshan Avenue": "琼山大道", "Lingshan Avenue": "灵山大道",
    "Xinda Road": "新大路", "Meilan Road": "美兰路", "Jiangdong Road": "江东路", "Binhai Avenue": "滨海大道",
    "Changdi Road": "长堤路", "Jinmao Road": "金贸路", "Nanhai Avenue": "南海大道", "Longhua Road": "龙华路",
    "Fengxiang Road": "凤翔路", "Baiyi Road": "白驹路", "Nansha Road": "南沙路", "Yehai Avenue": "椰海大道",
    "Guoxing Avenue": "国兴大道",
}

ROLES: dict[str, str] = {
    "system": "系统 System", "operator": "值班员 Operator", "official": "部门人员 Official",
    "sys_admin": "系统管理员 Administrator", "auditor": "审计员 Auditor", "citizen": "市民 Citizen",
    "company": "企业 Company", "anonymous": "匿名 Anonymous", "service": "服务 Service",
}

SLA: dict[str, str] = {
    "ok": "正常 On time", "yellow": "临期 At risk", "breached": "超时 Breached", "met": "达标 Met",
}

_KINDS: dict[str, dict[str, str]] = {
    "category": CATEGORIES, "level": LEVELS, "severity": SEVERITIES, "status": STATUSES, "source": SOURCES,
    "action": ACTIONS, "department": DEPARTMENTS, "place": PLACES, "sla": SLA, "role": ROLES,
    "profile": PROFILES,
}


def label(kind: str, code: Any) -> str:
    """The display name of `code` ("中文 English"); the code itself when the catalogue has none."""
    if code is None or code == "":
        return ""
    text = str(code)
    table = _KINDS.get(kind, {})
    found = table.get(text)
    if found is not None:
        return found
    if kind == "category":
        parts = text.split(".")
        while len(parts) > 1:
            parts.pop()
            parent = table.get(".".join(parts))
            if parent is not None:
                return parent
    if kind == "place" and text.endswith((" District", " River")):
        return text
    return text


def place(name: Any) -> str:
    """A place as "中文 English" when the catalogue knows its Chinese name ("龙华区 Longhua")."""
    if not name:
        return ""
    text = str(name)
    zh = PLACES.get(text)
    return f"{zh} {text}" if zh else text


def category(code: Any) -> str:
    return label("category", code)


def department(code: Any) -> str:
    return label("department", code)


def incident_title(category_code: str, *places: Any) -> str:
    """An incident's title from its category and place: "空气污染 Air pollution · 龙华区 Longhua"."""
    parts = [category(category_code)] + [place(p) for p in places if p]
    return " · ".join(parts)[:200]


# ------------------------------------------------------------------------------ time


@lru_cache(maxsize=8)
def _zone(name: str) -> tzinfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("Asia/Shanghai")


def city_zone() -> tzinfo:
    """The city's time zone (`CITYOS_TIMEZONE`, default Asia/Shanghai; an unknown name falls back to it)."""
    return _zone(os.environ.get("CITYOS_TIMEZONE", "Asia/Shanghai") or "Asia/Shanghai")


def zone_name(moment: datetime) -> str:
    """The zone as people read it: its abbreviation when it has letters (CST, CET), else "UTC+8"."""
    abbreviation = moment.tzname() or ""
    if abbreviation and abbreviation[0].isalpha() and not abbreviation.startswith(("+", "-")):
        return abbreviation
    offset = moment.utcoffset()
    minutes = int(offset.total_seconds() // 60) if offset is not None else 0
    sign = "+" if minutes >= 0 else "-"
    hours, rest = divmod(abs(minutes), 60)
    return f"UTC{sign}{hours}" + (f":{rest:02d}" if rest else "")


def local_time(value: Any, fmt: str = "%m-%d %H:%M", zone: bool = True) -> str:
    """An ISO 8601 time (or a datetime) in the city's zone, with the zone written after it.

    A naive value is taken as UTC (every stored time is UTC); text that is not a time is shown as is."""
    if value is None or value == "":
        return ""
    if isinstance(value, datetime):
        moment = value
    else:
        try:
            moment = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        except ValueError:
            return str(value)
    if moment.tzinfo is None:
        from datetime import UTC

        moment = moment.replace(tzinfo=UTC)
    local = moment.astimezone(city_zone())
    text = local.strftime(fmt)
    return f"{text} {zone_name(local)}" if zone else text
