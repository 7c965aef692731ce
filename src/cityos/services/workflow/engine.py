"""SpiffWorkflow 3.2 behind a small interface: parse + validate, run, persist, fire timers.

- Parsing uses the Camunda flavour (`CamundaParser`: `camunda:decisionRef` on business rule tasks, what
  Camunda Modeler writes) with XSD validation of BPMN and DMN. XML is read with a parser that
  resolves no entities and fetches nothing.
- A user task belongs to a department through its lane: the lane's `name` is the department id;
  the lane named ``applicant`` holds the applicant's 补正 (supplement) tasks.
- Persistence: `BpmnWorkflowSerializer` with the Camunda configuration; JSON (orjson), gzip-compressed.
  The process spec is *not* repeated in every workflow's state: the state names it by
  ``spec_ref`` (sha256 of the spec's serialization) and the spec itself is stored once
  (`svc_workflow_specs`, see `Engine.spec_ref`). A running case therefore keeps the definition it
  started with even when the catalogue's BPMN changes later. States written before this (with the
  whole ``spec`` inside) still load.
- Timers: SpiffWorkflow compares timer events against `datetime.now(timezone.utc)` inside
  `SpiffWorkflow.bpmn.specs.event_definitions.timer`. `install_clock()` points that module's
  `datetime` at a subclass whose `now()` is `cityos.core.clock.now()`, so BPMN timers follow the
  injectable clock like every other deadline (tests move the clock; nothing sleeps).
- Scripts and expressions run with a short list of builtins; definitions are refused at load when
  an expression reaches for dunders or imports (`check_expressions`).
"""

from __future__ import annotations

import ast
import builtins
import copy
import functools
import gzip
import hashlib
import json
import logging
import re
import time
import uuid
import zlib
from dataclasses import dataclass, field
from datetime import datetime, tzinfo
from typing import Any

import orjson
from lxml import etree
from SpiffWorkflow.bpmn.parser.BpmnParser import BpmnValidator
from SpiffWorkflow.bpmn.script_engine import PythonScriptEngine, TaskDataEnvironment
from SpiffWorkflow.bpmn.serializer.default.workflow import BpmnWorkflowConverter, WorkflowConverter
from SpiffWorkflow.bpmn.serializer.helpers.encoder import create_encoder
from SpiffWorkflow.bpmn.serializer.workflow import VERSION as SERIALIZER_VERSION
from SpiffWorkflow.bpmn.serializer.workflow import BpmnWorkflowSerializer
from SpiffWorkflow.bpmn.specs.event_definitions.timer import TimerEventDefinition
from SpiffWorkflow.bpmn.workflow import BpmnWorkflow
from SpiffWorkflow.camunda.parser.CamundaParser import CamundaParser
from SpiffWorkflow.camunda.serializer.config import CAMUNDA_CONFIG
from SpiffWorkflow.exceptions import SpiffWorkflowException
from SpiffWorkflow.task import Task
from SpiffWorkflow.util.task import TaskState

from cityos.core import clock

APPLICANT_LANE = "applicant"
BPMN_NS = "http://www.omg.org/spec/BPMN/20100524/MODEL"
BPMNDI_NS = "http://www.omg.org/spec/BPMN/20100524/DI"
_SAFE_BUILTINS = {name: getattr(builtins, name) for name in (
    "True", "False", "None", "abs", "all", "any", "bool", "dict", "float", "int", "len", "list", "max", "min",
    "round", "set", "str", "sum", "tuple", "isinstance", "sorted")}
_FORBIDDEN = re.compile(r"__|\bimport\b|\beval\b|\bexec\b|\bopen\b|\bglobals\b|\blocals\b|\bgetattr\b|\bcompile\b")
_XML = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False, remove_comments=True)


class WorkflowDefinitionError(ValueError):
    """A BPMN/DMN definition that cannot be run; the message says why."""


class _ClockDatetime(datetime):
    @classmethod
    def now(cls, tz: tzinfo | None = None) -> Any:
        current = clock.now()
        return current if tz is None else current.astimezone(tz)


