"""Issue 12, findings 3, 10 (subscriptions) and 12 (receiverInfo): subscription filters are no
oracle for hidden values, subscriptions act with their owner's *current* rights (a disabled owner's
subscriptions send nothing), and the endpoint's secrets are shown to nobody but the owner."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from sqlalchemy import delete, update

from auth_tokens import Auth
from cityos.security.audit import AuditQuery
from cityos.security.models import users
from hub.subscriptions.notify_helpers import Receiver, receiver_fixture

__all__ = ["receiver_fixture"]

E = "/ngsi-ld/v1/entities"
S = "/ngsi-ld/v1/subscriptions"
JSON = {"Content-Type": "application/json"}
CIVIL, WATER = "urn:ngsi-ld:Resident:CIV", "urn:ngsi-ld:Resident:WAT"
SALARY, ID_NUMBER = 41234, "110101199003071234"
SECRET = "Bearer s3cret-api-key"
PASSWORD = "Correct-Horse-9-battery"


def resident(entity_id: str, department: str) -> dict[str, Any]:
    return {"id": entity_id, "type": "Resident", "salary": {"type": "Property", "value": SALARY},
            "idNumber": {"type": "Property", "value": ID_NUMBER}, "status": {"type": "Property", "value": "a"},
            "owningDepartment": {"type": "Property", "value": department},
            "location": {"type": "GeoProperty", "value": {"type": "Point", "coordinates": [110.3, 20.0]}}}


@pytest.fixture
async def residents(client: httpx.AsyncClient) -> None:
    r = await client.put("/admin/data-classes/Resident", headers=JSON, json={
        "attributes": {"salary": "confidential", "idNumber": "sensitive", "location": "sensitive",
                       "status": "public", "owningDepartment": "public"}, "default": "internal"})
    assert r.status_code == 204, r.text
    for entity_id, department in ((CIVIL, "civil"), (WATER, "water")):
        assert (await client.post(E, json=resident(entity_id, department), headers=JSON)).status_code == 201


def sub(uri: str, **members: Any) -> dict[str, Any]:
    return {"type": "Subscription", "entities": [{"type": "Resident"}],
            "notification": {"endpoint": {"uri": uri}, "format": "keyValues"}, **members}


async def touch(client: httpx.AsyncClient, entity_id: str, status: str) -> None:
    r = await client.patch(f"{E}/{entity_id}/attrs", json={"status": {"type": "Property", "value": status}},
                           headers=JSON)
    assert r.status_code == 204, r.text


async def real_user(app: Any, auth: Auth, username: str, role: str, department: str | None) -> dict[str, str]:
    """A user stored in the security tables, with a token for it (its current rights can be read back)."""
    new = await app.state.security.service.create_user(username, PASSWORD, role, department=department,
                                                       allow_admin=True, check_strength=False)
    return auth.headers(role, department=department, user_id=new.id, username=username)


def forget_owners(app: Any) -> None:
    """The owners' rights are cached a few seconds: a test does not wait for that."""
    app.state.subscriptions.owners.forget()


async def quiet(receiver: Receiver, count: int, seconds: float = 1.0) -> None:
    """Nothing beyond `count` notifications arrives within `seconds`."""
    await asyncio.sleep(seconds)
    assert len(receiver.received) == count, [r.body for r in receiver.received]


# ---------------------------------------------------------------------- finding 3: filters


@pytest.mark.parametrize("role", ["operator", "sys_admin"])
async def test_filters_on_values_the_subscriber_cannot_read_are_refused(client: httpx.AsyncClient, auth: Auth,
                                                                        app: Any, residents: None,
                                                                        role: str) -> None:
    """Tenant-wide roles see idNumber and location masked and salary not at all, on every Resident."""
    headers = auth.headers(role, username="w-off")
    oracles = [
        sub("http://x.test/", q="salary>30000"),
        sub("http://x.test/", q='idNumber=="110101199003071234"'),
        sub("http://x.test/", watchedAttributes=["salary"]),
        sub("http://x.test/", watchedAttributes=["idNumber"]),
        sub("http://x.test/", q="salary"),  # the existence of a confidential value
        sub("http://x.test/", geoQ={"georel": "near;maxDistance==100", "geometry": "Point",
                                    "coordinates": [110.3, 20.0], "geoproperty": "location"}),
        {"type": "Subscription", "watchedAttributes": ["salary"],
         "notification": {"endpoint": {"uri": "http://x.test/"}}},  # no entity types at all
    ]
    for body in oracles:
        r = await client.post(S, json=body, headers=headers | JSON)
        assert r.status_code == 403, (body, r.text)
        assert r.json()["type"].endswith("Forbidden")
    assert (await client.get(S)).json() == []
    rows = await app.state.security.audit.search(AuditQuery(action="subscription.create", actor="w-off"))
    assert len(rows) == len(oracles) and {row["outcome"] for row in rows} == {"denied"}
    # A filter on public values stays allowed.
    assert (await client.post(S, json=sub("http://x.test/", q='status=="a"'),
                              headers=headers | JSON)).status_code == 201


