"""BPMN 2.0 / DMN workflows on SpiffWorkflow: parse and validate, run, persist, fire timers."""

from cityos.services.workflow.engine import (
    APPLICANT_LANE,
    Engine,
    ProcessInfo,
    WorkflowDefinitionError,
    install_clock,
    parse_definition,
)

__all__ = ["APPLICANT_LANE", "Engine", "ProcessInfo", "WorkflowDefinitionError", "install_clock",
           "parse_definition"]
