"""FHIR R4 booking with a maintained FHIR client (fhirpy) against CityOS served over real HTTP (uvicorn on a
free port, in this test's event loop, on the test database of either backend)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import uvicorn
from fhirpy import AsyncFHIRClient
from fhirpy.base.exceptions import OperationOutcome
from test_appointments import API, People, make_site

from own_services import free_port


@pytest.fixture
async def fhir_base(app: Any, client: httpx.AsyncClient) -> AsyncIterator[str]:
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off", log_level="warning"))
    task = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110 (uvicorn offers a flag, not an event)
        await asyncio.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}/fhir/R4"
    finally:
        server.should_exit = True
        await task


def bearer(headers: dict[str, str]) -> str:
    return headers["Authorization"]


async def test_a_fhir_client_finds_a_slot_books_reads_and_cancels(client: httpx.AsyncClient, app: Any,
                                                                  fhir_base: str) -> None:
    people = People(app)
    schedule_id, slots = await make_site(client, people, slots_per_day=3)
    me = people.citizen("fhir-user")
    fhir = AsyncFHIRClient(fhir_base, authorization=bearer(me))

    capability = await fhir.execute("metadata", method="get")
    assert capability["resourceType"] == "CapabilityStatement" and capability["fhirVersion"] == "4.0.1"

    schedules = await fhir.resources("Schedule").search(**{"service-type": "心内科"}).fetch_all()
    assert [s.id for s in schedules] == [schedule_id]
    free = await fhir.resources("Slot").search(schedule=f"Schedule/{schedule_id}", status="free").fetch_all()
    assert len(free) == 3 and all(s["status"] == "free" for s in free)
    first_day = slots[0]["start"][:10]
    same_day = await fhir.resources("Slot").search(schedule=f"Schedule/{schedule_id}",
                                                   start=f"ge{first_day}").fetch_all()
    assert len(same_day) == 3

    appointment = fhir.resource("Appointment", status="booked", slot=[{"reference": f"Slot/{free[0].id}"}],
                                participant=[{"actor": {"reference": "Patient/fhir-user"}, "status": "accepted"}],
                                comment="胸闷复诊")
    await appointment.save()
    assert appointment.id and appointment["status"] == "booked"
    read = await fhir.reference("Appointment", appointment.id).to_resource()
    assert read["slot"][0]["reference"] == f"Slot/{free[0].id}" and read["comment"] == "胸闷复诊"
    mine = await fhir.resources("Appointment").search(patient="Patient/fhir-user").fetch_all()
    assert [a.id for a in mine] == [appointment.id]
    slot_now = await fhir.reference("Slot", free[0].id).to_resource()
    assert slot_now["status"] == "busy"

    # The same slot again: the server answers 409 with an OperationOutcome, which the client raises.
    again = fhir.resource("Appointment", status="booked", slot=[{"reference": f"Slot/{free[0].id}"}],
                          participant=[{"actor": {"reference": "Patient/fhir-user"}, "status": "accepted"}])
    with pytest.raises(OperationOutcome) as refused:
        await again.save()
    assert "conflict" in str(refused.value) or "full" in str(refused.value) or "already" in str(refused.value)

    read["status"] = "cancelled"
    await read.save()
    assert (await fhir.reference("Appointment", appointment.id).to_resource())["status"] == "cancelled"
    assert (await fhir.reference("Slot", free[0].id).to_resource())["status"] == "free"
    # Our JSON API sees the same state.
    assert (await client.get(f"{API}/appointments/{appointment.id}", headers=me)).json()["status"] == "cancelled"


async def test_fhir_refusals_are_operation_outcomes(client: httpx.AsyncClient, app: Any, fhir_base: str) -> None:
    people = People(app)
    _, slots = await make_site(client, people, slots_per_day=1)
    me = people.citizen("someone")
    async with httpx.AsyncClient(base_url=fhir_base, headers={**me, "Content-Type": "application/fhir+json"}) as http:
        cases = [
            ({"resourceType": "Patient"}, 400),
            ({"resourceType": "Appointment", "status": "booked", "participant": "nope"}, 400),
            ({"resourceType": "Appointment", "status": "booked", "slot": [{"reference": "Slot/unknown"}],
              "participant": [{"actor": {"reference": "Patient/someone"}, "status": "accepted"}]}, 404),
            ({"resourceType": "Appointment", "status": "booked", "slot": [{"reference": f"Slot/{slots[0]['id']}"}],
              "participant": [{"actor": {"reference": "Patient/another"}, "status": "accepted"}]}, 400),
            ({"resourceType": "Appointment", "status": "fulfilled",
              "slot": [{"reference": f"Slot/{slots[0]['id']}"}],
              "participant": [{"actor": {"reference": "Patient/someone"}, "status": "accepted"}]}, 400),
        ]
        for body, status in cases:
            response = await http.post("/Appointment", json=body)
            assert response.status_code == status, (body, response.text)
            outcome = response.json()
            assert outcome["resourceType"] == "OperationOutcome" and outcome["issue"][0]["diagnostics"]
        malformed = await http.post("/Appointment", content=b"{nope")
        assert malformed.status_code == 400 and malformed.json()["resourceType"] == "OperationOutcome"
        assert (await http.get("/Slot", params={"status": "sideways"})).status_code == 400
        assert (await http.get("/Slot", params={"start": "ge-yesterday"})).status_code == 400
        assert (await http.get("/Schedule/unknown")).status_code == 404


async def test_refusals_and_unknown_paths_are_operation_outcomes(app: Any, fhir_base: str) -> None:
    """A FHIR client reads every error as an OperationOutcome: sign-in missing (401), a role that may not book
    (403), an unknown resource type or id (404), a method the server does not offer (405)."""
    people = People(app)
    operator = people.auth.headers("operator", username="watch")

    def outcome_of(response: httpx.Response, status: int, code: str) -> None:
        assert response.status_code == status, response.text
        assert response.headers["content-type"].startswith("application/fhir+json")
        body = response.json()
        assert body["resourceType"] == "OperationOutcome", body
        assert body["issue"][0]["code"] == code and body["issue"][0]["severity"] == "error"

    async with httpx.AsyncClient(base_url=fhir_base) as anonymous:
        outcome_of(await anonymous.post("/Appointment", json={"resourceType": "Appointment"}), 401, "login")
        outcome_of(await anonymous.get("/Appointment", params={"patient": "Patient/x"}), 401, "login")
    async with httpx.AsyncClient(base_url=fhir_base, headers=operator) as http:
        outcome_of(await http.post("/Appointment", json={"resourceType": "Appointment"}), 403, "forbidden")
        outcome_of(await http.get("/Patient/123"), 404, "not-found")
        outcome_of(await http.get("/Slot/no-such-slot"), 404, "not-found")
        outcome_of(await http.delete("/Schedule"), 405, "not-supported")
    # Outside /fhir the same refusal stays ProblemDetails JSON.
    async with httpx.AsyncClient(base_url=fhir_base.removesuffix("/fhir/R4")) as plain:
        refused = await plain.post("/api/appointments/appointments", json={"slotId": "x"})
        assert refused.status_code == 401 and refused.headers["content-type"].startswith("application/json")
        assert "resourceType" not in refused.json()
