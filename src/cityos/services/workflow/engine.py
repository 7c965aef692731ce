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
- Cost (issue #7: a submission runs a case to its first user task and stores it): `install_fast_paths`
  replaces SpiffWorkflow's task walks with `_walk` (same tasks, same order, tested against the
  library's iterators in tests/services_core/test_services_engine_fastpaths.py), expressions are
  compiled once and DMN cells parsed once, `dump` writes the task map directly (`_tasks_to_dict`, the
  same JSON as the library's converters) and lets orjson write the UUIDs, and the ``spiff`` loggers
  stay at WARNING (`quiet_library_logs`).
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
import os
import re
import time
import uuid
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, tzinfo
from typing import Any

import orjson
from lxml import etree
from SpiffWorkflow.bpmn.parser.BpmnParser import BpmnValidator
from SpiffWorkflow.bpmn.script_engine import PythonScriptEngine, TaskDataEnvironment
from SpiffWorkflow.bpmn.serializer.default.workflow import BpmnWorkflowConverter, TaskConverter, WorkflowConverter
from SpiffWorkflow.bpmn.serializer.helpers.encoder import create_encoder
from SpiffWorkflow.bpmn.serializer.workflow import VERSION as SERIALIZER_VERSION
from SpiffWorkflow.bpmn.serializer.workflow import BpmnWorkflowSerializer
from SpiffWorkflow.bpmn.specs.event_definitions.timer import TimerEventDefinition
from SpiffWorkflow.bpmn.util.subworkflow import BpmnBaseWorkflow
from SpiffWorkflow.bpmn.util.task import BpmnTaskIterator
from SpiffWorkflow.bpmn.workflow import BpmnWorkflow
from SpiffWorkflow.camunda.parser.CamundaParser import CamundaParser
from SpiffWorkflow.camunda.serializer.config import CAMUNDA_CONFIG
from SpiffWorkflow.exceptions import SpiffWorkflowException
from SpiffWorkflow.task import Task
from SpiffWorkflow.util.task import TaskState
from SpiffWorkflow.workflow import Workflow

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
    """Cheaper equivalents of SpiffWorkflow hot spots (idempotent): `TaskState.get_name` (it built a dict per
    call) memoised, `Task._set_state` without eager log formatting, task walks without the iterator objects
    (`_walk`: same tasks, same order) and no workflow log extras nobody logs. Together they were most of
    starting a case."""
    TaskState.get_name = staticmethod(_state_name)
    BpmnBaseWorkflow.get_tasks_iterator = _get_tasks_iterator
    Workflow.update_waiting_tasks = _update_waiting_tasks
    Workflow.collect_log_extras = _collect_log_extras
    Task._set_state = _set_state


_PREDICTED = TaskState.PREDICTED_MASK
_DEFINITE = TaskState.DEFINITE_MASK
_MAX_DEPTH = 1000  # `TaskIterator`'s default


def _walk(root: Task, state: int, subprocesses: dict[Any, Any] | None) -> Iterator[Task]:
    """The tasks under `root` in `state`, in exactly the order and with the same pruning as SpiffWorkflow's
    `TaskIterator` (``subprocesses`` None) or `BpmnTaskIterator` (the top workflow's subprocesses: it descends
    into them) with only a state filter, and just as lazy: a task's children are taken when the task is
    reached, before it is handed out. Without the filter objects, the depth bookkeeping and the list
    shuffling (``task_list.pop(0)``, ``children + task_list``) that made the iteration most of a case step."""
    min_state = TaskState.MAYBE if state & _PREDICTED else TaskState.FUTURE if state & _DEFINITE \
        else TaskState.COMPLETED
    stack: list[tuple[Task, int]] = [(root, 0)]
    pop, push = stack.pop, stack.append
    while stack:
        task, depth = pop()
        sub = subprocesses.get(task.id) if subprocesses is not None else None
        if sub is None:
            children = task._children
            if children and task._state >= min_state and depth < _MAX_DEPTH:
                tasks = task.workflow.tasks
                for child in reversed(children):
                    push((tasks.get(child), depth + 1))
        elif depth < _MAX_DEPTH:
            tasks = task.workflow.tasks
            for child in reversed(task._children):
                push((tasks.get(child), depth + 1))
            push((sub.task_tree, depth + 1))
        if task._state & state:
            yield task


def _get_tasks_iterator(self: Any, first_task: Task | None = None, **kwargs: Any) -> Any:
    """`BpmnBaseWorkflow.get_tasks_iterator` with `_walk` when the only filter is the state (what the engine's
    own calls use: ready tasks on every engine step, prediction), `BpmnTaskIterator` otherwise."""
    if not kwargs or (len(kwargs) == 1 and "state" in kwargs):
        return _walk(first_task or self.task_tree, kwargs.get("state", TaskState.ANY_MASK),
                     self.top_workflow.subprocesses)
    return BpmnTaskIterator(first_task or self.task_tree, **kwargs)


def _update_waiting_tasks(self: Any) -> None:
    """`Workflow.update_waiting_tasks` (run after every completed task) with `_walk`."""
    for task in _walk(self.task_tree, TaskState.WAITING, None):
        task.task_spec._update(task)


def _collect_log_extras(self: Any, dct: dict[str, Any] | None = None) -> dict[str, Any]:
    """`Workflow.collect_log_extras` only when ``spiff.workflow`` logs at INFO: it lists every task of the tree
    (an unset logger level counts as "debug" there) for records that are dropped anyway."""
    if _workflow_logger.isEnabledFor(logging.INFO):
        extras: dict[str, Any] = _original_collect_log_extras(self, dct)
        return extras
    return dct or {}


_workflow_logger = logging.getLogger("spiff.workflow")
_original_collect_log_extras = Workflow.collect_log_extras
# What `install_fast_paths` replaces, as SpiffWorkflow has it (the tests compare the two).
LIBRARY_METHODS: list[tuple[type, str, Any]] = [
    (BpmnBaseWorkflow, "get_tasks_iterator", BpmnBaseWorkflow.get_tasks_iterator),
    (Workflow, "update_waiting_tasks", Workflow.update_waiting_tasks),
    (Workflow, "collect_log_extras", Workflow.collect_log_extras),
    (Task, "_set_state", Task._set_state),
]


def quiet_library_logs() -> None:
    """SpiffWorkflow logs every task state change at INFO (17 records to start one case, each with the task's
    details); under `cityos serve` (root logger at INFO) that was log noise and a tenth of a submission. Its
    ``spiff`` loggers therefore log from WARNING up unless ``CITYOS_WORKFLOW_LOG_LEVEL`` says otherwise (e.g.
    ``INFO`` to trace a process) or someone set their level already."""
    logger = logging.getLogger("spiff")
    if logger.level == logging.NOTSET:
        try:
            logger.setLevel(os.environ.get("CITYOS_WORKFLOW_LOG_LEVEL", "WARNING").strip().upper() or "WARNING")
        except ValueError:
            logger.setLevel(logging.WARNING)


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
def _syntax_error(expression: str) -> tuple[Any, ...] | None:
    """None when `expression` parses, else the arguments of its SyntaxError. Failures are remembered too: DMN
    asks whether each rule cell (``>= 3``) parses on its own on every evaluation, and most do not."""
    try:
        ast.parse(expression)
    except SyntaxError as exc:
        return exc.args
    return None


def _parses(expression: str) -> bool:
    error = _syntax_error(expression)
    if error is not None:
        raise SyntaxError(*error)  # a fresh exception each time (a shared one would pile up tracebacks)
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

    def to_dict(self, workflow: Any, spec_ref: str = "", uuid_ids: bool = False) -> dict[str, Any]:
        """`uuid_ids`: task ids may stay UUID objects (the caller writes the dict with orjson)."""
        registry = self.registry
        task_converter = _task_converter(registry)
        if registry._encoder_mode and not workflow.subprocesses and task_converter is not None:
            # `WorkflowConverter.to_dict` with the task map written by `_tasks_to_dict`: the same dict.
            last = workflow.last_task
            dct: dict[str, Any] = {
                "data": registry.convert(registry.clean(workflow.data)), "correlations": workflow.correlations,
                "last_task": str(last.id) if last is not None else None, "success": workflow.success,
                "completed": workflow.completed,
                "tasks": _tasks_to_dict(workflow, task_converter, _same if uuid_ids else str),
                "root": str(workflow.task_tree.id)}
        else:
            dct = WorkflowConverter.to_dict(self, workflow)
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


def _task_converter(registry: Any) -> Any:
    """The registry's converter for `Task` when it is SpiffWorkflow's own `TaskConverter` (None otherwise)."""
    to_dict = registry.convert_to_dict.get(registry.typenames.get(Task, ""))
    converter = getattr(to_dict.args[1], "__self__", None) if isinstance(to_dict, functools.partial) \
        and len(to_dict.args) == 2 else None
    return converter if type(converter) is TaskConverter else None


def _tasks_to_dict(workflow: Any, converter: Any, ids: Callable[[Any], Any] = str) -> dict[Any, Any]:
    """``mapping_to_dict(workflow.tasks)`` in the registry's encoder mode, built directly: for each task exactly
    the dict `TaskConverter.to_dict` returns plus its ``typename`` (data as a delta against the parent's), without
    the registry's per-object dispatch. A task of another class goes through the registry as before.

    `ids` turns a task id into what the dict holds: its text (the library's dict), or the UUID itself for
    orjson, which writes a UUID (value or key) as exactly that text, in C."""
    registry = converter.registry
    typename = converter.typename
    convert = registry.convert
    tasks = workflow.tasks
    result: dict[Any, Any] = {}
    for key, task in tasks.items():
        if type(task) is not Task:
            result[ids(key)] = convert(task)
            continue
        parent = tasks.get(task._parent)
        if parent is None:
            data, delta = task.data, {}
        else:
            before, after = parent.data, task.data
            data = {}
            delta = {"updates": {k: v for k, v in after.items() if k not in before or v != before[k]},
                     "deletions": [k for k in before if k not in after]}
        internal = task.internal_data
        result[ids(key)] = {
            "id": ids(task.id), "parent": ids(task._parent) if parent is not None else None,
            "children": [ids(child) for child in task._children], "last_state_change": task.last_state_change,
            "state": task._state, "task_spec": task.task_spec.name, "triggered": task.triggered,
            "internal_data": convert(internal) if internal else {}, "data": data, "delta": delta,
            "typename": typename}
    return result


def _same(value: Any) -> Any:
    return value


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
        quiet_library_logs()
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
        workflow.refresh_timers()  # what the deprecated `refresh_waiting_tasks` does, without its warning
        workflow.do_engine_steps()

    def _to_dict(self, workflow: BpmnWorkflow, ref: str, uuid_ids: bool) -> dict[str, Any]:
        registry = self.serializer.registry
        registry._encoder_mode = True  # data dicts are cleaned, nested values left to the encoder
        try:
            to_dict = registry.convert_to_dict[registry.typenames[BpmnWorkflow]]
            dct: dict[str, Any] = to_dict(workflow, spec_ref=ref, uuid_ids=uuid_ids)
        finally:
            registry._encoder_mode = False
        dct[BpmnWorkflowSerializer.VERSION_KEY] = SERIALIZER_VERSION
        return dct

    def dump(self, workflow: BpmnWorkflow) -> bytes:
        """The workflow's state without its spec (see `spec_ref`): gzip(JSON)."""
        ref = self.spec_entry(workflow.spec, workflow.subprocess_specs).ref
        try:
            text = orjson.dumps(self._to_dict(workflow, ref, uuid_ids=True), default=self._encoder.default,
                                option=orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_NON_STR_KEYS)
        except TypeError:  # something orjson will not take: the serializer's own JSON encoder
            text = json.dumps(self._to_dict(workflow, ref, uuid_ids=False), cls=type(self._encoder)).encode()
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
