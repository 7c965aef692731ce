"""JSON Schema → form fields: the mapping logic of the portal's form renderer, free of any UI.

A service guide carries the application form as a JSON Schema (draft 2020-12 subset). This module
turns it into `Field`s (what widget, which limits), checks and coerces the values the widgets give
back, and reads the server's field-level errors out of a ProblemDetails body. `forms.py` draws the
fields with NiceGUI.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field
from typing import Any, Literal

Kind = Literal["string", "text", "number", "integer", "boolean", "enum", "date"]

_ENUM_TYPES = ("string", "integer", "number")


@dataclass(frozen=True)
class Field:
    name: str
    kind: Kind
    label: str
    required: bool = False
    description: str = ""
    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: float | None = None
    exclusive_maximum: float | None = None
    min_length: int | None = None
    max_length: int | None = None
    pattern: str | None = None
    options: tuple[tuple[Any, str], ...] = ()
    default: Any = None
    step: float | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def hint(self) -> str:
        """A short human hint of the limits, e.g. '1–100' or 'max. 50 characters'."""
        parts: list[str] = []
        if self.kind in ("number", "integer"):
            low = self.minimum if self.minimum is not None else self.exclusive_minimum
            high = self.maximum if self.maximum is not None else self.exclusive_maximum
            if low is not None and high is not None:
                parts.append(f"{_num(low)}–{_num(high)}")
            elif low is not None:
                parts.append(f"≥ {_num(low)}" if self.minimum is not None else f"> {_num(low)}")
            elif high is not None:
                parts.append(f"≤ {_num(high)}" if self.maximum is not None else f"< {_num(high)}")
        if self.kind in ("string", "text"):
            if self.min_length and self.max_length:
                parts.append(f"{self.min_length}–{self.max_length} 字 chars")
            elif self.max_length:
                parts.append(f"≤ {self.max_length} 字 chars")
            elif self.min_length:
                parts.append(f"≥ {self.min_length} 字 chars")
        return " · ".join(parts)


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _type_of(prop: dict[str, Any]) -> str | None:
    kind = prop.get("type")
    if isinstance(kind, list):  # ["string", "null"] → string
        kinds = [k for k in kind if k != "null"]
        return kinds[0] if kinds else None
    return kind if isinstance(kind, str) else None


def value_label(value: Any) -> str:
    from cityos.web.portal.labels import value as label

    return label(value)


def _options(prop: dict[str, Any]) -> tuple[tuple[Any, str], ...]:
    if isinstance(prop.get("enum"), list):
        values = [v for v in prop["enum"] if v is not None]
        names = prop.get("enumNames") or prop.get("x-enumNames")
        if isinstance(names, list) and len(names) == len(values):
            return tuple((v, str(n)) for v, n in zip(values, names, strict=True))
        return tuple((v, value_label(v)) for v in values)
    for key in ("oneOf", "anyOf"):
        choices = prop.get(key)
        if isinstance(choices, list) and choices and all(isinstance(c, dict) and "const" in c for c in choices):
            return tuple((c["const"], str(c.get("title", c["const"]))) for c in choices)
    return ()


def field_from_property(name: str, prop: dict[str, Any], required: bool) -> Field:
    """One property of an object schema → a `Field`."""
    from cityos.web.portal.labels import field as field_label

    label = str(prop.get("title") or field_label(name))
    description = str(prop.get("description") or "")
    kind_name = _type_of(prop)
    options = _options(prop)
    common: dict[str, Any] = {"name": name, "label": label, "required": required, "description": description,
                              "default": prop.get("default"), "extra": prop}
    if options and (kind_name in _ENUM_TYPES or kind_name is None):
        return Field(kind="enum", options=options, **common)
    if kind_name == "boolean":
        return Field(kind="boolean", **common)
    if kind_name in ("number", "integer"):
        def limit(key: str) -> float | None:
            value = prop.get(key)
            return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None

        step = prop.get("multipleOf")
        return Field(kind="integer" if kind_name == "integer" else "number", minimum=limit("minimum"),
                     maximum=limit("maximum"), exclusive_minimum=limit("exclusiveMinimum"),
                     exclusive_maximum=limit("exclusiveMaximum"),
                     step=float(step) if isinstance(step, int | float) else (1.0 if kind_name == "integer" else None),
                     **common)
    if kind_name == "string" and prop.get("format") == "date":
        return Field(kind="date", **common)
    max_length = prop.get("maxLength")
    min_length = prop.get("minLength")
    long_text = prop.get("format") == "textarea" or prop.get("x-widget") == "textarea" or \
        (isinstance(max_length, int) and max_length > 200)
    return Field(kind="text" if long_text else "string",
                 min_length=min_length if isinstance(min_length, int) else None,
                 max_length=max_length if isinstance(max_length, int) else None,
                 pattern=prop.get("pattern") if isinstance(prop.get("pattern"), str) else None, **common)


def fields_from_schema(schema: dict[str, Any] | None) -> list[Field]:
    """The fields of an object schema, in the schema's own order (or `x-order` when given).

    Nested objects and arrays are not drawn as widgets; they are rare in service forms and the
    server still validates the whole document.
    """
    if not isinstance(schema, dict):
        return []
    props = schema.get("properties")
    if not isinstance(props, dict):
        return []
    required = set(schema.get("required") or [])
    names = list(props)
    order = schema.get("x-order") or schema.get("propertyOrder")
    if isinstance(order, list):
        names = [n for n in order if n in props] + [n for n in names if n not in order]
    out: list[Field] = []
    for name in names:
        prop = props[name]
        if not isinstance(prop, dict) or _type_of(prop) in ("object", "array") or prop.get("readOnly"):
            continue
        out.append(field_from_property(name, prop, name in required))
    return out


def _empty(value: Any) -> bool:
    return value is None or (isinstance(value, str) and value.strip() == "")


def coerce(spec: Field, raw: Any) -> Any:
    """The widget's value in the schema's type (None when empty). Raises ValueError when it cannot be."""
    if spec.kind == "boolean":
        return bool(raw) if raw is not None else None
    if _empty(raw):
        return None
    if spec.kind == "integer":
        if isinstance(raw, bool):
            raise ValueError("not a whole number")
        number = float(raw)
        if not number.is_integer():
            raise ValueError("not a whole number")
        return int(number)
    if spec.kind == "number":
        if isinstance(raw, bool):
            raise ValueError("not a number")
        number = float(raw)
        return int(number) if number.is_integer() and not isinstance(raw, float) else number
    if spec.kind == "date":
        text = str(raw).strip().replace("/", "-")
        return dt.date.fromisoformat(text).isoformat()
    if spec.kind == "enum":
        for value, _label in spec.options:
            if value == raw or str(value) == str(raw):
                return value
        raise ValueError("not one of the choices")
    return str(raw).strip() if isinstance(raw, str) else str(raw)


def check(spec: Field, raw: Any) -> tuple[Any, str | None]:
    """(coerced value, error message in Chinese and English or None)."""
    try:
        value = coerce(spec, raw)
    except (TypeError, ValueError):
        messages = {"integer": "请输入整数 Enter a whole number", "number": "请输入数字 Enter a number",
                    "date": "请输入日期 YYYY-MM-DD Enter a date", "enum": "请选择一项 Choose one option"}
        return None, messages.get(spec.kind, "格式不正确 Invalid value")
    if spec.kind == "boolean":
        if spec.extra.get("const") is True and value is not True:
            return value, "请勾选 Please tick this box"
        return (False if value is None else value), None
    if value is None:
        return value, ("必填 Required" if spec.required else None)
    if spec.kind in ("integer", "number"):
        if spec.minimum is not None and value < spec.minimum:
            return value, f"不能小于 {_num(spec.minimum)} Must be ≥ {_num(spec.minimum)}"
        if spec.maximum is not None and value > spec.maximum:
            return value, f"不能大于 {_num(spec.maximum)} Must be ≤ {_num(spec.maximum)}"
        if spec.exclusive_minimum is not None and value <= spec.exclusive_minimum:
            return value, f"必须大于 {_num(spec.exclusive_minimum)} Must be > {_num(spec.exclusive_minimum)}"
        if spec.exclusive_maximum is not None and value >= spec.exclusive_maximum:
            return value, f"必须小于 {_num(spec.exclusive_maximum)} Must be < {_num(spec.exclusive_maximum)}"
    if spec.kind in ("string", "text") and isinstance(value, str):
        if spec.min_length is not None and len(value) < spec.min_length:
            return value, f"至少 {spec.min_length} 个字符 At least {spec.min_length} characters"
        if spec.max_length is not None and len(value) > spec.max_length:
            return value, f"最多 {spec.max_length} 个字符 At most {spec.max_length} characters"
        if spec.pattern:
            try:
                matched = re.search(spec.pattern, value) is not None
            except re.error:
                matched = True  # a pattern Python cannot read: leave it to the server
            if not matched:
                return value, "格式不正确 Invalid format"
    return value, None


def collect(specs: list[Field], raw: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """(form document, {field: error}). Empty optional fields are left out of the document."""
    doc: dict[str, Any] = {}
    errors: dict[str, str] = {}
    for spec in specs:
        value, error = check(spec, raw.get(spec.name))
        if error:
            errors[spec.name] = error
        elif value is not None:
            doc[spec.name] = value
    return doc, errors


_PATH_SPLIT = re.compile(r"[./]")


def _field_name(path: Any) -> str:
    """'form.age', '/form/age', ['body', 'form', 'age'] → 'age'; '' for the document itself.

    A path outside the form (e.g. 'materials[0].uploadId') is kept whole: it names no form field.
    """
    parts = [str(p) for p in path] if isinstance(path, list | tuple) else \
        [p for p in _PATH_SPLIT.split(str(path)) if p]
    parts = [p for p in parts if p not in ("body", "$", "#")]
    if parts and parts[0] == "form":
        return parts[-1] if len(parts) > 1 else ""
    return ".".join(parts) if len(parts) > 1 else (parts[0] if parts else "")


def field_errors(problem: Any) -> dict[str, str]:
    """The field-level errors of a ProblemDetails body, as {field: message}.

    Reads the shapes an API may use: `errors` / `fieldErrors` as a list of {field|path|name|loc,
    message|reason|msg} or as a {field: message} mapping, RFC 7807 `invalid-params` /
    `invalidParams`, and a `detail` of 'field: message; field: message'.
    """
    out: dict[str, str] = {}
    if not isinstance(problem, dict):
        return out
    for key in ("errors", "fieldErrors", "field_errors", "invalidParams", "invalid-params", "invalid_params"):
        entries = problem.get(key)
        if isinstance(entries, dict):
            for name, message in entries.items():
                text = "; ".join(map(str, message)) if isinstance(message, list) else str(message)
                out.setdefault(_field_name(name), text)
        elif isinstance(entries, list):
            for entry in entries:
                if not isinstance(entry, dict):
                    continue
                path = next((entry[k] for k in ("field", "path", "name", "loc", "pointer", "instancePath")
                             if k in entry), "")
                message = next((str(entry[k]) for k in ("message", "reason", "msg", "detail") if k in entry), "")
                name = _field_name(path)
                if not name and isinstance(entry.get("missing"), str):  # jsonschema 'required'
                    name = entry["missing"]
                if not name:
                    match = re.match(r"'([^']+)' is a required property", message)
                    if match:
                        name = match.group(1)
                out.setdefault(name, message or "格式不正确 Invalid value")
    if not out and isinstance(problem.get("detail"), str):
        for part in problem["detail"].split(";"):
            name, sep, message = part.partition(":")
            if sep and name.strip() and " " not in _field_name(name.strip()):
                out.setdefault(_field_name(name.strip()), message.strip())
    return out
