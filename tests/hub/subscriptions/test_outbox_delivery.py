"""Notifications through the outbox to a real HTTP receiver: content, matching, order, failures."""

from __future__ import annotations

import asyncio
import itertools
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from sqlalchemy import func, select

from cityos.core import clock
from cityos.hub.subscriptions.delivery import UNREACHABLE
from cityos.hub.subscriptions.models import outbox
from cityos.hub.subscriptions.service import SubscriptionService
from hub.helpers import JSON, LD, air
from hub.subscriptions.notify_helpers import (  # noqa: F401 - the fixtures are used by name
    E,
    Receiver,
    S,
    closed_port,
    fast_notify_fixture,
    receiver_fixture,
    subscription,
)

AQ = "urn:ngsi-ld:AirQualityObserved:"


async def _subscribe(client: httpx.AsyncClient, body: dict[str, Any], headers: dict[str, str] | None = None) -> str:
    r = await client.post(S, json=body, headers=headers or JSON)
    assert r.status_code == 201, r.text
    return str(r.headers["Location"].rsplit("/", 1)[1])


async def _set_pm(client: httpx.AsyncClient, n: int, value: float, tenant: str = "") -> None:
    headers = {**JSON, "NGSILD-Tenant": tenant} if tenant else JSON
    r = await client.patch(f"{E}/{AQ}{n:06d}/attrs", json={"pm25": {"type": "Property", "value": value}},
                           headers=headers)
    assert r.status_code == 204, r.text


async def _outbox_rows(app: Any, state: str | None = None) -> int:
    async with app.state.engine.connect() as conn:
        stmt = select(func.count()).select_from(outbox)
        if state:
            stmt = stmt.where(outbox.c.state == state)
        return int((await conn.execute(stmt)).scalar_one())


async def test_http_notification_content(client: httpx.AsyncClient, receiver: Receiver) -> None:
    body = subscription(receiver.url, notification={"endpoint": {"uri": receiver.url, "receiverInfo": [
        {"key": "X-Auth-Token", "value": "secret"}]}})
    sub_id = await _subscribe(client, body)
    assert (await client.post(E, json=air(1, 12.5), headers=JSON)).status_code == 201
    await _set_pm(client, 1, 40)
    got = await receiver.wait_count(2)
    first, second = got[0], got[1]
    assert first.body["type"] == "Notification" and first.body["subscriptionId"] == sub_id
    assert first.body["id"].startswith("urn:ngsi-ld:Notification:")
    assert first.body["notifiedAt"].endswith("Z")
    assert first.headers["ngsild-notification-id"] == first.body["id"]
    assert first.headers["content-type"] == "application/json"
    assert "json-ld#context" in first.headers["link"]
    assert first.headers["x-auth-token"] == "secret"
    entity = first.body["data"][0]
    assert entity["id"] == f"{AQ}000001" and entity["type"] == "AirQualityObserved"
    assert entity["pm25"]["value"] == 12.5 and entity["location"]["type"] == "GeoProperty"
    assert second.body["data"][0]["pm25"]["value"] == 40
    await asyncio.sleep(0.3)  # the sender records success after the receiver answered
    status = (await client.get(f"{S}/{sub_id}")).json()["notification"]
    assert status["timesSent"] == 2 and status["status"] == "ok" and "lastSuccess" in status


async def test_key_values_attributes_and_user_context(client: httpx.AsyncClient, receiver: Receiver) -> None:
    ctx = [{"Air": "https://example.org/Air", "pm": "https://example.org/pm25", "t": "https://example.org/temp"},
           "https://uri.etsi.org/ngsi-ld/v1/ngsi-ld-core-context-v1.8.jsonld"]
    body = {"@context": ctx, **subscription(receiver.url, entities=[{"type": "Air"}], notification={
        "endpoint": {"uri": receiver.url, "accept": "application/ld+json"}, "format": "keyValues",
        "attributes": ["pm"]})}
    await _subscribe(client, body, LD)
    entity = {"@context": ctx, "id": "urn:ngsi-ld:Air:1", "type": "Air", "pm": {"type": "Property", "value": 7},
              "t": {"type": "Property", "value": 20}}
    assert (await client.post(E, json=entity, headers=LD)).status_code == 201
    got = (await receiver.wait_count(1))[0]
    assert got.headers["content-type"] == "application/ld+json"
    assert got.body["@context"] == ctx
    # JSON-LD: each notified entity carries the @context too (§5.8.6).
    assert got.body["data"] == [{"id": "urn:ngsi-ld:Air:1", "type": "Air", "pm": 7, "@context": ctx}]


