"""SpiffWorkflow 3.2 behind a small interface: parse + validate, run, persist, fire timers.

- Parsing uses the Camunda flavour (`CamundaParser`: `camunda:decisionRef` on business rule tasks, what
  Camunda Modeler writes) with XSD validation of BPMN and DMN. XML is read with a parser that
  resolves no entities and fetches nothing.
- A user task belongs to a department through its lane: the lane's `name` is the department id;
  the lane named ``applicant`` holds the applicant's 补正 (supplement) tasks.
- Persistence: `BpmnWorkflowSerializer` with the Camunda configuration; JSON, gzip-compressed.
- Timers: SpiffWorkflow compares timer events against `datetime.now(timezone.utc)` inside
  `SpiffWorkflow.bpmn.specs.event_definitions.timer`. `install_clock()` points that module's
  `datetime` at a subclass whose `now()` is `cityos.core.clock.now()`, so BPMN timers follow the
  injectable clock like every other deadline (tests move the clock; nothing sleeps).
- Scripts and expressions run with a short list of builtins; definitions are refused at load when
  an expression reaches for dunders or imports (`check_expressions`).
"""

from __future__ import annotations

import builtins
import gzip
import re
from dataclasses import dataclass, field
from datetime import datetime, tzinfo
from typing import Any

from lxml import etree
from SpiffWorkflow.bpmn.parser.BpmnParser import BpmnValidator
from SpiffWorkflow.bpmn.script_engine import PythonScriptEngine, TaskDataEnvironment
from SpiffWorkflow.bpmn.serializer.workflow import BpmnWorkflowSerializer
from SpiffWorkflow.bpmn.specs.event_definitions.timer import TimerEventDefinition
from SpiffWorkflow.bpmn.workflow import BpmnWorkflow
from SpiffWorkflow.camunda.parser.CamundaParser import CamundaParser
from SpiffWorkflow.camunda.serializer.config import CAMUNDA_CONFIG
from SpiffWorkflow.exceptions import SpiffWorkflowException
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


class Engine:
    """Runs and persists workflows; stateless apart from the serializer."""

    def __init__(self) -> None:
        install_clock()
        self.serializer = BpmnWorkflowSerializer(BpmnWorkflowSerializer.configure(CAMUNDA_CONFIG))
        self.script_engine = PythonScriptEngine(environment=TaskDataEnvironment({"__builtins__": _SAFE_BUILTINS}))

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
        return gzip.compress(self.serializer.serialize_json(workflow).encode(), compresslevel=1)

    def load(self, blob: bytes) -> BpmnWorkflow:
        workflow = self.serializer.deserialize_json(gzip.decompress(blob).decode())
        workflow.script_engine = self.script_engine
        return workflow

    @staticmethod
    def ready_user_tasks(workflow: BpmnWorkflow) -> list[Any]:
        return [t for t in workflow.get_tasks(state=TaskState.READY) if type(t.task_spec).__name__ == "UserTask"]

    @staticmethod
    def completed(workflow: BpmnWorkflow) -> list[Any]:
        return list(workflow.get_tasks(state=TaskState.COMPLETED))

    @staticmethod
    def next_timer(workflow: BpmnWorkflow) -> datetime | None:
        """When the earliest waiting timer event is due (None: nothing waits on a timer)."""
        due: list[datetime] = []
        for task in workflow.get_tasks(state=TaskState.WAITING):
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
    import uuid

    return uuid.UUID(value)
