"""Issue 12, finding 11: a submission committed without its audit record (the process died between
the commit and the record) is found and recorded at start."""

from __future__ import annotations

from typing import Any

import httpx
from services_core_helpers import submit, upload

from cityos.security.audit import AuditQuery
from cityos.security.policy import Principal, Resource

FUND = "housing-fund-withdrawal"
FUND_FORM = {"accountNumber": "1234567890", "purpose": "purchase", "contributionMonths": 1, "accountBalance": 50000,
             "amount": 12000}


async def _allow(action: str, resource: Resource) -> None:
    return None


async def test_services_submission_without_audit_record_is_recorded_at_start(
        client: httpx.AsyncClient, auth: Any, desk: Any, app: Any, fake_clock: Any) -> None:
    citizen = auth.headers("citizen", user_id="rc-1")
    doc = await upload(client, citizen)
    materials = [{"name": "id-card", "uploadId": doc["uploadId"]}]
    audited = await submit(client, citizen, FUND, FUND_FORM, materials)  # through the API: recorded
    # Through the service only: committed, but the API's record after the commit never happens (a crash).
    lost = await desk.submit(Principal(id="rc-1", role="citizen"), "", {"serviceCode": FUND, "form": FUND_FORM,
                                                                        "materials": materials}, _allow)
    log = app.state.security.audit

    async def records(app_id: str) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = await log.search(AuditQuery(action="application.submit",
                                                                 resource=f"application:{app_id}"), masked=False)
        return rows

    assert await records(lost["id"]) == [] and len(await records(audited["id"])) == 1
    assert await desk.reconcile_audit() == 0  # still within the settling minute: may be in flight elsewhere
    fake_clock.advance(minutes=2)
    assert await desk.reconcile_audit() == 1
    recovered = await records(lost["id"])
    assert len(recovered) == 1 and recovered[0]["detail"]["recovered"] is True
    assert recovered[0]["detail"]["receipt"] == lost["receipt"] and recovered[0]["actor"] == "rc-1"
    assert len(await records(audited["id"])) == 1  # the audited one is not doubled
    assert await desk.reconcile_audit() == 0  # and a second start records nothing again
    assert (await log.verify()).ok
