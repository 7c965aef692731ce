"""The portal's JSON Schema → form mapping, checks and server error reading (no browser)."""

from __future__ import annotations

from cityos.web.portal.schema import Field, check, collect, field_errors, fields_from_schema

SCHEMA = {
    "type": "object",
    "required": ["companyName", "capital", "founded", "kind"],
    "properties": {
        "companyName": {"type": "string", "title": "企业名称 Company name", "minLength": 2, "maxLength": 50},
        "capital": {"type": "number", "title": "注册资本 Capital", "minimum": 1, "maximum": 1000000},
        "staff": {"type": "integer", "minimum": 1},
        "kind": {"type": "string", "enum": ["llc", "jsc"], "enumNames": ["有限责任公司", "股份有限公司"]},
        "founded": {"type": "string", "format": "date"},
        "remote": {"type": "boolean", "default": False},
        "scope": {"type": "string", "maxLength": 2000},
        "size": {"oneOf": [{"const": 1, "title": "small"}, {"const": 2, "title": "large"}]},
        "address": {"type": "object", "properties": {"street": {"type": "string"}}},
        "note": {"type": ["string", "null"]},
    },
}


def test_fields_map_each_json_schema_type_to_a_widget_kind() -> None:
    fields = {f.name: f for f in fields_from_schema(SCHEMA)}
    assert list(fields) == ["companyName", "capital", "staff", "kind", "founded", "remote", "scope", "size", "note"]
    assert fields["companyName"].kind == "string" and fields["companyName"].required
    assert fields["companyName"].label == "企业名称 Company name"
    assert (fields["capital"].kind, fields["capital"].minimum, fields["capital"].maximum) == ("number", 1, 1000000)
    assert fields["staff"].kind == "integer" and fields["staff"].step == 1 and not fields["staff"].required
    assert fields["kind"].kind == "enum"
    assert fields["kind"].options == (("llc", "有限责任公司"), ("jsc", "股份有限公司"))
    assert fields["founded"].kind == "date"
    assert fields["remote"].kind == "boolean"
    assert fields["scope"].kind == "text"  # long strings get a text area
    assert fields["size"].kind == "enum" and fields["size"].options == ((1, "small"), (2, "large"))
    assert fields["note"].kind == "string"
    assert fields["capital"].hint == "1–1000000"


def test_order_and_odd_schemas() -> None:
    assert fields_from_schema(None) == [] and fields_from_schema({"type": "object"}) == []
    ordered = fields_from_schema({"properties": {"a": {"type": "string"}, "b": {"type": "string"}}, "x-order": ["b"]})
    assert [f.name for f in ordered] == ["b", "a"]


def test_collect_coerces_and_reports_errors_per_field() -> None:
    fields = fields_from_schema(SCHEMA)
    doc, errors = collect(fields, {"companyName": "  星河科技 ", "capital": "500", "staff": 3.0, "kind": "llc",
                                   "founded": "2024/05/01", "remote": True, "size": "2"})
    assert errors == {}
    assert doc == {"companyName": "星河科技", "capital": 500, "staff": 3, "kind": "llc", "founded": "2024-05-01",
                   "remote": True, "size": 2}
    _doc, errors = collect(fields, {"companyName": "x", "capital": 0, "staff": 2.5, "kind": "zzz",
                                    "founded": "yesterday"})
    assert set(errors) == {"companyName", "capital", "staff", "kind", "founded"}
    assert "2" in errors["companyName"] and "1" in errors["capital"]
    _doc, errors = collect(fields, {})
    assert set(errors) == {"companyName", "capital", "founded", "kind"}
    assert all("Required" in m for m in errors.values())


def test_check_limits() -> None:
    spec = Field(name="n", kind="number", label="n", exclusive_maximum=10)
    assert check(spec, 10)[1] is not None and check(spec, 9.5) == (9.5, None)
    text = Field(name="t", kind="string", label="t", pattern=r"^\d{6}$")
    assert check(text, "12345")[1] is not None and check(text, "123456") == ("123456", None)
    agree = Field(name="a", kind="boolean", label="a", extra={"const": True})
    assert check(agree, False)[1] is not None and check(agree, True) == (True, None)


def test_field_errors_reads_the_shapes_an_api_may_use() -> None:
    assert field_errors({"errors": [{"field": "form.capital", "message": "too small"}]}) == {"capital": "too small"}
    assert field_errors({"errors": {"companyName": ["taken", "too short"]}}) == {"companyName": "taken; too short"}
    assert field_errors({"invalidParams": [{"name": "/form/founded", "reason": "bad date"}]}) == {
        "founded": "bad date"}
    assert field_errors({"errors": [{"path": [], "message": "'kind' is a required property"}]}) == {
        "kind": "'kind' is a required property"}
    assert field_errors({"detail": "form.capital: must be ≥ 1; form.kind: unknown"}) == {
        "capital": "must be ≥ 1", "kind": "unknown"}
    assert field_errors({"detail": "service not found"}) == {}
    assert field_errors("nope") == {}
    assert field_errors({"errors": [{"field": "materials[0].uploadId", "message": "no such upload"}]}) == {
        "materials[0].uploadId": "no such upload"}
    assert field_errors({"errors": [{"field": "form", "message": "'x' is required"}]}) == {"": "'x' is required"}
