"""FHIR R4 views of appointments: Schedule, Slot, Appointment, searchset Bundles and OperationOutcome.

Incoming resources are validated with `fhir.resources` (the R4B models: Schedule, Slot and Appointment
are the same in R4 and R4B), so a standard FHIR client's requests are read as the standard says.
"""

from __future__ import annotations

from typing import Any

from fhir.resources.R4B.appointment import Appointment
from pydantic import ValidationError

from cityos.core.errors import BadRequestData, ProblemError

FHIR_JSON = "application/fhir+json"
KIND_CODES = {"hospital": ("394802001", "General medicine"), "vaccination": ("33879002", "Vaccination"),
              "hall": ("gov-service", "Government service window")}
OUTCOME_CODES = {400: "invalid", 401: "login", 403: "forbidden", 404: "not-found", 409: "conflict",
                 405: "not-supported", 413: "too-costly", 422: "processing", 500: "exception"}


def schedule_resource(view: dict[str, Any]) -> dict[str, Any]:
    code, display = KIND_CODES.get(view["kind"], (view["kind"], view["kind"]))
    actor_name = f"{view['site']} {view['actor']}" if view.get("actor") else view["site"]
    return {"resourceType": "Schedule", "id": view["id"], "active": view["active"],
            "serviceCategory": [{"coding": [{"system": "https://cityos.dev/fhir/site-kind", "code": view["kind"],
                                             "display": display}], "text": code}],
            "serviceType": [{"text": view["service"]}],
            "actor": [{"display": actor_name}]}


def slot_resource(view: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Slot", "id": view["id"], "schedule": {"reference": f"Schedule/{view['scheduleId']}"},
            "status": view["status"], "start": view["start"], "end": view["end"],
            "comment": f"{view['free']} of {view['capacity']} places free"}


def appointment_resource(view: dict[str, Any], end: str | None = None) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Appointment", "id": view["id"], "status": view["status"], "start": view["start"],
        "slot": [{"reference": f"Slot/{view['slotId']}"}],
        "participant": [{"actor": {"reference": f"Patient/{view['person']}"}, "status": "accepted"},
                        {"actor": {"reference": f"Schedule/{view['scheduleId']}"}, "status": "accepted"}]}
    if end:
        resource["end"] = end
    if view.get("note"):
        resource["comment"] = view["note"]
    return resource


def bundle(resources: list[dict[str, Any]], base: str) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "searchset", "total": len(resources),
            "entry": [{"fullUrl": f"{base}/{r['resourceType']}/{r['id']}", "resource": r,
                       "search": {"mode": "match"}} for r in resources]}


def operation_outcome(error: ProblemError) -> dict[str, Any]:
    return {"resourceType": "OperationOutcome",
            "issue": [{"severity": "error", "code": OUTCOME_CODES.get(error.status, "processing"),
                       "diagnostics": error.detail, "details": {"text": error.title}}]}


def reference_id(reference: Any, kind: str) -> str:
    """`Slot/abc` → `abc`; anything else is a bad request."""
    if not isinstance(reference, str) or not reference.startswith(f"{kind}/") or len(reference) > 128:
        raise BadRequestData(f"expected a reference {kind}/<id>, got {str(reference)[:80]!r}")
    return reference.split("/", 1)[1]


def booking_request(body: dict[str, Any], caller: str) -> tuple[str, str | None]:
    """The slot id and comment of a POSTed Appointment; the patient, when named, must be the caller."""
    if body.get("resourceType") != "Appointment":
        raise BadRequestData("the body must be an Appointment resource")
    try:
        appointment = Appointment.model_validate(body)
    except ValidationError as exc:
        raise BadRequestData(f"not a valid FHIR Appointment: {exc.errors()[0]['msg']}") from exc
    if appointment.status not in ("proposed", "pending", "booked"):
        raise BadRequestData("a new appointment's status must be proposed, pending or booked")
    if not appointment.slot or len(appointment.slot) != 1:
        raise BadRequestData("book exactly one slot (Appointment.slot)")
    slot_id = reference_id(appointment.slot[0].reference, "Slot")
    for participant in appointment.participant or []:
        reference = participant.actor.reference if participant.actor else None
        if reference and reference.startswith("Patient/") and reference != f"Patient/{caller}":
            raise BadRequestData("you can book only for yourself (Patient/<your id>)")
    return slot_id, appointment.comment
