"""A notification with linked entities (`notification.join`) audits the sensitive values it sends in clear
as a plain notification does: the notified entity is masked (and audited) once, not once more for the join."""

from __future__ import annotations

from typing import Any

import httpx

from auth_tokens import Auth
from cityos.security.audit import AuditEvent, AuditQuery
from hub.subscriptions.notify_helpers import (  # noqa: F401 - the fixture is used by name
    Receiver,
    S,
    receiver_fixture,
)
from security.test_sec_masking_hub import CASE, JSON, E, case_file, declare_case_file


async def test_a_joined_notification_audits_the_entity_once(client: httpx.AsyncClient, auth: Auth, app: Any,
                                                            receiver: Receiver) -> None:
    await declare_case_file(client)
    assert (await client.post(E, json=case_file(), headers=JSON)).status_code == 201
    official = auth.headers("official", department="health", username="dr-wang")
    subs = {}
    for join in ("plain", "@none", "flat"):
        notification = {"endpoint": {"uri": receiver.url}, "format": "keyValues"}
        if join != "plain":
            notification["join"] = join
        body = {"type": "Subscription", "entities": [{"type": "CaseFile"}], "notification": notification}
        r = await client.post(S, json=body, headers=official | JSON)
        assert r.status_code == 201, r.text
        subs[join] = r.headers["location"].rsplit("/", 1)[1]
    r = await client.patch(f"{E}/{CASE}/attrs", json={"status": {"type": "Property", "value": "closed"}},
                           headers=JSON)
    assert r.status_code == 204, r.text
    # Every subscription is notified of the change. The entity's creation may reach some of them too: those
    # created before the notifier took the creation up (which runs after the 201), so wait for the change itself.
    def closed_for_all(got: list[Any]) -> bool:
        return {n.body["subscriptionId"] for n in got
                if n.body["data"][0].get("status") == "closed"} >= set(subs.values())

    received = await receiver.wait_for(closed_for_all)
    assert all(n.body["data"][0]["idNumber"] == "110101199003071234" for n in received)  # in clear: audited
    audit = app.state.security.audit
    await audit.record(AuditEvent.of(None, "test.barrier"))  # committed after everything submitted before
    rows = await audit.search(AuditQuery(action="entity.notify.sensitive", resource=CASE))
    audited = {join: sum(1 for row in rows if row["detail"].get("subscription") == sub_id)
               for join, sub_id in subs.items()}
    notified = {join: sum(1 for n in received if n.body["subscriptionId"] == sub_id)
                for join, sub_id in subs.items()}
    # A plain notification audits the sensitive values it reveals (once per state of the change it masks, before
    # and after); a joined one audits exactly as many per notification, none more for the join.
    per_notification = audited["plain"] // notified["plain"]
    assert per_notification >= 1 and audited == {join: per_notification * n for join, n in notified.items()}, \
        (audited, notified)
