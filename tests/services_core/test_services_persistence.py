"""How a case is persisted: the workflow state names its process definition instead of carrying it,
the definition is stored once, a case keeps loading after a restart (empty in-process caches), and
the applicant's notices are written with the change that causes them."""

from __future__ import annotations

import gzip
from typing import Any

import httpx
from services_core_helpers import act, inbox, submit, upload
from SpiffWorkflow.bpmn.serializer.workflow import BpmnWorkflowSerializer
from SpiffWorkflow.camunda.serializer.config import CAMUNDA_CONFIG
from sqlalchemy import func, select

from cityos.services import models as m
from cityos.services.workflow import Engine

FUND = "housing-fund-withdrawal"


def fund_form(**over: Any) -> dict[str, Any]:
    return {"accountNumber": "1234567890", "purpose": "rent", "contributionMonths": 2, "accountBalance": 50000,
            "amount": 1000, **over}


async def subjects(client: httpx.AsyncClient, headers: dict[str, str]) -> list[str]:
    response = await client.get("/api/services/notifications", headers=headers)
    assert response.status_code == 200, response.text
    return sorted(item["subject"] for item in response.json()["items"])


async def test_services_state_refers_to_a_stored_definition(client: httpx.AsyncClient, auth: Any, desk: Any) -> None:
    citizen = auth.headers("citizen", user_id="p1")
    doc = await upload(client, citizen)
    views = [await submit(client, citizen, FUND, fund_form(), [{"name": "id-card", "uploadId": doc["uploadId"]}])
             for _ in range(2)]
    async with desk.db.connect() as conn:
        states = (await conn.execute(select(m.workflows.c.state).where(
            m.workflows.c.application_id.in_([v["id"] for v in views])))).scalars().all()
        specs = (await conn.execute(select(func.count()).select_from(m.workflow_specs))).scalar_one()
    decoded = [Engine.decode(bytes(s)) for s in states]
    assert all("spec" not in d and Engine.needed_spec(d) for d in decoded)
    assert len({Engine.needed_spec(d) for d in decoded}) == 1 and specs >= 1

    # A restarted process knows no definitions: the case still moves, with its own stored definition.
    desk.workflow = Engine()
    desk._stored_specs.clear()
    official = auth.headers("official", department="housing-fund")
    task = next(t for t in await inbox(client, official) if t["applicationId"] == views[0]["id"])
    done = await act(client, official, task["id"], "approve", {"comment": "ok"})
    assert done["status"] == "approved"


async def test_services_states_written_before_still_load(desk: Any) -> None:
    """A state in the earlier format (gzip JSON with the whole spec inside) loads and runs."""
    svc = desk.services[FUND]
    engine = desk.workflow
    wf = engine.start(svc.spec, {"form": fund_form(), "deadline_at": "2099-01-01T00:00:00+00:00"})
    serializer = BpmnWorkflowSerializer(BpmnWorkflowSerializer.configure(CAMUNDA_CONFIG))  # as before
    old = gzip.compress(serializer.serialize_json(wf).encode(), compresslevel=1)
    restored = engine.load(old)
    assert [t.task_spec.name for t in engine.ready_user_tasks(restored)] == ["fund_review"]
    again = engine.load(engine.dump(restored))
    assert [t.task_spec.name for t in engine.ready_user_tasks(again)] == ["fund_review"]


async def test_services_notices_come_with_the_change(client: httpx.AsyncClient, auth: Any, desk: Any) -> None:
    citizen = auth.headers("citizen", user_id="p2")
    doc = await upload(client, citizen)
    material = [{"name": "id-card", "uploadId": doc["uploadId"]}]
    name = desk.services[FUND].definition.name
    instant = await submit(client, citizen, FUND, fund_form(contributionMonths=12), material)
    assert instant["status"] == "approved"
    assert await subjects(client, citizen) == sorted([f"已受理:{name}", f"已办结:{name}"])
    manual = await submit(client, citizen, FUND, fund_form(), material)
    assert manual["status"] == "in_review"
    assert await subjects(client, citizen) == sorted([f"已受理:{name}", f"已办结:{name}", f"已受理:{name}"])
    official = auth.headers("official", department="housing-fund")
    task = next(t for t in await inbox(client, official) if t["applicationId"] == manual["id"])
    await act(client, official, task["id"], "reject", {"reason": "余额不足"})
    assert (await subjects(client, citizen)).count(f"不予办理:{name}") == 1


async def test_services_inbox_pages_and_totals(client: httpx.AsyncClient, auth: Any, desk: Any) -> None:
    citizen = auth.headers("citizen", user_id="p3")
    doc = await upload(client, citizen)
    material = [{"name": "id-card", "uploadId": doc["uploadId"]}]
    for _ in range(3):
        await submit(client, citizen, FUND, fund_form(), material)
    official = auth.headers("official", department="housing-fund")

    async def page(**params: Any) -> dict[str, Any]:
        response = await client.get("/api/services/tasks", headers=official, params=params)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    first = await page(limit=2)
    assert len(first["items"]) == 2 and first["total"] == 3 and first["offset"] == 0
    rest = await page(limit=2, offset=2)
    assert len(rest["items"]) == 1 and rest["total"] == 3
    assert {i["id"] for i in first["items"]} | {i["id"] for i in rest["items"]} == \
        {i["id"] for i in (await page())["items"]}
    past = await page(limit=2, offset=10)
    assert past["items"] == [] and past["total"] == 3
    await act(client, official, first["items"][0]["id"], "approve", {"comment": "ok"})
    assert (await page())["total"] == 2
    done = await page(status="completed")
    assert [i["id"] for i in done["items"]] == [first["items"][0]["id"]] and done["total"] is None
    assert len((await page(status="all"))["items"]) == 3
    other = await client.get("/api/services/tasks", headers=auth.headers("official", department="tax"))
    assert other.status_code == 200 and other.json()["items"] == [] and other.json()["total"] == 0