async def test_watched_attributes_q_and_triggers(client: httpx.AsyncClient, receiver: Receiver) -> None:
    await client.post(E, json=air(1, 10, temperature={"type": "Property", "value": 20}), headers=JSON)
    await _subscribe(client, subscription(receiver.url, watchedAttributes=["pm25"], q="pm25>50"))
    r = await client.patch(f"{E}/{AQ}000001/attrs", json={"temperature": 21}, headers=JSON)
    assert r.status_code == 204
    await _set_pm(client, 1, 30)   # watched, but q is false
    await _set_pm(client, 1, 60)   # notifies
    got = await receiver.wait_count(1)
    await asyncio.sleep(0.3)
    assert len(receiver.received) == 1
    assert got[0].body["data"][0]["pm25"]["value"] == 60


async def test_delete_triggers_and_show_changes(client: httpx.AsyncClient, receiver: Receiver) -> None:
    await client.post(E, json=air(1, 10), headers=JSON)
    await _subscribe(client, subscription(receiver.url, notificationTrigger=["entityDeleted", "attributeUpdated"],
                                          notification={"endpoint": {"uri": receiver.url}, "showChanges": True}))
    await _set_pm(client, 1, 11)
    assert (await client.delete(f"{E}/{AQ}000001")).status_code == 204
    got = await receiver.wait_count(2)
    assert got[0].body["data"][0]["pm25"]["value"] == 11
    assert got[0].body["data"][0]["pm25"]["previousValue"] == 10
    deleted = got[1].body["data"][0]
    assert deleted["id"] == f"{AQ}000001" and "deletedAt" in deleted
    # showChanges: the deleted entity's attributes as NGSI-LD Null with their previous values (§5.8.6).
    assert deleted["pm25"] == {"type": "Property", "value": "urn:ngsi-ld:null", "previousValue": 11}


async def test_attribute_created_and_deleted_triggers(client: httpx.AsyncClient, receiver: Receiver) -> None:
    await client.post(E, json=air(1, 10), headers=JSON)
    await _subscribe(client, subscription(receiver.url, notificationTrigger=["attributeDeleted"]))
    r = await client.post(f"{E}/{AQ}000001/attrs", json={"no2": 5}, headers=JSON)  # attributeCreated: no
    assert r.status_code == 204
    await _set_pm(client, 1, 12)  # attributeUpdated: no
    assert (await client.delete(f"{E}/{AQ}000001/attrs/no2")).status_code == 204
    got = await receiver.wait_count(1)
    await asyncio.sleep(0.3)
    # The deleted attribute is notified as NGSI-LD Null (v1.8.1 §5.8.6).
    assert len(receiver.received) == 1
    assert got[0].body["data"][0]["no2"] == {"type": "Property", "value": "urn:ngsi-ld:null"}


async def test_geo_q_filters(client: httpx.AsyncClient, receiver: Receiver) -> None:
    await _subscribe(client, subscription(receiver.url, geoQ={
        "georel": "near;maxDistance==1000", "geometry": "Point", "coordinates": [116.40, 39.90]}))
    await client.post(E, json=air(1, lon=116.40, lat=39.90), headers=JSON)
    await client.post(E, json=air(2, lon=117.40, lat=39.90), headers=JSON)
    got = await receiver.wait_count(1)
    await asyncio.sleep(0.3)
    assert [r.body["data"][0]["id"] for r in receiver.received] == [f"{AQ}000001"]
    assert got