_STATE_NAMES: dict[int, str] = {}


def _state_name(state: int) -> str:
    name = _STATE_NAMES.get(state)
    if name is None:
        name = _STATE_NAMES[state] = _original_get_name(state)
    return name


def _set_state(self: Task, value: int) -> None:
    """`Task._set_state` with its log record built only when the log level wants it. The original builds
    the message and `collect_log_extras` on every state change even with logging off: a sixth of a case
    step went there."""
    if value != self.state:
        now = time.time()
        elapsed = now - self.last_state_change
        self.last_state_change = now
        self._state = value
        if _task_logger.isEnabledFor(logging.INFO):
            _task_logger.info(f"State changed to {TaskState.get_name(value)}",
                              extra=self.collect_log_extras({"elapsed": elapsed}))
    elif _task_logger.isEnabledFor(logging.DEBUG):
        _task_logger.debug(f"State set to {TaskState.get_name(value)}", extra=self.collect_log_extras())


_original_get_name = TaskState.get_name
_task_logger = logging.getLogger("spiff.task")


def install_fast_paths() -> None:
    """Cheaper equivalents of two SpiffWorkflow hot spots (idempotent): `TaskState.get_name` (it built a
    dict per call) memoised, and `Task._set_state` without eager log formatting."""
    TaskState.get_name = staticmethod(_state_name)
    Task._set_state = _set_state


def install_clock() -> None:
    """Make SpiffWorkflow's timer events read `cityos.core.clock.now()` (idempotent)."""
    from SpiffWorkflow.bpmn.specs.event_definitions import timer

    timer.datetime = _ClockDatetime


@dataclass
class ProcessInfo:
    process_id: str
    tasks: dict[str, dict[str, str]] = field(default_factory=dict)  # user task id → {title, lane}
    lanes: list[str] = field(default_factory=list)
    decisions: list[str] = field(default_factory=list)


def _xml(source: str | bytes, what: str) -> Any:
    try:
        return etree.fromstring(source.encode() if isinstance(source, str) else source, _XML)
    except etree.XMLSyntaxError as exc:
        raise WorkflowDefinitionError(f"{what}: not well-formed XML: {exc}") from exc


def check_expressions(root: Any, what: str) -> None:
    """Refuse scripts and expressions that could escape the restricted evaluator."""
    for node in root.iter():
        if not isinstance(node.tag, str):
            continue
        local = etree.QName(node).localname
        if local in ("script", "conditionExpression", "timeDate", "timeDuration", "timeCycle", "text") \
                and node.text and _FORBIDDEN.search(node.text):
            raise WorkflowDefinitionError(f"{what}: expression in <{local}> uses a forbidden name: "
                                          f"{node.text.strip()[:80]!r}")


