"""The engine's fast paths give exactly what SpiffWorkflow and jsonschema give.

- `_walk` visits the same tasks in the same order as `TaskIterator` / `BpmnTaskIterator`;
- a workflow run with the engine's fast paths goes through the same states as one run with SpiffWorkflow's own
  methods (`LIBRARY_METHODS` put back);
- `Engine.dump` writes the same JSON as the serializer's own converters, and it loads back;
- the compiled form check agrees with `Draft202012Validator` on valid and invalid forms.
"""

from __future__ import annotations

import itertools
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator
from SpiffWorkflow.bpmn.util.task import BpmnTaskIterator
from SpiffWorkflow.bpmn.workflow import BpmnWorkflow
from SpiffWorkflow.util.task import TaskIterator, TaskState

from cityos.core import clock
from cityos.services.catalogue import CATALOGUE_DIR, compile_form_check, load_directory
from cityos.services.workflow import APPLICANT_LANE, Engine
from cityos.services.workflow import engine as engine_module

SERVICES, _BUNDLES = load_directory(CATALOGUE_DIR)
START = datetime(2026, 3, 2, 1, 0, tzinfo=UTC)
FORMS: dict[str, dict[str, Any]] = {
    "housing-fund-withdrawal": {"accountNumber": "1234567890", "purpose": "rent", "contributionMonths": 2,
                                "accountBalance": 50000, "amount": 1000},
    "business-licence-change": {"changeType": "address", "withinCity": True},
}
STATES = [TaskState.READY, TaskState.WAITING, TaskState.COMPLETED, TaskState.FUTURE, TaskState.MAYBE | TaskState.LIKELY,
          TaskState.NOT_FINISHED_MASK, TaskState.FINISHED_MASK, TaskState.ANY_MASK, TaskState.CANCELLED]
SCRIPTS = {"approve": ["approve"], "supplement-then-approve": ["supplement", "approve"], "reject": ["reject"],
           "late": ["timer", "approve"]}