async def test_order_per_entity_and_batch(client: httpx.AsyncClient, receiver: Receiver) -> None:
    await client.post(E, json=air(1), headers=JSON)
    await _subscribe(client, subscription(receiver.url, notificationTrigger=["attributeUpdated"]))
    for value in range(1, 31):
        await _set_pm(client, 1, value)
    await receiver.wait_count(30)
    assert [b["data"][0]["pm25"]["value"] for b in receiver.bodies()] == list(range(1, 31))
    # A batch of 20 entities is one transaction: one notification holding all of them.
    r = await client.post("/ngsi-ld/v1/entityOperations/upsert", json=[air(n, 5) for n in range(100, 120)],
                          headers=JSON)
    assert r.status_code in (201, 204), r.text
    await receiver.wait_for(lambda got: sum(len(x.body["data"]) for x in got) >= 30)
    assert len(receiver.received) == 30  # creations do not trigger attributeUpdated
    await _subscribe(client, subscription(receiver.url))
    r = await client.post("/ngsi-ld/v1/entityOperations/upsert", json=[air(n, 6) for n in range(200, 220)],
                          headers=JSON)
    got = await receiver.wait_count(31)
    assert sorted(e["id"] for e in got[30].body["data"]) == [f"{AQ}{n:06d}" for n in range(200, 220)]


async def test_rolled_back_change_has_no_notification(app: Any, client: httpx.AsyncClient,
                                                      receiver: Receiver) -> None:
    await _subscribe(client, subscription(receiver.url))

    async def explode(*_args: Any) -> None:
        raise RuntimeError("a later listener fails: the transaction must roll back")

    app.state.hub.service.listeners.append(explode)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://cityos.test",
                                     headers=dict(client.headers)) as plain:
            r = await plain.post(E, json=air(1), headers=JSON)
        assert r.status_code == 500
    finally:
        app.state.hub.service.listeners.remove(explode)
    assert (await client.post(E, json=air(2), headers=JSON)).status_code == 201
    got = await receiver.wait_count(1)
    await asyncio.sleep(0.3)
    assert [r.body["data"][0]["id"] for r in got] == [f"{AQ}000002"] and len(receiver.received) == 1
    assert (await client.get(f"{E}/{AQ}000001")).status_code == 404


async def test_dead_endpoint_does_not_delay_others(app: Any, client: httpx.AsyncClient, receiver: Receiver,
                                                   fast_notify: None) -> None:
    dead = f"http://127.0.0.1:{closed_port()}/notify"
    dead_id = await _subscribe(client, subscription(dead))
    await _subscribe(client, subscription(receiver.url))
    await client.post(E, json=air(1), headers=JSON)
    for value in range(40):
        await _set_pm(client, 1, value)
    last_write = time.time()
    got = await receiver.wait_count(41, seconds=10)
    # Promptly: the live endpoint is never held behind the dead one's timeouts and backoff.
    assert got[-1].at - last_write < 2.0
    assert [b["data"][0]["pm25"]["value"] for b in receiver.bodies()[1:]] == list(range(40))
    # The dead endpoint's subscription is failed after 3 attempts; its rows are parked, not dropped.
    async def failed() -> dict[str, Any]:
        for _ in range(100):
            status = (await client.get(f"{S}/{dead_id}")).json()["notification"]
            if status["status"] == "failed" and await _outbox_rows(app, "pending") == 0:
                return dict(status)
            await asyncio.sleep(0.05)
        raise AssertionError(status)

    status = await failed()
    # A generic reason: the socket-level cause (refused, timed out) would map ports (test_outbound_guard.py).
    assert status["timesFailed"] >= 3 and status["lastErrorReason"] == UNREACHABLE and "lastFailure" in status
    assert await _outbox_rows(app, "failed") == 41