async def test_update_cannot_add_an_oracle(client: httpx.AsyncClient, auth: Auth, residents: None) -> None:
    water = auth.headers("operator")
    r = await client.post(S, json=sub("http://x.test/", id="urn:ngsi-ld:Subscription:w1"), headers=water | JSON)
    assert r.status_code == 201, r.text
    for change in ({"q": "salary<50000"}, {"watchedAttributes": ["idNumber"]},
                   {"geoQ": {"georel": "within", "geometry": "Polygon", "coordinates": [
                       [[110, 19], [111, 19], [111, 21], [110, 21], [110, 19]]], "geoproperty": "location"}}):
        r = await client.patch(f"{S}/urn:ngsi-ld:Subscription:w1", json=change, headers=water | JSON)
        assert r.status_code == 403, r.text
    stored = (await client.get(f"{S}/urn:ngsi-ld:Subscription:w1", headers=water)).json()
    assert not {"q", "watchedAttributes", "geoQ"} & set(stored)


async def test_department_dependent_filter_matches_only_its_departments_entities(
        client: httpx.AsyncClient, auth: Auth, residents: None, receiver: Receiver) -> None:
    """A civil official may filter on salary (it reads civil salaries in clear), but water entities
    whose salary matches must not notify it: their match would tell the hidden value."""
    civil = auth.headers("official", department="civil")
    r = await client.post(S, json=sub(receiver.url, q="salary>30000", notification={
        "endpoint": {"uri": receiver.url}, "format": "keyValues", "attributes": ["status"]}), headers=civil | JSON)
    assert r.status_code == 201, r.text
    await touch(client, WATER, "b")
    await touch(client, CIVIL, "b")
    got = await receiver.wait_count(1)
    await quiet(receiver, 1, 0.5)
    assert [d["id"] for g in got for d in g.body["data"]] == [CIVIL]


async def test_filters_are_rechecked_with_the_owners_current_rights(client: httpx.AsyncClient, auth: Auth,
                                                                    app: Any, residents: None,
                                                                    receiver: Receiver) -> None:
    civil = await real_user(app, auth, "civil-clerk", "official", "civil")
    r = await client.post(S, json=sub(receiver.url, q="salary>30000"), headers=civil | JSON)
    assert r.status_code == 201, r.text
    await touch(client, CIVIL, "b")
    assert (await receiver.wait_count(1))[0].body["data"][0]["salary"] == SALARY
    # The clerk moves to the water department: civil salaries are no longer its to filter on or read.
    async with app.state.engine.begin() as conn:
        await conn.execute(update(users).where(users.c.username == "civil-clerk").values(department="water"))
    forget_owners(app)
    await touch(client, CIVIL, "c")
    await quiet(receiver, 1)
    # Water salaries are now its own: they match, in clear.
    await touch(client, WATER, "c")
    got = await receiver.wait_count(2)
    assert [(d["id"], d["salary"]) for d in got[1].body["data"]] == [(WATER, SALARY)]


# ---------------------------------------------------------------------- finding 10: owners' current rights