@contextmanager
def library(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """SpiffWorkflow's own methods instead of the engine's fast paths, for the duration."""
    with monkeypatch.context() as patch:
        for cls, name, method in engine_module.LIBRARY_METHODS:
            patch.setattr(cls, name, method)
        yield


def signature(workflow: Any) -> list[tuple[str, int, int]]:
    """The tree without ids and times: (task spec, state, depth) in depth-first order."""
    return [(t.task_spec.name, t.state, t.depth) for t in TaskIterator(workflow.task_tree)]


def check_walks(workflow: Any) -> None:
    for state in STATES:
        expected = list(BpmnTaskIterator(workflow.task_tree, state=state))
        assert list(engine_module._walk(workflow.task_tree, state, workflow.subprocesses)) == expected
        assert workflow.get_tasks(state=state) == expected
        plain = list(TaskIterator(workflow.task_tree, state=state))
        assert list(engine_module._walk(workflow.task_tree, state, None)) == plain
    assert workflow.get_tasks() == list(BpmnTaskIterator(workflow.task_tree))


def library_dump(engine: Engine, workflow: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    with monkeypatch.context() as patch:
        patch.setattr(engine_module, "_task_converter", lambda registry: None)
        return orjson.loads(zlib.decompress(engine.dump(workflow), wbits=47))


def ready_user(workflow: Any) -> list[Any]:
    return sorted((t for t in workflow.get_tasks(state=TaskState.READY) if t.task_spec.manual),
                  key=lambda t: t.task_spec.name)


def step(engine: Engine, workflow: Any, action: str) -> bool:
    """One move of the script on one workflow; False when nothing could be done."""
    if action == "timer":
        engine.advance(workflow)
        return True
    tasks = ready_user(workflow)
    if not tasks:
        return False
    task = tasks[0]
    if task.task_spec.lane == APPLICANT_LANE:
        data: dict[str, Any] = {"supplemented": True}
    else:
        data = {f"{task.task_spec.name}_decision": action, "decision": action}
    task.data.update(data)
    task.run()
    engine.advance(workflow)
    return True


@pytest.mark.parametrize(("code", "script"), list(itertools.product(sorted(SERVICES), sorted(SCRIPTS))))
def test_services_engine_fast_workflow_matches_spiffworkflow(code: str, script: str,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    svc = SERVICES[code]
    engine = Engine()
    now = {"t": START}
    clock.set_clock(lambda: now["t"])
    try:
        data = {"form": FORMS.get(code, {}), "deadline_at": (START + timedelta(days=3)).isoformat(),
                "application_id": "a1", "service_code": code}
        fast = engine.start(svc.spec, dict(data))
        with library(monkeypatch):
            reference = BpmnWorkflow(svc.spec, script_engine=engine.script_engine)
            for task in list(TaskIterator(reference.task_tree, state=TaskState.READY)):
                task.data.update(dict(data))
            engine.advance(reference)
        moves = itertools.chain(*(["approve"] * 8 if a == "approve" else [a] for a in SCRIPTS[script]))
        for _ in range(30):
            assert signature(fast) == signature(reference)
            check_walks(fast)
            stored = engine.dump(fast)
            assert orjson.loads(zlib.decompress(stored, wbits=47)) == library_dump(engine, fast, monkeypatch)
            loaded = engine.load(stored)
            assert signature(loaded) == signature(fast) and engine.dump(loaded) == stored
            action = next(moves, "approve")
            if action == "timer":
                now["t"] = START + timedelta(days=5)
            done = step(engine, fast, action)
            with library(monkeypatch):
                assert step(engine, reference, action) == done
            if not done:
                break
        assert fast.is_completed() == reference.is_completed()
        assert signature(fast) == signature(reference)
    finally:
        clock.reset_clock()


# ---------------------------------------------------------------------------------------------- forms

def _values(schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Values around what each property allows: valid, wrong type, out of bounds, odd numbers."""
    interesting: list[Any] = [None, True, False, 0, -1, 1, 1.0, 1.5, -0.5, 2.0, 1e9, 20000, 20001, 300000, "", "a",
                              "12345678", "123456789012345678901", "1234567890", "x" * 300, [], {}, [1], {"a": 1}]
    for prop in (schema.get("properties") or {}).values():
        interesting.extend(prop.get("enum", []))
        for key in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "minLength", "maxLength"):
            if key in prop:
                n = prop[key]
                interesting.extend([n, n - 1, n + 1, n - 0.5, n + 0.5, float(n)])
    return st.sampled_from(interesting)


@pytest.mark.parametrize("code", sorted(SERVICES))
def test_services_form_check_agrees_with_jsonschema(code: str) -> None:
    schema = SERVICES[code].definition.form
    check = compile_form_check(schema)
    assert check is not None, f"{code}: the form schema should compile"
    validator = Draft202012Validator(schema)
    names = [*sorted(schema.get("properties") or {}), "unknownField"]
    base = FORMS.get(code) or {}

    @settings(max_examples=400, deadline=None, database=None)
    @given(st.dictionaries(st.sampled_from(names), _values(schema), max_size=len(names)), st.booleans())
    def agree(extra: dict[str, Any], merge: bool) -> None:
        form = {**base, **extra} if merge else extra
        assert check(form) == validator.is_valid(form), form

    agree()
    for form in (base, [], "x", None, 3):
        assert check(form) == validator.is_valid(form)


def test_services_form_check_declines_what_it_does_not_know() -> None:
    assert compile_form_check({"type": "object", "properties": {"a": {"$ref": "#/$defs/x"}}}) is None
    assert compile_form_check({"type": "object", "properties": {"a": {"enum": [1, "x"]}}}) is None
    assert compile_form_check({"type": "object", "additionalProperties": {"type": "string"}}) is None
    schema = {"type": "object", "required": ["n"], "properties": {"n": {"type": ["integer", "null"], "minimum": 2}}}
    check = compile_form_check(schema)
    assert check is not None
    validator = Draft202012Validator(schema)
    for form in ({"n": 2}, {"n": 2.0}, {"n": 1}, {"n": None}, {"n": True}, {"n": "3"}, {}, {"n": 2.5}):
        assert check(form) == validator.is_valid(form), form
