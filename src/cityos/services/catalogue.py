"""The service catalogue (事项清单): definitions, validation, loading from files, search.

A service is a YAML file in `services/catalogue/` (or a definition posted by a department
administrator): code, name, department, legal basis, time limit in working days, materials (an
upload, or an e-licence type that replaces it), a JSON Schema form, fees, channels, its BPMN
process (and DMN decisions), instant approval, life events, audience and keywords. A bundle
(一件事) lives in `services/catalogue/bundles/`.

Loading refuses a broken definition with the reason (`CatalogueError`): a malformed YAML, a
definition that does not fit the model, an invalid JSON Schema, or a BPMN/DMN file that SpiffWorkflow
cannot compile (XSD errors, missing decisions, user tasks outside lanes, forbidden expressions).
"""

from __future__ import annotations

import numbers
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cityos.services.workflow import APPLICANT_LANE, ProcessInfo, WorkflowDefinitionError, parse_definition

CATALOGUE_DIR = Path(__file__).parent / "catalogue"
CODE = r"^[a-z0-9][a-z0-9-]{1,63}$"
NAME = r"^[a-z0-9][a-z0-9-]{0,63}$"
DEFAULT_CONTENT_TYPES = ["application/pdf", "image/jpeg", "image/png"]


class CatalogueError(ValueError):
    """A catalogue definition that was refused; the message gives the file and the reason."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class MaterialDef(_Model):
    name: str = Field(pattern=NAME)
    title: str = Field(min_length=1, max_length=200)
    required: bool = True
    licence_type: str | None = Field(default=None, alias="licenceType", pattern=NAME)
    content_types: list[str] = Field(default_factory=lambda: list(DEFAULT_CONTENT_TYPES), alias="contentTypes")
    max_bytes: int | None = Field(default=None, alias="maxBytes", gt=0)


class FeeDef(_Model):
    item: str
    amount: float = Field(ge=0)
    currency: str = "CNY"


class LicenceDef(_Model):
    type: str = Field(pattern=NAME)
    subject: list[str] | None = None  # form fields copied into the licence; None: the whole form
    valid_years: int | None = Field(default=None, alias="validYears", gt=0)


class ServiceDef(_Model):
    code: str = Field(pattern=CODE)
    name: str = Field(min_length=1, max_length=200)
    name_en: str | None = Field(default=None, alias="nameEn")
    description: str | None = None
    department: str = Field(pattern=NAME)
    legal_basis: str = Field(alias="legalBasis", min_length=1)
    time_limit_days: int = Field(alias="timeLimitDays", ge=0, le=365)
    statutory_limit_days: int | None = Field(default=None, alias="statutoryLimitDays", ge=0, le=365)
    materials: list[MaterialDef] = Field(default_factory=list)
    form: dict[str, Any]
    fees: list[FeeDef] = Field(default_factory=list)
    channels: list[Literal["online", "hall"]] = Field(default_factory=lambda: ["online", "hall"])  # type: ignore[arg-type]
    process: str = Field(min_length=1)  # a .bpmn path relative to the definition, or inline XML
    process_id: str | None = Field(default=None, alias="processId")
    decisions: list[str] = Field(default_factory=list)  # .dmn paths, or inline XML
    instant_approval: bool = Field(default=False, alias="instantApproval")
    life_events: list[str] = Field(default_factory=list, alias="lifeEvents")
    audience: list[Literal["citizen", "enterprise"]] = Field(default_factory=lambda: ["citizen"])  # type: ignore[arg-type]
    keywords: list[str] = Field(default_factory=list)
    licence: LicenceDef | None = None
    hall_trips: int = Field(default=1, alias="hallTrips", ge=0, le=20)  # trips an in-person case used to need


class BundleMember(_Model):
    code: str = Field(pattern=CODE)
    map: dict[str, str] = Field(default_factory=dict)  # this service's field ← the bundle form's field


class BundleDef(_Model):
    code: str = Field(pattern=CODE)
    name: str
    name_en: str | None = Field(default=None, alias="nameEn")
    description: str | None = None
    services: list[BundleMember] = Field(min_length=2)
    life_events: list[str] = Field(default_factory=list, alias="lifeEvents")
    audience: list[Literal["citizen", "enterprise"]] = Field(default_factory=lambda: ["citizen"])  # type: ignore[arg-type]
    keywords: list[str] = Field(default_factory=list)


class _Unsupported(Exception):
    pass


_ANNOTATIONS = frozenset({"title", "description", "$comment", "default", "examples", "readOnly", "writeOnly",
                          "deprecated", "format"})  # format: asserted only with a format checker, and ours has none


def _is_number(value: Any) -> bool:
    return type(value) is int or type(value) is float or (
        not isinstance(value, bool) and isinstance(value, numbers.Number))


_TYPES: dict[str, Callable[[Any], bool]] = {
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: (isinstance(v, int) and not isinstance(v, bool)) or (isinstance(v, float) and v.is_integer()),
    "number": _is_number,
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
}


def _compile_node(schema: Any) -> Callable[[Any], bool]:
    if schema is True or schema is False:
        return (lambda _v: True) if schema else (lambda _v: False)
    if not isinstance(schema, dict):
        raise _Unsupported
    checks: list[Callable[[Any], bool]] = []
    for key, value in schema.items():
        if key in _ANNOTATIONS:
            continue
        checks.append(_compile_keyword(key, value, schema))
    if len(checks) == 1:
        return checks[0]
    return lambda v: all(check(v) for check in checks)


def _compile_keyword(key: str, value: Any, schema: dict[str, Any]) -> Callable[[Any], bool]:
    """One keyword, valid exactly when `Draft202012Validator` (no format checker) finds no error for it."""
    if key == "type":
        try:
            kinds = [_TYPES[t] for t in (value if isinstance(value, list) else [value])]
        except (KeyError, TypeError) as exc:
            raise _Unsupported from exc
        return kinds[0] if len(kinds) == 1 else (lambda v: any(kind(v) for kind in kinds))
    if key == "enum":
        if not isinstance(value, list) or not all(isinstance(e, str) for e in value):
            raise _Unsupported  # jsonschema's `equal` tells 1 from True and 1.0; only text enums here
        allowed = frozenset(value)
        return lambda v: isinstance(v, str) and v in allowed
    if key == "pattern" and isinstance(value, str):
        search = re.compile(value).search
        return lambda v: not isinstance(v, str) or search(v) is not None
    if key in ("minLength", "maxLength") and isinstance(value, int) and not isinstance(value, bool):
        if key == "minLength":
            return lambda v: not isinstance(v, str) or not len(v) < value
        return lambda v: not isinstance(v, str) or not len(v) > value
    if key in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum") and _is_number(value):
        # the same comparison jsonschema makes to find an error, negated
        if key == "minimum":
            return lambda v: not _is_number(v) or not v < value
        if key == "maximum":
            return lambda v: not _is_number(v) or not v > value
        if key == "exclusiveMinimum":
            return lambda v: not _is_number(v) or not v <= value
        return lambda v: not _is_number(v) or not v >= value
    if key == "required" and isinstance(value, list):
        names = list(value)
        return lambda v: not isinstance(v, dict) or all(name in v for name in names)
    if key == "properties" and isinstance(value, dict):
        subs = [(name, _compile_node(sub)) for name, sub in value.items()]
        return lambda v: not isinstance(v, dict) or all(check(v[name]) for name, check in subs if name in v)
    if key == "additionalProperties" and isinstance(value, bool) and "patternProperties" not in schema:
        if value:
            return lambda _v: True
        known = frozenset(schema.get("properties") or {})
        return lambda v: not isinstance(v, dict) or all(name in known for name in v)
    raise _Unsupported


def compile_form_check(schema: Any) -> Callable[[Any], bool] | None:
    """A fast validity test for the JSON Schemas that service forms use (types, text enums, patterns, lengths,
    bounds, required, properties, additionalProperties: false): True exactly when `Draft202012Validator(schema)`
    reports no error. `jsonschema` builds a validator object per property visited, a valid form cost tens of
    microseconds; a form that fails this test still goes through `jsonschema` for the field-by-field messages.
    None when the schema uses anything else (then `jsonschema` alone decides)."""
    try:
        return _compile_node(schema)
    except (_Unsupported, re.error):
        return None


@dataclass
class Service:
    definition: ServiceDef
    spec: Any
    info: ProcessInfo
    validator: Draft202012Validator
    bpmn: str
    dmns: list[tuple[str, str]]
    origin: str = "file"  # file | api
    version: int = 1
    tenant: str | None = None  # None: every tenant (shipped with the code)
    form_check: Callable[[Any], bool] | None = None  # `compile_form_check(definition.form)`

    @property
    def code(self) -> str:
        return self.definition.code

    @property
    def departments(self) -> list[str]:
        lanes = [lane for lane in self.info.lanes if lane != APPLICANT_LANE]
        return [self.definition.department, *[d for d in lanes if d != self.definition.department]]

    def summary(self) -> dict[str, Any]:
        d = self.definition
        return {"code": d.code, "name": d.name, "nameEn": d.name_en, "department": d.department,
                "timeLimitDays": d.time_limit_days, "instantApproval": d.instant_approval,
                "lifeEvents": d.life_events, "audience": d.audience, "channels": d.channels,
                "keywords": d.keywords, "origin": self.origin, "version": self.version}

    def guide(self) -> dict[str, Any]:
        d = self.definition
        return {**self.summary(), "description": d.description, "legalBasis": d.legal_basis,
                "statutoryLimitDays": d.statutory_limit_days, "departments": self.departments,
                "materials": [m.model_dump(by_alias=True) for m in d.materials], "form": d.form,
                "fees": [f.model_dump(by_alias=True) for f in d.fees],
                "licence": d.licence.model_dump(by_alias=True) if d.licence else None,
                "process": {"id": self.info.process_id, "steps": [
                    {"step": k, "title": v["title"], "department": v["lane"]} for k, v in self.info.tasks.items()
                    if v["lane"] != APPLICANT_LANE]},
                "hallTrips": d.hall_trips}

    def text(self) -> str:
        d = self.definition
        return " ".join([d.code, d.name, d.name_en or "", d.description or "", d.department, *d.keywords,
                         *d.life_events]).lower()


@dataclass
class Bundle:
    definition: BundleDef
    form: dict[str, Any]
    tenant: str | None = None
    services: list[str] = field(default_factory=list)

    @property
    def code(self) -> str:
        return self.definition.code

    def guide(self, catalogue: dict[str, Service]) -> dict[str, Any]:
        d = self.definition
        return {"code": d.code, "name": d.name, "nameEn": d.name_en, "description": d.description, "bundle": True,
                "lifeEvents": d.life_events, "audience": d.audience, "keywords": d.keywords, "form": self.form,
                "services": [catalogue[m.code].summary() for m in d.services if m.code in catalogue],
                "materials": _bundle_materials(d, catalogue),
                "timeLimitDays": max((catalogue[m.code].definition.time_limit_days for m in d.services
                                      if m.code in catalogue), default=0)}


def _bundle_materials(d: BundleDef, catalogue: dict[str, Service]) -> list[dict[str, Any]]:
    seen: dict[str, dict[str, Any]] = {}
    for member in d.services:
        for m in catalogue[member.code].definition.materials if member.code in catalogue else []:
            if m.name not in seen:
                seen[m.name] = m.model_dump(by_alias=True)
            elif m.required:
                seen[m.name]["required"] = True
    return list(seen.values())


def _read(base: Path, ref: str, what: str) -> tuple[str, str]:
    """(name, text) of a referenced file, or of inline XML."""
    if ref.lstrip().startswith("<"):
        return what, ref
    path = (base / ref).resolve()
    if base.resolve() not in path.parents:
        raise CatalogueError(f"{what}: {ref!r} is outside the catalogue directory")
    try:
        return path.name, path.read_text(encoding="utf-8")
    except OSError as exc:
        raise CatalogueError(f"{what}: cannot read {ref!r}: {exc.strerror}") from exc


def _errors(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())


def build_service(doc: dict[str, Any], base: Path, what: str, origin: str = "file", version: int = 1,
                  tenant: str | None = None) -> Service:
    """Validate a definition and compile its process; raises CatalogueError with the reason."""
    try:
        definition = ServiceDef.model_validate(doc)
    except ValidationError as exc:
        raise CatalogueError(f"{what}: {_errors(exc)}") from exc
    try:
        Draft202012Validator.check_schema(definition.form)
    except SchemaError as exc:
        raise CatalogueError(f"{what}: form is not a valid JSON Schema: {exc.message}") from exc
    if definition.form.get("type") != "object":
        raise CatalogueError(f"{what}: form must be a JSON Schema of type object")
    names = [m.name for m in definition.materials]
    if len(set(names)) != len(names):
        raise CatalogueError(f"{what}: material names must be unique")
    bpmn_name, bpmn = _read(base, definition.process, what)
    dmns = [_read(base, ref, what) for ref in definition.decisions]
    try:
        spec, info = parse_definition(bpmn, list(dmns), bpmn_name, definition.process_id)
    except WorkflowDefinitionError as exc:
        raise CatalogueError(f"{what}: process refused: {exc}") from exc
    if definition.instant_approval and not info.decisions:
        raise CatalogueError(f"{what}: instantApproval needs a DMN decision (business rule task) in the process")
    return Service(definition, spec, info, Draft202012Validator(definition.form), bpmn, dmns, origin, version, tenant,
                   compile_form_check(definition.form))


def build_bundle(doc: dict[str, Any], services: dict[str, Service], what: str,
                 tenant: str | None = None) -> Bundle:
    try:
        definition = BundleDef.model_validate(doc)
    except ValidationError as exc:
        raise CatalogueError(f"{what}: {_errors(exc)}") from exc
    properties: dict[str, Any] = {}
    required: list[str] = []
    for member in definition.services:
        if member.code not in services:
            raise CatalogueError(f"{what}: unknown service {member.code!r}")
        form = services[member.code].definition.form
        reverse = {target: source for target, source in member.map.items()}
        for name, schema in form.get("properties", {}).items():
            properties.setdefault(reverse.get(name, name), schema)
        for name in form.get("required", []):
            source = reverse.get(name, name)
            if source not in required:
                required.append(source)
    form = {"type": "object", "properties": properties, "required": required}
    return Bundle(definition, form, tenant, [m.code for m in definition.services])


def load_directory(directory: Path = CATALOGUE_DIR) -> tuple[dict[str, Service], dict[str, Bundle]]:
    """Load every `*.yaml` service and `bundles/*.yaml` bundle; the first broken file raises."""
    services: dict[str, Service] = {}
    for path in sorted(directory.glob("*.yaml")):
        doc = _load_yaml(path)
        service = build_service(doc, directory, path.name)
        if service.code in services:
            raise CatalogueError(f"{path.name}: duplicate service code {service.code!r}")
        services[service.code] = service
    bundles: dict[str, Bundle] = {}
    for path in sorted((directory / "bundles").glob("*.yaml")):
        bundle = build_bundle(_load_yaml(path), services, f"bundles/{path.name}")
        bundles[bundle.code] = bundle
    return services, bundles


def _load_yaml(path: Path) -> dict[str, Any]:
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise CatalogueError(f"{path.name}: malformed YAML: {exc}") from exc
    if not isinstance(doc, dict):
        raise CatalogueError(f"{path.name}: expected a mapping")
    return doc


def matches(text: str, q: str | None) -> bool:
    if not q:
        return True
    return all(term in text for term in re.split(r"\s+", q.strip().lower()) if term)
