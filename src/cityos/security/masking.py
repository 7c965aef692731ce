"""Masking of values and of NGSI-LD entities by data class.

`mask_entity` is what the hub calls on query results, notifications and exports:

    from cityos.security.masking import mask_entity
    out = mask_entity(entity, classes, principal, owning_department=dept)

Shapes recognised in masked values: Chinese resident ID numbers (`110***********1234`), mobile
numbers (`138****5678`), names in Chinese characters (`张*`), e-mail addresses (`z***@example.cn`);
any other string keeps its first and last character. Numbers and other JSON values become
``"***"``; GeoJSON geometries are coarsened to two decimals (about 1 km).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from cityos.security.policy import Principal, Visibility, visible_class

ID_NUMBER = re.compile(r"^\d{17}[\dXx]$")
MOBILE = re.compile(r"^1\d{10}$")
CJK_NAME = re.compile(r"^[\u4e00-\u9fff·]{2,8}$")
EMAIL = re.compile(r"^([^@\s]+)@([^@\s]+)$")
# For free text (audit details): the same shapes inside longer strings.
ID_IN_TEXT = re.compile(r"(?<!\d)(\d{3})\d{11}(\d{3}[\dXx])(?![\dXx])")
MOBILE_IN_TEXT = re.compile(r"(?<!\d)(1\d{2})\d{4}(\d{4})(?!\d)")

# Keys of an entity that are not attributes.
ENTITY_KEYS = frozenset({"id", "type", "@context", "scope", "createdAt", "modifiedAt", "deletedAt"})
ATTR_TYPES = frozenset({"Property", "Relationship", "GeoProperty", "LanguageProperty", "JsonProperty",
                        "VocabProperty", "ListProperty", "ListRelationship"})
# Where each NGSI-LD attribute type keeps its value.
VALUE_KEYS = ("value", "object", "languageMap", "json", "vocab", "valueList", "objectList")


def mask_string(value: str) -> str:
    if ID_NUMBER.match(value):
        return value[:3] + "*" * 11 + value[-4:]
    if MOBILE.match(value):
        return value[:3] + "****" + value[-4:]
    if CJK_NAME.match(value):
        return value[0] + "*" * (len(value) - 1)
    email = EMAIL.match(value)
    if email:
        return email.group(1)[:1] + "***@" + email.group(2)
    if len(value) <= 2:
        return value[:1] + "*"
    return value[0] + "*" * min(len(value) - 2, 8) + value[-1]


def _coarsen(coords: Any) -> Any:
    if isinstance(coords, list):
        return [_coarsen(c) for c in coords]
    if isinstance(coords, float | int) and not isinstance(coords, bool):
        return round(float(coords), 2)
    return coords


def mask_value(value: Any) -> Any:
    if isinstance(value, str):
        return mask_string(value)
    if isinstance(value, dict) and "coordinates" in value and "type" in value:
        return {**value, "coordinates": _coarsen(value["coordinates"])}
    if isinstance(value, dict):
        return {k: mask_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [mask_value(v) for v in value]
    return "***"


def mask_text(text: str) -> str:
    """Mask ID numbers and mobile numbers wherever they appear in a free-text string."""
    text = ID_IN_TEXT.sub(lambda m: m.group(1) + "*" * 11 + m.group(2), text)
    return MOBILE_IN_TEXT.sub(lambda m: m.group(1) + "****" + m.group(2), text)


# Public free text (Open311 descriptions, incident titles and descriptions published to the hub):
# what people type, separators and all. Resident ID numbers (GB 11643-1999: 6-digit region code,
# birth date 18xx/19xx/20xx, 3-digit sequence, check digit 0-9 or X), mobile numbers (1[3-9] + 9
# digits, optionally +86 and spaces or dashes in 3-4-4 groups), landlines (0 + 2-3 digit area code,
# 7-8 digit number, optionally in parentheses or with a dash/space, optionally an extension).
PUBLIC_ID = re.compile(r"(?<![0-9A-Za-z])(\d{3})\d{3}(?:18|19|20)\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])"
                       r"(\d{3}[\dXx])(?![0-9A-Za-z])")
PUBLIC_MOBILE = re.compile(r"(?<![\d+])((?:\+?86[ -]?)?1[3-9]\d)[ -]?\d{4}[ -]?(\d{4})(?!\d)")
PUBLIC_LANDLINE = re.compile(r"(?<![\d(])(\(?0\d{2,3}\)?)[ -]?\d{3,4}[ -]?\d{2}(\d{2})"
                             r"(?:[ -]?(?:转|ext\.?|x)\s?\d{1,6})?(?!\d)", re.IGNORECASE)


def mask_public_text(text: str) -> str:
    """Mask resident ID numbers and phone numbers (mobile and landline) in free text shown to anyone.

    Stricter than `mask_text` (which serves audit details): it also finds numbers written with
    separators and landlines, and checks an ID number's birth date so that order numbers are left alone."""
    text = PUBLIC_ID.sub(lambda m: m.group(1) + "*" * 11 + m.group(2), text)
    text = PUBLIC_MOBILE.sub(lambda m: m.group(1) + "****" + m.group(2), text)
    return PUBLIC_LANDLINE.sub(lambda m: m.group(1) + "-****" + m.group(2), text)