def parse_definition(bpmn: str | bytes, dmns: list[tuple[str, str | bytes]], filename: str,
                     process_id: str | None = None) -> tuple[Any, ProcessInfo]:
    """Parse, validate and compile a BPMN process (with its DMN decisions).

    Returns (process spec, info). Raises WorkflowDefinitionError with the reason.
    """
    parser = CamundaParser(validator=BpmnValidator())
    try:
        for dmn_name, dmn_source in dmns:
            root = _xml(dmn_source, dmn_name)
            check_expressions(root, dmn_name)
            parser.add_dmn_xml(root, filename=dmn_name)
        root = _xml(bpmn, filename)
        check_expressions(root, filename)
        if root.find(f".//{{{BPMNDI_NS}}}BPMNDiagram") is None:
            raise WorkflowDefinitionError(f"{filename}: no bpmndi:BPMNDiagram section (the modeler needs one)")
        parser.add_bpmn_xml(root, filename=filename)
        executable = [p.get("id") for p in root.iter(f"{{{BPMN_NS}}}process") if p.get("isExecutable") == "true"]
        if process_id is None:
            if len(executable) != 1:
                raise WorkflowDefinitionError(f"{filename}: expected exactly one executable process, "
                                              f"found {len(executable)}")
            process_id = executable[0]
        spec = parser.get_spec(process_id)
    except WorkflowDefinitionError:
        raise
    except SpiffWorkflowException as exc:
        where = " ".join(x for x in (getattr(exc, "file_name", ""), getattr(exc, "id", ""),
                                     f"line {exc.line_number}" if getattr(exc, "line_number", "") else "") if x)
        raise WorkflowDefinitionError(f"{filename}: {exc}" + (f" ({where})" if where else "")) from exc
    except (ValueError, KeyError, AttributeError, TypeError, etree.LxmlError) as exc:
        raise WorkflowDefinitionError(f"{filename}: {type(exc).__name__}: {exc}") from exc
    info = ProcessInfo(process_id)
    for task_spec in spec.task_specs.values():
        kind = type(task_spec).__name__
        if kind == "UserTask":
            lane = getattr(task_spec, "lane", None)
            if not lane:
                raise WorkflowDefinitionError(f"{filename}: user task {task_spec.name!r} is not in a lane "
                                              "(the lane names the department that acts on it)")
            info.tasks[task_spec.name] = {"title": task_spec.bpmn_name or task_spec.name, "lane": lane}
            if lane not in info.lanes:
                info.lanes.append(lane)
        elif kind == "BusinessRuleTask":
            info.decisions.append(task_spec.name)
    if not info.tasks and not info.decisions:
        raise WorkflowDefinitionError(f"{filename}: the process has no user task and no decision")
    return spec, info


@functools.lru_cache(maxsize=4096)
def _compiled(source: str, mode: str) -> Any:
    return compile(source, "<string>", mode)


@functools.lru_cache(maxsize=4096)
def _parses(expression: str) -> bool:
    ast.parse(expression)  # a SyntaxError propagates and is not cached
    return True


class _CompiledEnvironment(TaskDataEnvironment):
    """`TaskDataEnvironment` that compiles each distinct expression or script once (DMN rules and gateway
    conditions are evaluated on every case; compiling them again each time was a tenth of a submission)."""

    def evaluate(self, expression: str, context: dict[str, Any], external_context: dict[str, Any] | None = None) -> Any:
        my_globals = copy.copy(self.globals)
        self._prepare_context(context)
        my_globals.update(external_context or {})
        my_globals.update(context)
        return eval(_compiled(expression, "eval"), my_globals)  # noqa: S307 - checked at load (check_expressions)

    def execute(self, script: str, context: dict[str, Any], external_context: dict[str, Any] | None = None) -> bool:
        self.check_for_overwrite(context, external_context or {})
        my_globals = copy.copy(self.globals)
        self._prepare_context(context)
        my_globals.update(external_context or {})
        context.update(my_globals)
        try:
            exec(_compiled(script, "exec"), context)  # noqa: S102 - checked at load (check_expressions)
        finally:
            self._remove_globals_and_functions_from_context(context, external_context)
        return True


class _ScriptEngine(PythonScriptEngine):
    def validate(self, expression: str) -> None:
        _parses(expression)


class _SpecRefWorkflowConverter(BpmnWorkflowConverter):
    """The workflow without its spec: ``spec_ref`` names it (the caller passes `spec_ref` in)."""

    def to_dict(self, workflow: Any, spec_ref: str = "") -> dict[str, Any]:
        dct: dict[str, Any] = WorkflowConverter.to_dict(self, workflow)
        dct["spec_ref"] = spec_ref
        dct["subprocesses"] = self.mapping_to_dict(workflow.subprocesses)
        dct["bpmn_events"] = self.registry.convert(workflow.bpmn_events)
        return dct

    def from_dict(self, dct: dict[str, Any], spec: Any = None,
                  subprocess_specs: Any = None) -> Any:
        if spec is None:  # a state that carries its own spec (the earlier format)
            return super().from_dict(dct)
        dct.pop("spec_ref", None)
        workflow = self.target_class(spec, subprocess_specs or {}, deserializing=True)
        workflow.tasks = self.mapping_from_dict(dct["tasks"], _uuid_class(), workflow=workflow)
        workflow.task_tree = workflow.tasks.get(_uuid(dct["root"]))
        self.set_default_attributes(workflow, dct)
        self.subprocesses_from_dict(dct["subprocesses"], workflow)
        workflow.bpmn_events = self.registry.restore(dct.pop("bpmn_events", []))
        return workflow


