"""Deadline timers of running workflows: the statutory clock's pause (补正) and the timers that fired.

The BPMN processes put a timer boundary event on each department's task (``timeDate`` =
``deadline_at``, the application's due time). Two things the engine alone does not do:

- **Pause.** While the applicant supplies missing materials the application's clock stops, on every
  parallel branch, not only on the one that asked. `freeze_timers` parks every waiting timer
  (its due time is kept aside, the timer itself is set to `FROZEN`, which never comes) and sets the
  ``deadline_at`` the branches carry to `FROZEN` as well, so a timer created during the pause
  (a branch moving on to its next task) cannot fire either. `thaw_timers` moves each parked timer
  on by the paused working days (`WorkCalendar.shift`) and gives every branch the new
  ``deadline_at``.
- **Fired timers.** `fired_timers` lists the timer events that have fired (completed timer tasks),
  each with the spiff task id that identifies the firing for good: the notices are sent once per id.

Timer kinds follow the BPMN element id: ``…_warning`` is a deadline warning, ``…_overdue`` an
overdue notice, anything else an escalation (督办).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from SpiffWorkflow.bpmn.specs.event_definitions.timer import TimerEventDefinition
from SpiffWorkflow.util.task import TaskState

from cityos.services.calendar import WorkCalendar

FROZEN = "9999-12-31T00:00:00+00:00"
TIMER_LABELS = {"warning": "临近时限预警", "escalation": "超时督办", "overdue": "已超期"}
_PARKED = "cityos_paused_event_value"  # internal data of a frozen timer task: its due time before the pause


@dataclass(frozen=True)
class FiredTimer:
    event_id: str  # the timer task's id: one firing
    name: str  # BPMN element id
    title: str
    lane: str | None
    kind: str  # warning | escalation | overdue
    due_at: datetime | None


def _all_tasks(wf: Any) -> Iterator[Any]:
    yield from wf.tasks.values()
    for sub in wf.subprocesses.values():
        yield from sub.tasks.values()


def _is_timer(task: Any) -> bool:
    return isinstance(getattr(task.task_spec, "event_definition", None), TimerEventDefinition)


def timer_kind(name: str) -> str:
    if name.endswith("_warning"):
        return "warning"
    if name.endswith("_overdue"):
        return "overdue"
    return "escalation"


def freeze_timers(wf: Any, current_due: datetime) -> int:
    """Stop every waiting timer of `wf` (the application is paused); returns how many were parked now.

    Idempotent: a timer parked before stays parked. A timer created during the pause from the frozen
    ``deadline_at`` is parked with `current_due` (the due time before the pause ends)."""
    parked = 0
    for task in _all_tasks(wf):
        if "deadline_at" in task.data:
            task.data["deadline_at"] = FROZEN
        if task.state != TaskState.WAITING or not _is_timer(task):
            continue
        if task._get_internal_data(_PARKED) is not None:
            continue
        value = task._get_internal_data("event_value")
        if not isinstance(value, str):
            continue
        task._set_internal_data(**{_PARKED: current_due.isoformat() if value == FROZEN else value,
                                   "event_value": FROZEN})
        parked += 1
    return parked


def thaw_timers(wf: Any, calendar: WorkCalendar, paused_days: int, new_due: datetime) -> int:
    """Restart the clock: every parked timer moves on by `paused_days` working days; every branch's
    ``deadline_at`` becomes `new_due`. Returns how many timers were restarted."""
    moved = 0
    for task in _all_tasks(wf):
        if "deadline_at" in task.data:
            task.data["deadline_at"] = new_due.isoformat()
        if not _is_timer(task):
            continue
        parked = task._get_internal_data(_PARKED)
        if parked is None:
            if task.state == TaskState.WAITING and task._get_internal_data("event_value") == FROZEN:
                task._set_internal_data(event_value=new_due.isoformat())
                moved += 1
            continue
        task.internal_data.pop(_PARKED, None)
        if task.state != TaskState.WAITING:
            continue
        shifted = calendar.shift(TimerEventDefinition.get_datetime(parked), paused_days)
        task._set_internal_data(event_value=shifted.astimezone(calendar.tz).isoformat())
        moved += 1
    return moved


def fired_timers(wf: Any) -> list[FiredTimer]:
    """The timer events of `wf` that have fired (in task order)."""
    out = []
    for task in _all_tasks(wf):
        if task.state != TaskState.COMPLETED or not _is_timer(task):
            continue
        spec = task.task_spec
        value = task._get_internal_data("event_value")
        due = None
        if isinstance(value, str) and value != FROZEN:
            try:
                due = TimerEventDefinition.get_datetime(value)
            except ValueError:
                due = None
        out.append(FiredTimer(str(task.id), spec.name, getattr(spec, "bpmn_name", None) or spec.name,
                              getattr(spec, "lane", None), timer_kind(spec.name), due))
    return out