async def test_failed_subscription_recovers_after_update(app: Any, client: httpx.AsyncClient, receiver: Receiver,
                                                         fast_notify: None) -> None:
    receiver.status = 500
    sub_id = await _subscribe(client, subscription(receiver.url))
    for n in range(3):
        await client.post(E, json=air(n), headers=JSON)
    for _ in range(100):
        # "failed" shows from the first failed attempt; wait for the third, after which the rows are parked.
        notification = (await client.get(f"{S}/{sub_id}")).json()["notification"]
        if notification.get("status") == "failed" and notification["timesFailed"] >= 3:
            break
        await asyncio.sleep(0.05)
    status = (await client.get(f"{S}/{sub_id}")).json()["notification"]
    assert status["status"] == "failed" and status["lastErrorReason"] == "HTTP 500 from the endpoint"
    assert status["timesSent"] == 0
    receiver.status = 200
    # Updating the subscription is the operator's answer: parked notifications go out again, in order.
    r = await client.patch(f"{S}/{sub_id}", json={"description": "endpoint fixed"}, headers=JSON)
    assert r.status_code == 204
    got = await receiver.wait_count(3)
    assert sorted(g.body["data"][0]["id"] for g in got) == [f"{AQ}{n:06d}" for n in range(3)]
    for _ in range(100):  # delivered rows are deleted once the round is recorded
        if await _outbox_rows(app) == 0:
            break
        await asyncio.sleep(0.05)
    assert await _outbox_rows(app) == 0


async def test_throttling_coalesces(client: httpx.AsyncClient, receiver: Receiver) -> None:
    await client.post(E, json=air(1), headers=JSON)
    await _subscribe(client, subscription(receiver.url, throttling=1))
    for value in range(1, 6):
        await _set_pm(client, 1, value)
    got = await receiver.wait_for(lambda got: got and got[-1].body["data"][0]["pm25"]["value"] == 5, seconds=8)
    # At most one notification per second, the latest state in each: fewer notifications than changes.
    assert len(got) < 5
    assert all(later.at - earlier.at >= 0.9 for earlier, later in itertools.pairwise(got))


async def test_periodic_notifications(client: httpx.AsyncClient, receiver: Receiver) -> None:
    await client.post(E, json=air(1, 3), headers=JSON)
    await client.post(E, json=air(2, 99), headers=JSON)
    subscribed = time.time()
    await _subscribe(client, subscription(receiver.url, timeInterval=0.5, q="pm25<50"))
    got = await receiver.wait_count(2, seconds=5)
    assert got[1].at - subscribed >= 0.45  # the first at once, the next a timeInterval later
    assert [e["id"] for e in got[0].body["data"]] == [f"{AQ}000001"]


async def test_expired_and_paused_subscriptions_are_silent(client: httpx.AsyncClient, receiver: Receiver) -> None:
    expires = clock.iso(clock.now() + timedelta(hours=1))
    expiring = await _subscribe(client, subscription(receiver.url, expiresAt=expires))
    await _subscribe(client, subscription(receiver.url, isActive=False))
    clock.set_clock(lambda: datetime.now(UTC) + timedelta(hours=2))
    try:
        await client.post(E, json=air(1), headers=JSON)
        assert (await client.get(f"{S}/{expiring}")).json()["status"] == "expired"
    finally:
        clock.reset_clock()
    await client.post(E, json=air(2), headers=JSON)
    got = await receiver.wait_count(1)
    await asyncio.sleep(0.3)
    assert len(receiver.received) == 1 and got[0].body["data"][0]["id"] == f"{AQ}000002"


async def test_tenants_and_another_process_subscribing(app: Any, client: httpx.AsyncClient,
                                                       receiver: Receiver) -> None:
    await client.post(E, json=air(1), headers={**JSON, "NGSILD-Tenant": "t1"})  # warms the matcher's cache
    await client.post(E, json=air(1), headers=JSON)
    # Another process's service (its own cache) creates the subscription: ours must see it on the next write.
    other = SubscriptionService(app.state.hub.service.store, app.state.hub.resolver)
    await other.create("t1", subscription(receiver.url), app.state.hub.resolver.core)
    await _set_pm(client, 1, 1)  # default tenant: no subscription there
    await _set_pm(client, 1, 2, tenant="t1")
    got = await receiver.wait_count(1)
    await asyncio.sleep(0.3)
    assert len(receiver.received) == 1
    assert got[0].headers["ngsild-tenant"] == "t1" and got[0].body["data"][0]["pm25"]["value"] == 2