@dataclass
class _SpecEntry:
    spec: Any
    subprocess_specs: dict[str, Any]
    ref: str
    doc: bytes  # gzip(JSON {"spec", "subprocess_specs"}): what `svc_workflow_specs` stores


class Engine:
    """Runs and persists workflows; stateless apart from the serializer and the spec cache."""

    def __init__(self) -> None:
        install_clock()
        install_fast_paths()
        config = dict(CAMUNDA_CONFIG)
        config[BpmnWorkflow] = _SpecRefWorkflowConverter
        self.serializer = BpmnWorkflowSerializer(BpmnWorkflowSerializer.configure(config))
        self._encoder = create_encoder(self.serializer.registry)()
        self.script_engine = _ScriptEngine(environment=_CompiledEnvironment({"__builtins__": _SAFE_BUILTINS}))
        self._by_spec: dict[int, _SpecEntry] = {}  # id(spec) → entry (specs live as long as the process)
        self._by_ref: dict[str, _SpecEntry] = {}

    # ------------------------------------------------------------------ specs, stored once

    def spec_entry(self, spec: Any, subprocess_specs: dict[str, Any] | None = None) -> _SpecEntry:
        """The spec's reference and stored form (computed once per spec object)."""
        entry = self._by_spec.get(id(spec))
        if entry is None or entry.spec is not spec:
            registry = self.serializer.registry
            doc = {"spec": registry.convert(spec),
                   "subprocess_specs": {k: registry.convert(v) for k, v in (subprocess_specs or {}).items()}}
            text = json.dumps(doc, sort_keys=True, ensure_ascii=False, separators=(",", ":"),
                              default=self._encoder.default).encode()
            ref = hashlib.sha256(text).hexdigest()
            entry = self._by_ref.get(ref)
            if entry is None:
                entry = _SpecEntry(spec, dict(subprocess_specs or {}), ref, gzip.compress(text, compresslevel=6))
                self._by_ref[ref] = entry
            self._by_spec[id(spec)] = entry
        return entry

    def spec_ref(self, spec: Any) -> str:
        return self.spec_entry(spec).ref

    def has_spec(self, ref: str) -> bool:
        return ref in self._by_ref

    def add_spec_doc(self, ref: str, doc: bytes) -> None:
        """Register a stored spec (from `svc_workflow_specs`) so that states naming `ref` load."""
        if ref in self._by_ref:
            return
        dct = orjson.loads(gzip.decompress(doc))
        registry = self.serializer.registry
        spec = registry.restore(dct["spec"])
        subs = {k: registry.restore(v) for k, v in dct.get("subprocess_specs", {}).items()}
        entry = _SpecEntry(spec, subs, ref, doc)
        self._by_ref[ref] = entry
        self._by_spec[id(spec)] = entry

    def start(self, spec: Any, data: dict[str, Any]) -> BpmnWorkflow:
        workflow = BpmnWorkflow(spec, script_engine=self.script_engine)
        for task in workflow.get_tasks(state=TaskState.READY):
            task.data.update(data)
        self.advance(workflow)
        return workflow

    def advance(self, workflow: BpmnWorkflow) -> None:
        workflow.do_engine_steps()
        workflow.refresh_waiting_tasks()
        workflow.do_engine_steps()

    def dump(self, workflow: BpmnWorkflow) -> bytes:
        """The workflow's state without its spec (see `spec_ref`): gzip(JSON)."""
        ref = self.spec_entry(workflow.spec, workflow.subprocess_specs).ref
        registry = self.serializer.registry
        registry._encoder_mode = True  # data dicts are cleaned, nested values left to the encoder
        try:
            to_dict = registry.convert_to_dict[registry.typenames[BpmnWorkflow]]
            dct = to_dict(workflow, spec_ref=ref)
        finally:
            registry._encoder_mode = False
        dct[BpmnWorkflowSerializer.VERSION_KEY] = SERIALIZER_VERSION
        try:
            text = orjson.dumps(dct, default=self._encoder.default,
                                option=orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_NON_STR_KEYS)
        except TypeError:  # something orjson will not take: the serializer's own JSON encoder
            text = json.dumps(dct, cls=type(self._encoder)).encode()
        # gzip format through zlib directly: `gzip.compress` builds a GzipFile around a BytesIO, whose set-up
        # cost dominated at this size.
        return zlib.compress(text, 1, wbits=31)

    @staticmethod
    def decode(blob: bytes) -> dict[str, Any]:
        """A stored state as a dict (gzip(JSON); plain JSON is accepted too)."""
        dct: dict[str, Any] = orjson.loads(zlib.decompress(blob, wbits=47) if blob[:2] == b"\x1f\x8b" else blob)
        return dct

    @staticmethod
    def needed_spec(dct: dict[str, Any]) -> str | None:
        """The spec reference a decoded state needs (None: it carries its own spec)."""
        ref = dct.get("spec_ref")
        return ref if isinstance(ref, str) else None

    def restore(self, dct: dict[str, Any]) -> BpmnWorkflow:
        """A workflow from `decode`'s output; its spec must be known (`add_spec_doc`) unless it carries it."""
        self.serializer.migrate(dct)
        ref = self.needed_spec(dct)
        if ref is None:
            workflow = self.serializer.from_dict(dct)
        else:
            entry = self._by_ref.get(ref)
            if entry is None:
                raise WorkflowDefinitionError(f"the process definition {ref[:12]}… of this case is not loaded")
            workflow = self.serializer.from_dict(dct, spec=entry.spec, subprocess_specs=entry.subprocess_specs)
        workflow.script_engine = self.script_engine
        return workflow

    def load(self, blob: bytes) -> BpmnWorkflow:
        return self.restore(self.decode(blob))

    @staticmethod
    def _tasks(workflow: BpmnWorkflow, state: int) -> list[Any]:
        """The workflow's tasks (subprocesses included) in `state`: a flat scan of the task maps, several
        times cheaper than `get_tasks`' tree walk, which is what a case step spent most of its time in."""
        out = [t for t in workflow.tasks.values() if t.state == state]
        for sub in workflow.subprocesses.values():
            out.extend(t for t in sub.tasks.values() if t.state == state)
        return out

    @classmethod
    def ready_user_tasks(cls, workflow: BpmnWorkflow) -> list[Any]:
        return [t for t in cls._tasks(workflow, TaskState.READY) if type(t.task_spec).__name__ == "UserTask"]

    @classmethod
    def completed(cls, workflow: BpmnWorkflow) -> list[Any]:
        return cls._tasks(workflow, TaskState.COMPLETED)

    @classmethod
    def next_timer(cls, workflow: BpmnWorkflow) -> datetime | None:
        """When the earliest waiting timer event is due (None: nothing waits on a timer)."""
        due: list[datetime] = []
        for task in cls._tasks(workflow, TaskState.WAITING):
            definition = getattr(task.task_spec, "event_definition", None)
            if isinstance(definition, TimerEventDefinition):
                value = task._get_internal_data("event_value")
                if isinstance(value, str):
                    try:
                        due.append(TimerEventDefinition.get_datetime(value))
                    except ValueError:
                        continue
        return min(due) if due else None

    def complete(self, workflow: BpmnWorkflow, task_id: str, data: dict[str, Any]) -> None:
        task = workflow.get_task_from_id(_uuid(task_id))
        task.data.update(data)
        task.run()
        self.advance(workflow)


def _uuid(value: str) -> Any:
    return uuid.UUID(value)


def _uuid_class() -> Any:
    return uuid.UUID