async def test_disabled_owner_subscriptions_stop_sending(client: httpx.AsyncClient, auth: Auth, app: Any,
                                                         residents: None, receiver: Receiver) -> None:
    civil = await real_user(app, auth, "civil-owner", "official", "civil")
    r = await client.post(S, json=sub(receiver.url, id="urn:ngsi-ld:Subscription:c1"), headers=civil | JSON)
    assert r.status_code == 201, r.text
    await touch(client, CIVIL, "b")
    first = await receiver.wait_count(1)
    assert first[0].body["data"][0]["idNumber"] == ID_NUMBER  # its own department: in clear
    async with app.state.engine.begin() as conn:
        await conn.execute(update(users).where(users.c.username == "civil-owner").values(disabled=True))
    forget_owners(app)
    await touch(client, CIVIL, "c")
    await quiet(receiver, 1)
    shown = (await client.get(f"{S}/urn:ngsi-ld:Subscription:c1")).json()
    assert shown["status"] == "suspended" and shown.get("isActive", True) is True  # isActive only when given
    assert [s["status"] for s in (await client.get(S)).json()] == ["suspended"]
    # Enabled again, it sends again (nothing queued while it was suspended is sent late).
    async with app.state.engine.begin() as conn:
        await conn.execute(update(users).where(users.c.username == "civil-owner").values(disabled=False))
    forget_owners(app)
    await touch(client, CIVIL, "d")
    got = await receiver.wait_count(2)
    await quiet(receiver, 2, 0.5)
    assert got[1].body["data"][0]["status"] == "d"
    # A deleted owner suspends it for good.
    async with app.state.engine.begin() as conn:
        await conn.execute(delete(users).where(users.c.username == "civil-owner"))
    forget_owners(app)
    await touch(client, CIVIL, "e")
    await quiet(receiver, 2)
    assert (await client.get(f"{S}/urn:ngsi-ld:Subscription:c1")).json()["status"] == "suspended"


async def test_notifications_are_masked_with_the_owners_current_department(
        client: httpx.AsyncClient, auth: Auth, app: Any, residents: None, receiver: Receiver) -> None:
    civil = await real_user(app, auth, "mover", "official", "civil")
    r = await client.post(S, json=sub(receiver.url), headers=civil | JSON)
    assert r.status_code == 201, r.text
    await touch(client, CIVIL, "b")
    assert (await receiver.wait_count(1))[0].body["data"][0]["salary"] == SALARY
    async with app.state.engine.begin() as conn:
        await conn.execute(update(users).where(users.c.username == "mover").values(department="water"))
    forget_owners(app)
    await touch(client, CIVIL, "c")
    got = await receiver.wait_count(2)
    data = got[1].body["data"][0]
    assert data["status"] == "c" and "salary" not in data and data["idNumber"] == "110***********1234"


async def test_current_owner_claims_shape(app: Any, client: httpx.AsyncClient) -> None:
    service = app.state.security.service
    await service.add_department("civil", "Civil affairs")
    await service.add_department("civil-east", "Civil east", parent="civil", districts=["d7"])
    new = await service.create_user("claims-user", PASSWORD, "official", department="civil", check_strength=False)
    claims = await service.current_owner_claims(new.id)
    assert claims == {"id": new.id, "kind": "user", "role": "official", "tenant": "", "username": "claims-user",
                      "department": "civil", "departments": ["civil", "civil-east"], "districts": ["d7"]}
    assert await service.current_owner_claims("no-such-user") is None
    secret = await service.create_client("svc-1", "operator")
    assert secret
    assert (await service.current_owner_claims("client:svc-1"))["kind"] == "service"  # type: ignore[index]
    async with app.state.engine.begin() as conn:
        await conn.execute(update(users).where(users.c.id == new.id).values(disabled=True))
    assert await service.current_owner_claims(new.id) is None


# ---------------------------------------------------------------------- finding 12: receiverInfo


async def test_receiver_info_is_shown_only_to_the_owner(client: httpx.AsyncClient, auth: Auth, app: Any,
                                                        residents: None) -> None:
    owner = auth.headers("official", department="civil", user_id="owner-1")
    body = sub("http://x.test/", id="urn:ngsi-ld:Subscription:r1", notification={"endpoint": {
        "uri": "http://x.test/", "receiverInfo": [{"key": "Authorization", "value": SECRET}],
        "notifierInfo": [{"key": "X-Token", "value": "n0tifier"}]}})
    assert (await client.post(S, json=body, headers=owner | JSON)).status_code == 201
    url = f"{S}/urn:ngsi-ld:Subscription:r1"
    mine = (await client.get(url, headers=owner)).json()
    assert mine["notification"]["endpoint"]["receiverInfo"] == [{"key": "Authorization", "value": SECRET}]
    colleague = auth.headers("official", department="civil", user_id="owner-2")
    for who in (auth.headers("operator"), {}, colleague):  # operator, sys_admin, same department
        one = await client.get(url, headers=who)
        listed = await client.get(S, headers=who)
        for text in (one.text, listed.text):
            assert SECRET not in text and "n0tifier" not in text
        endpoint = one.json()["notification"]["endpoint"]
        assert endpoint["receiverInfo"] == [{"key": "Authorization", "value": "***"}]
        assert endpoint["notifierInfo"] == [{"key": "X-Token", "value": "***"}]
    # Taking the subscription over does not hand its secrets to the new owner.
    operator = auth.headers("operator", user_id="op-1")
    r = await client.patch(url, json={"description": "taken over"}, headers=operator | JSON)
    assert r.status_code == 204, r.text
    now_mine = await client.get(url, headers=operator)
    assert SECRET not in now_mine.text and "receiverInfo" not in now_mine.json()["notification"]["endpoint"]
    stored = await app.state.subscriptions.owner("", "urn:ngsi-ld:Subscription:r1")
    assert stored["id"] == "op-1"
    async with app.state.engine.connect() as conn:
        from cityos.hub.subscriptions.models import subscriptions

        spec = (await conn.execute(subscriptions.select())).first().spec
    assert SECRET not in str(spec)