def mask_json_text(value: Any) -> Any:
    """`mask_text` over every string of a JSON value (audit details, export rows)."""
    if isinstance(value, str):
        return mask_text(value)
    if isinstance(value, dict):
        return {k: mask_json_text(v) for k, v in value.items()}
    if isinstance(value, list):
        return [mask_json_text(v) for v in value]
    return value


def _mask_instance(instance: Any) -> Any:
    if not isinstance(instance, dict) or instance.get("type") not in ATTR_TYPES:
        return mask_value(instance)  # simplified / keyValues representation
    out = dict(instance)
    for key in VALUE_KEYS:
        if key in out:
            out[key] = mask_value(out[key])
    return out


@dataclass
class MaskResult:
    entity: dict[str, Any]
    hidden: list[str] = field(default_factory=list)
    masked: list[str] = field(default_factory=list)
    # Sensitive or confidential attributes shown in clear: the caller audits this read.
    revealed: list[str] = field(default_factory=list)


def mask_entity_report(entity: dict[str, Any], classes: dict[str, str], principal: Principal | None,
                       owning_department: str | None = None, default: str = "internal") -> MaskResult:
    """Mask one entity (normalized, concise or keyValues) for `principal`.

    `classes` maps attribute names (as they appear in `entity`) to data classes; attributes not
    listed get `default` (fail-closed: "internal"). Attribute metadata (observedAt, unitCode, …)
    is kept; sub-properties of a masked attribute are kept as they are.
    """
    result = MaskResult(entity={})
    for name, value in entity.items():
        if name in ENTITY_KEYS:
            result.entity[name] = value
            continue
        data_class = classes.get(name, default)
        seen = visible_class(principal, data_class, owning_department)
        if seen is Visibility.HIDDEN:
            result.hidden.append(name)
            continue
        if seen is Visibility.MASKED:
            result.masked.append(name)
            result.entity[name] = ([_mask_instance(i) for i in value] if isinstance(value, list)
                                   and all(isinstance(i, dict) and i.get("type") in ATTR_TYPES for i in value)
                                   else _mask_instance(value))
            continue
        if data_class in ("sensitive", "confidential"):
            result.revealed.append(name)
        result.entity[name] = value
    return result


def mask_entity(entity: dict[str, Any], classes: dict[str, str], principal: Principal | None,
                owning_department: str | None = None, default: str = "internal") -> dict[str, Any]:
    """The masked copy of `entity` for `principal` (see `mask_entity_report`)."""
    return mask_entity_report(entity, classes, principal, owning_department, default).entity
