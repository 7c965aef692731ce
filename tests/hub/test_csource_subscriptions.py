"""Context Source registration subscriptions (§5.11) and their notifications, with a real HTTP receiver."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from auth_tokens import Auth
from hub.helpers import JSON
from hub.subscriptions.notify_helpers import Receiver

R = "/ngsi-ld/v1/csourceRegistrations"
CS = "/ngsi-ld/v1/csourceSubscriptions"
NGSI_ERRORS = "https://uri.etsi.org/ngsi-ld/errors/"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rec = Receiver()
    rec.status = 200
    try:
        yield rec
    finally:
        rec.server.shutdown()
        rec.server.server_close()


def registration(n: int, etype: str = "Building", **extra: Any) -> dict[str, Any]:
    return {"id": f"urn:ngsi-ld:ContextSourceRegistration:c{n}", "type": "ContextSourceRegistration",
            "information": [{"entities": [{"type": etype}], "propertyNames": ["height"]},
                            {"entities": [{"type": "Other"}]}],
            "endpoint": "http://district.example:1026", **extra}


def csub(n: int, uri: str, **extra: Any) -> dict[str, Any]:
    return {"id": f"urn:ngsi-ld:Subscription:cs{n}", "type": "Subscription", "entities": [{"type": "Building"}],
            "notification": {"endpoint": {"uri": uri, "accept": "application/json"}}, **extra}


async def test_notifications_follow_registration_changes(client: httpx.AsyncClient, receiver: Receiver) -> None:
    assert (await client.post(R, json=registration(1), headers=JSON)).status_code == 201
    r = await client.post(CS, json=csub(1, receiver.url), headers=JSON)
    assert r.status_code == 201, r.text
    # Initially: the registrations matching now, cut to their matching RegistrationInfo.
    got = await receiver.wait_for(lambda rs: len(rs) >= 1)
    first = got[0].body
    assert first["type"] == "ContextSourceNotification" and first["subscriptionId"] == "urn:ngsi-ld:Subscription:cs1"
    assert first["triggerReason"] == "newlyMatching"
    assert [d["id"] for d in first["data"]] == ["urn:ngsi-ld:ContextSourceRegistration:c1"]
    assert first["data"][0]["information"] == [{"entities": [{"type": "Building"}], "propertyNames": ["height"]}]
    assert "Link" in {k.title() for k in got[0].headers}
    # Changed while matching, then changed so that it no longer matches, then a new one, then deleted.
    await client.patch(f"{R}/urn:ngsi-ld:ContextSourceRegistration:c1", json={"registrationName": "n"}, headers=JSON)
    await client.patch(f"{R}/urn:ngsi-ld:ContextSourceRegistration:c1",
                       json={"information": [{"entities": [{"type": "Vehicle"}]}]}, headers=JSON)
    await client.post(R, json=registration(2), headers=JSON)
    await client.post(R, json=registration(3, etype="Vehicle"), headers=JSON)  # not for this subscription
    await client.delete(f"{R}/urn:ngsi-ld:ContextSourceRegistration:c2")
    got = await receiver.wait_for(lambda rs: len(rs) >= 5)
    reasons = [(b.body["triggerReason"], b.body["data"][0]["id"][-2:]) for b in got]
    assert reasons == [("newlyMatching", "c1"), ("updated", "c1"), ("noLongerMatching", "c1"),
                       ("newlyMatching", "c2"), ("noLongerMatching", "c2")]
    for _ in range(100):  # the status is recorded just after the receiver answered
        status = (await client.get(f"{CS}/urn:ngsi-ld:Subscription:cs1")).json()
        if status["notification"].get("timesSent") == 5:
            break
        await asyncio.sleep(0.05)
    assert status["notification"]["timesSent"] == 5 and status["notification"]["status"] == "ok"
    assert "lastSuccess" in status["notification"] and "notificationTrigger" not in status


async def test_paused_expired_and_failing_subscriptions(client: httpx.AsyncClient, receiver: Receiver) -> None:
    assert (await client.post(CS, json=csub(2, receiver.url, isActive=False), headers=JSON)).status_code == 201
    assert (await client.post(R, json=registration(5), headers=JSON)).status_code == 201
    dead = "http://127.0.0.1:9/notify"  # nothing listens on the discard port
    assert (await client.post(CS, json=csub(3, dead), headers=JSON)).status_code == 201
    await client.post(R, json=registration(6), headers=JSON)
    for _ in range(100):
        failed = (await client.get(f"{CS}/urn:ngsi-ld:Subscription:cs3")).json()["notification"]
        if failed.get("timesSent", 0) >= 2:
            break
        await asyncio.sleep(0.05)
    assert failed["status"] == "failed" and failed["timesFailed"] == failed["timesSent"] >= 2
    assert "lastFailure" in failed and "lastErrorReason" in failed
    assert receiver.bodies() == []  # the paused subscription sent nothing
    # Resumed: it is told what matches now.
    assert (await client.patch(f"{CS}/urn:ngsi-ld:Subscription:cs2", json={"isActive": True},
                               headers=JSON)).status_code == 204
    got = await receiver.wait_for(lambda rs: len(rs) >= 1)
    assert sorted(d["id"][-2:] for d in got[0].body["data"]) == ["c5", "c6"]


async def test_periodic_subscription_is_sent_even_with_nothing_to_report(client: httpx.AsyncClient,
                                                                         receiver: Receiver) -> None:
    body = csub(4, receiver.url, timeInterval=1, entities=[{"type": "Nothing"}])
    assert (await client.post(CS, json=body, headers=JSON)).status_code == 201
    got = await receiver.wait_for(lambda rs: len(rs) >= 2, seconds=15)
    assert got[0].body["data"] == [] and got[1].body["subscriptionId"] == "urn:ngsi-ld:Subscription:cs4"


async def test_csource_subscription_crud_and_bad_input(client: httpx.AsyncClient, auth: Auth) -> None:
    uri = "http://127.0.0.1:9/notify"
    assert (await client.post(CS, json=csub(5, uri, csf='district=="x"', temporalQ={
        "timerel": "after", "timeAt": "2020-01-01T00:00:00Z", "timeproperty": "observedAt"}),
        headers=JSON)).status_code == 201
    got = (await client.get(f"{CS}/urn:ngsi-ld:Subscription:cs5")).json()
    assert got["csf"] == 'district=="x"' and got["temporalQ"]["timerel"] == "after" and got["status"] == "active"
    listed = await client.get(CS, params={"count": "true", "limit": "10"})
    assert listed.headers["NGSILD-Results-Count"] == "1" and len(listed.json()) == 1
    for bad in (
        {**csub(6, uri), "notification": {"format": "keyValues"}},
        {**csub(6, uri), "watchedAttributes": []},
        {**csub(6, uri), "type": "ContextSourceRegistration"},
        {**csub(6, uri), "q": "(("},
        {**csub(6, uri), "csf": "(("},
        {**csub(6, uri), "temporalQ": {"timerel": "before"}},
        {**csub(6, uri), "expiresAt": "2001-01-01T00:00:00Z"},
        {**csub(6, uri), "id": "not a uri"},
        {k: v for k, v in csub(6, uri).items() if k != "notification"},
        {**csub(6, "ftp://x.example/notify")},
    ):
        r = await client.post(CS, json=bad, headers=JSON)
        assert r.status_code == 400, (bad, r.text)
        assert r.json()["type"] == NGSI_ERRORS + "BadRequestData"
    dup = await client.post(CS, json=csub(5, uri), headers=JSON)
    assert dup.status_code == 409
    assert (await client.post(CS, content=b"[", headers=JSON)).status_code == 400
    r = await client.patch(f"{CS}/urn:ngsi-ld:Subscription:cs5", json={"notification": {"format": "x"}},
                           headers=JSON)
    assert r.status_code == 400
    assert (await client.get(f"{CS}/invalidUri")).status_code == 400
    assert (await client.get(f"{CS}/urn:ngsi-ld:Subscription:none")).status_code == 404
    assert (await client.patch(f"{CS}/urn:ngsi-ld:Subscription:none", json={"isActive": False},
                               headers=JSON)).status_code == 404
    forbidden = await client.post(CS, json=csub(7, uri), headers=JSON | auth.headers("citizen"))
    assert forbidden.status_code == 403
    assert (await client.delete(f"{CS}/urn:ngsi-ld:Subscription:cs5")).status_code == 204
    assert (await client.delete(f"{CS}/urn:ngsi-ld:Subscription:cs5")).status_code == 404


async def test_type_selection_in_csource_subscription(client: httpx.AsyncClient, receiver: Receiver) -> None:
    """An EntitySelector type may be a selection (§4.17): registrations of any type it names match."""
    r = await client.post(CS, json=csub(9, receiver.url, entities=[{"type": "(Building|Tower)"}]), headers=JSON)
    assert r.status_code == 201, r.text
    assert (await client.get(f"{CS}/urn:ngsi-ld:Subscription:cs9")).json()["entities"] == [
        {"type": "(Building|Tower)"}]
    for n, etype in ((91, "Vehicle"), (92, "Tower"), (93, "Building")):
        assert (await client.post(R, json=registration(n, etype=etype), headers=JSON)).status_code == 201
    got = await receiver.wait_for(lambda rs: len(rs) >= 2)
    # The Vehicle registration (created first) was not notified; the Tower and Building ones were, in order.
    assert [b.body["data"][0]["id"][-3:] for b in got] == ["c92", "c93"]
    bad = await client.post(CS, json=csub(10, receiver.url, entities=[{"type": "(Building|"}]), headers=JSON)
    assert bad.status_code == 400 and bad.json()["type"] == NGSI_ERRORS + "BadRequestData"