async def test_queued_notifications_of_a_disabled_owner_are_not_sent(client: httpx.AsyncClient, auth: Auth,
                                                                     app: Any, residents: None,
                                                                     receiver: Receiver) -> None:
    """Rows already in the outbox when the owner is disabled are dropped at sending time."""
    import dataclasses

    from sqlalchemy import func, select

    from cityos.hub.subscriptions.models import outbox

    service = app.state.subscriptions
    saved = service.settings
    service.settings = dataclasses.replace(saved, max_failures=1000, backoff_base=0.05, backoff_cap=0.2)
    try:
        civil = await real_user(app, auth, "queued-owner", "official", "civil")
        assert (await client.post(S, json=sub(receiver.url), headers=civil | JSON)).status_code == 201
        receiver.status = 503  # the endpoint is down: the notification waits in the outbox
        await touch(client, CIVIL, "b")
        async with app.state.engine.begin() as conn:
            await conn.execute(update(users).where(users.c.username == "queued-owner").values(disabled=True))
        forget_owners(app)
        # The endpoint stays down until the queue is empty: rows leave it only by being dropped (no success
        # is possible, and max_failures is not reached). An attempt that passed the owner check just
        # before the disabling meets the 503 too, instead of racing the endpoint's recovery.
        for _ in range(200):
            async with app.state.engine.connect() as conn:
                left = (await conn.execute(select(func.count()).select_from(outbox))).scalar_one()
            if left == 0:
                break
            await asyncio.sleep(0.05)
        assert left == 0
        receiver.status = 204
        await touch(client, CIVIL, "c")  # and nothing new is queued for the suspended subscription
        await quiet(receiver, 0, 0.5)
    finally:
        service.settings = saved


async def test_periodic_subscription_of_a_disabled_owner_stops(client: httpx.AsyncClient, auth: Auth, app: Any,
                                                               residents: None, receiver: Receiver) -> None:
    civil = await real_user(app, auth, "periodic-owner", "official", "civil")
    r = await client.post(S, json=sub(receiver.url, timeInterval=1, entities=[{"type": "Resident", "id": CIVIL}]),
                          headers=civil | JSON)
    assert r.status_code == 201, r.text
    first = await receiver.wait_count(1)
    assert first[0].body["data"][0]["salary"] == SALARY
    async with app.state.engine.begin() as conn:
        await conn.execute(update(users).where(users.c.username == "periodic-owner").values(disabled=True))
    forget_owners(app)
    await asyncio.sleep(1.2)  # a period that may have been matched before the change
    count = len(receiver.received)
    await quiet(receiver, count, 2.5)


async def test_disabled_owner_suspends_subscriptions_stored_before_owners_were_verified(
        client: httpx.AsyncClient, auth: Auth, app: Any, residents: None, receiver: Receiver) -> None:
    from cityos.hub.subscriptions.models import subscriptions

    civil = await real_user(app, auth, "legacy-owner", "official", "civil")
    r = await client.post(S, json=sub(receiver.url, id="urn:ngsi-ld:Subscription:old"), headers=civil | JSON)
    assert r.status_code == 201, r.text
    async with app.state.engine.begin() as conn:
        row = (await conn.execute(subscriptions.select())).first()
        spec = dict(row.spec)
        spec["_owner"] = {k: v for k, v in spec["_owner"].items() if k != "verified"}  # as stored before
        await conn.execute(subscriptions.update().values(spec=spec))
        await conn.execute(update(users).where(users.c.username == "legacy-owner").values(disabled=True))
        await app.state.subscriptions._bump(conn, "")
    forget_owners(app)
    await touch(client, CIVIL, "b")
    await quiet(receiver, 0)
    assert (await client.get(f"{S}/urn:ngsi-ld:Subscription:old")).json()["status"] == "suspended"
