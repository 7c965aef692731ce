"""Issue 12, findings 1 and 2: every write path checks the entity it really writes (after `@id`/`id`
parsing, in the service), ownership attributes cannot be handed away or dated ahead, and the
temporal API shows history with the same visibility as the entity API, decided from the entity's
current state. Each test also checks that nothing leaked or changed."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from auth_tokens import Auth
from cityos.security.audit import AuditQuery

E = "/ngsi-ld/v1/entities"
T = "/ngsi-ld/v1/temporal/entities"
B = "/ngsi-ld/v1/entityOperations"
JSON = {"Content-Type": "application/json"}
B1 = "urn:ngsi-ld:Resident:B1"
C1 = "urn:ngsi-ld:Resident:C1"
CITIZEN_ID = "citizen-0001"
SALARY, ID_NUMBER, PHONE = 41234, "110101199003071234", "13812345678"
VOCAB = "https://uri.etsi.org/ngsi-ld/default-context/"


def resident(entity_id: str = B1, department: str = "civil", at: str = "2026-01-01T00:00:00Z",
             **extra: Any) -> dict[str, Any]:
    def prop(value: Any) -> dict[str, Any]:
        return {"type": "Property", "value": value, "observedAt": at}

    return {"id": entity_id, "type": "Resident", "salary": prop(SALARY), "idNumber": prop(ID_NUMBER),
            "phone": prop(PHONE), "status": prop("active"), "owningDepartment": prop(department), **extra}


@pytest.fixture
async def residents(client: httpx.AsyncClient) -> None:
    r = await client.put("/admin/data-classes/Resident", headers=JSON, json={
        "attributes": {"salary": "confidential", "idNumber": "sensitive", "phone": "sensitive",
                       "status": "public", "owningDepartment": "public", "owner": "public"},
        "default": "internal"})
    assert r.status_code == 204, r.text
    assert (await client.post(E, json=resident(), headers=JSON)).status_code == 201
    owned = resident(C1, owner={"type": "Property", "value": CITIZEN_ID})
    assert (await client.post(E, json=owned, headers=JSON)).status_code == 201


def citizen(auth: Auth) -> dict[str, str]:
    return auth.headers("citizen", user_id=CITIZEN_ID)


def official(auth: Auth, department: str) -> dict[str, str]:
    return auth.headers("official", department=department)


async def history_of(client: httpx.AsyncClient, entity_id: str, attr: str) -> list[Any]:
    r = await client.get(f"{T}/{entity_id}", params={"attrs": attr})
    assert r.status_code == 200, r.text
    found = r.json().get(attr, [])
    return [i["value"] for i in (found if isinstance(found, list) else [found])]


async def current(client: httpx.AsyncClient, entity_id: str) -> dict[str, Any]:
    r = await client.get(f"{E}/{entity_id}", params={"options": "keyValues"})
    assert r.status_code == 200, r.text
    return dict(r.json())


# ---------------------------------------------------------------------- finding 1: writes


async def test_temporal_create_with_at_id_is_checked_like_id(client: httpx.AsyncClient, auth: Auth, app: Any,
                                                             residents: None) -> None:
    """The red-team request: `@id` instead of `id` skipped the check (204) for a citizen and for an
    official of another department, and planted a future owningDepartment."""
    planted = {"@id": B1, "@type": "Resident",
               "owningDepartment": [{"type": "Property", "value": "water", "observedAt": "2025-01-01T00:00:00Z"}]}
    for who in (citizen(auth), official(auth, "water"), auth.headers("official", department="water",
                                                                      username="water-clerk")):
        r = await client.post(T, json=planted, headers=who | JSON)
        assert r.status_code == 403, r.text
        assert r.json()["type"].endswith("Forbidden")
    assert await history_of(client, B1, "owningDepartment") == ["civil"]
    # The refusal is audited against the entity it was about.
    rows = await app.state.security.audit.search(AuditQuery(action="temporal.upsert", actor="water-clerk"))
    assert rows and rows[0]["resource"] == B1 and rows[0]["outcome"] == "denied"
    # The water official still does not read B1's salary, through either API.
    water = official(auth, "water")
    seen = (await client.get(f"{E}/{B1}", params={"options": "keyValues"}, headers=water)).json()
    assert "salary" not in seen
    history = (await client.get(f"{T}/{B1}", headers=water)).json()
    assert "salary" not in history


async def test_future_ownership_in_history_is_refused_for_everyone(client: httpx.AsyncClient, auth: Auth,
                                                                   residents: None) -> None:
    future = [{"type": "Property", "value": "civil", "observedAt": "2099-01-01T00:00:00Z"}]
    bodies = [({"id": B1, "type": "Resident", "owningDepartment": future}, T),
              ({"owningDepartment": future}, f"{T}/{B1}/attrs"),
              ({"department": future}, f"{T}/{B1}/attrs"),
              ({"owner": future}, f"{T}/{B1}/attrs")]
    for who in ({}, official(auth, "civil")):  # sys_admin, and the owning department itself
        for body, url in bodies:
            r = await client.post(url, json=body, headers=who | JSON)
            assert r.status_code == 400, (url, r.text)
            assert "future" in r.json()["detail"]
    assert await history_of(client, B1, "owningDepartment") == ["civil"]
    # Patching a past instance into the future is refused too.
    r = await client.get(f"{T}/{B1}", params={"attrs": "owningDepartment"})
    instance = r.json()["owningDepartment"]
    instance = instance[0] if isinstance(instance, list) else instance
    r = await client.patch(f"{T}/{B1}/attrs/owningDepartment/{instance['instanceId']}", headers=JSON,
                           json={"value": "civil", "observedAt": "2099-01-01T00:00:00Z"})
    assert r.status_code == 400, r.text
    # A past instance the owning department may write is accepted.
    past = {"owningDepartment": [{"type": "Property", "value": "civil", "observedAt": "2025-06-01T00:00:00Z"}]}
    r = await client.post(f"{T}/{B1}/attrs", json=past, headers=official(auth, "civil") | JSON)
    assert r.status_code == 204, r.text


async def test_history_cannot_hand_an_entity_to_another_department(client: httpx.AsyncClient, auth: Auth,
                                                                   residents: None) -> None:
    civil = official(auth, "civil")
    water = [{"type": "Property", "value": "water", "observedAt": "2025-06-01T00:00:00Z"}]
    r = await client.post(f"{T}/{B1}/attrs", json={"owningDepartment": water}, headers=civil | JSON)
    assert r.status_code == 403, r.text
    r = await client.post(T, json={"id": B1, "type": "Resident", "owningDepartment": water}, headers=civil | JSON)
    assert r.status_code == 403, r.text
    assert await history_of(client, B1, "owningDepartment") == ["civil"]
    # A citizen owning C1 may write C1's history, not hand it to a department.
    mine = {"status": [{"type": "Property", "value": "moved", "observedAt": "2025-06-01T00:00:00Z"}]}
    assert (await client.post(f"{T}/{C1}/attrs", json=mine, headers=citizen(auth) | JSON)).status_code == 204
    r = await client.post(f"{T}/{C1}/attrs", json={"owningDepartment": water}, headers=citizen(auth) | JSON)
    assert r.status_code == 403, r.text
    assert await history_of(client, C1, "owningDepartment") == ["civil"]


async def test_other_temporal_writes_check_the_current_state(client: httpx.AsyncClient, auth: Auth,
                                                             residents: None) -> None:
    water = official(auth, "water")
    r = await client.get(f"{T}/{B1}", params={"attrs": "status"})
    instance = r.json()["status"]
    instance_id = (instance[0] if isinstance(instance, list) else instance)["instanceId"]
    attempts = [
        client.post(f"{T}/{B1}/attrs", json={"status": {"type": "Property", "value": "x"}}, headers=water | JSON),
        client.patch(f"{T}/{B1}/attrs/status/{instance_id}", json={"value": "x"}, headers=water | JSON),
        client.delete(f"{T}/{B1}/attrs/status/{instance_id}", headers=water),
        client.delete(f"{T}/{B1}/attrs/status", params={"deleteAll": "true"}, headers=water),
        client.delete(f"{T}/{B1}", headers=auth.headers("dept_admin", department="water")),
    ]
    for attempt in attempts:
        r = await attempt
        assert r.status_code == 403, r.text
    assert await history_of(client, B1, "status") == ["active"]


async def test_body_id_must_agree_with_the_path(client: httpx.AsyncClient, auth: Auth, residents: None) -> None:
    civil = official(auth, "civil")
    other = "urn:ngsi-ld:Resident:C1"
    change = {"status": {"type": "Property", "value": "hijacked"}}
    attempts = [
        client.put(f"{E}/{B1}", json={"@id": other, "type": "Resident", **change}, headers=civil | JSON),
        client.patch(f"{E}/{B1}", json={"@id": other, **change}, headers=civil | JSON),
        client.post(f"{E}/{B1}/attrs", json={"@id": other, **change}, headers=civil | JSON),
        client.patch(f"{E}/{B1}/attrs", json={"id": other, **change}, headers=civil | JSON),
        client.post(f"{T}/{B1}/attrs", json={"@id": other, **change}, headers=civil | JSON),
        # Two different ids in one body: which one would be checked and which one written?
        client.post(E, json={"id": "urn:ngsi-ld:Resident:N1", "@id": other, "type": "Resident"}, headers=JSON),
        client.post(T, json={"id": B1, "@id": other, "type": "Resident", **change}, headers=JSON),
    ]
    for attempt in attempts:
        r = await attempt
        assert r.status_code == 400, r.text
    r = await client.post(f"{B}/upsert", json=[{"id": B1, "@id": other, "type": "Resident", **change}], headers=JSON)
    assert r.status_code == 207 and r.json()["errors"][0]["error"]["status"] == 400
    for entity_id in (B1, C1):
        assert (await current(client, entity_id))["status"] == "active"
    assert (await client.get(f"{E}/urn:ngsi-ld:Resident:N1")).status_code == 404
    # The same id in both places is fine.
    r = await client.patch(f"{E}/{B1}/attrs", json={"@id": B1, "status": {"type": "Property", "value": "ok"}},
                           headers=civil | JSON)
    assert r.status_code == 204, r.text


async def test_attribute_aliasing_a_keyword_is_refused(client: httpx.AsyncClient, residents: None) -> None:
    """A user @context could alias a term to @id; the hub must not store it as an attribute."""
    ctx = {"ident": "@id"}
    body = {"@context": [ctx], "id": "urn:ngsi-ld:Resident:N2", "type": "Resident", "ident": B1}
    r = await client.post(E, json=body, headers={"Content-Type": "application/ld+json"})
    assert r.status_code == 400, r.text
    r = await client.post(T, json=body, headers={"Content-Type": "application/ld+json"})
    assert r.status_code == 400, r.text
    assert (await client.get(f"{E}/urn:ngsi-ld:Resident:N2")).status_code == 404
    assert (await client.get(f"{T}/urn:ngsi-ld:Resident:N2")).status_code == 404


async def test_owner_scoped_caller_cannot_give_an_entity_away(client: httpx.AsyncClient, auth: Auth,
                                                              residents: None) -> None:
    mine = citizen(auth)
    give = {"owningDepartment": {"type": "Property", "value": "water"}}
    attempts = [
        client.patch(f"{E}/{C1}/attrs", json=give, headers=mine | JSON),
        client.post(f"{E}/{C1}/attrs", json=give, headers=mine | JSON),
        client.patch(f"{E}/{C1}", json=give, headers=mine | JSON),
        client.patch(f"{E}/{C1}/attrs/owningDepartment", json={"value": "water"}, headers=mine | JSON),
        client.post(f"{E}/{C1}/attrs", json={"district": {"type": "Property", "value": "d9"}}, headers=mine | JSON),
        client.put(f"{E}/{C1}", json={"type": "Resident", "owner": {"type": "Property", "value": CITIZEN_ID}},
                   headers=mine | JSON),  # dropping owningDepartment changes the owner too
    ]
    for attempt in attempts:
        r = await attempt
        assert r.status_code == 403, r.text
    for mode in ("update", "merge", "upsert"):
        body = [{"id": C1, "type": "Resident", "owner": {"type": "Property", "value": CITIZEN_ID}, **give}]
        r = await client.post(f"{B}/{mode}", json=body, headers=mine | JSON)
        assert r.status_code == 207 and r.json()["errors"][0]["error"]["status"] == 403, (mode, r.text)
    seen = await current(client, C1)
    assert seen["owningDepartment"] == "civil" and "district" not in seen
    # Its own data stays its own to change.
    r = await client.patch(f"{E}/{C1}/attrs", json={"status": {"type": "Property", "value": "moved"}},
                           headers=mine | JSON)
    assert r.status_code == 204, r.text
    # A department official may move an entity only inside its department scope.
    r = await client.patch(f"{E}/{B1}/attrs", json=give, headers=official(auth, "civil") | JSON)
    assert r.status_code == 403
    assert (await current(client, B1))["owningDepartment"] == "civil"


# ---------------------------------------------------------------------- finding 2: temporal reads


async def _moved_from_water_to_civil(client: httpx.AsyncClient) -> None:
    """B2 belonged to water in 2025 and belongs to civil now."""
    body = resident("urn:ngsi-ld:Resident:B2", department="water", at="2025-01-01T00:00:00Z")
    assert (await client.post(E, json=body, headers=JSON)).status_code == 201
    now = {"owningDepartment": {"type": "Property", "value": "civil", "observedAt": "2026-01-01T00:00:00Z"},
           "salary": {"type": "Property", "value": SALARY + 1000, "observedAt": "2026-01-01T00:00:00Z"}}
    assert (await client.patch("/ngsi-ld/v1/entities/urn:ngsi-ld:Resident:B2/attrs", json=now,
                               headers=JSON)).status_code == 204


async def test_temporal_visibility_follows_the_current_owner(client: httpx.AsyncClient, auth: Auth,
                                                             residents: None) -> None:
    await _moved_from_water_to_civil(client)
    b2 = f"{T}/urn:ngsi-ld:Resident:B2"
    water, civil = official(auth, "water"), official(auth, "civil")
    old_window = {"timerel": "before", "timeAt": "2025-06-01T00:00:00Z"}
    variants: list[dict[str, str]] = [
        {}, old_window, {"lastN": "1"}, {"attrs": "salary,idNumber,phone"}, {"attrs": "idNumber"},
        {**old_window, "options": "temporalValues"},
    ]
    for params in variants:
        r = await client.get(b2, params=params, headers=water)
        assert r.status_code == 200, r.text
        seen = r.json()
        assert "salary" not in seen, params
        text = r.text
        assert ID_NUMBER not in text and PHONE not in text and str(SALARY) not in text, params
    # The current owner reads it in clear, whatever the history window shows.
    seen = (await client.get(b2, params=old_window, headers=civil)).json()
    assert [i["value"] for i in seen["salary"]] == [SALARY]
    # Aggregates of a value the caller may not see are not given either (sum/min/max of a salary).
    aggregate = {"options": "aggregatedValues", "aggrMethods": "sum,min,max,avg", "attrs": "salary"}
    for params in (aggregate, {**aggregate, **old_window}):
        r = await client.get(b2, params=params, headers=water)
        assert r.status_code in (200, 404), r.text
        assert "salary" not in (r.json() if r.status_code == 200 else {})
        assert str(SALARY) not in r.text
        r = await client.get(T, params={"type": "Resident", **params}, headers=water)
        assert r.status_code in (200, 403), r.text
        assert str(SALARY) not in r.text
    sums = (await client.get(b2, params=aggregate, headers=civil)).json()
    assert sums["salary"]["max"][0][0] == SALARY + 1000


async def test_temporal_query_masks_like_the_entity_api(client: httpx.AsyncClient, auth: Auth,
                                                        residents: None) -> None:
    await _moved_from_water_to_civil(client)
    water = official(auth, "water")
    for params in ({"type": "Resident"}, {"type": "Resident", "timerel": "before", "timeAt": "2025-06-01T00:00:00Z"},
                   {"type": "Resident", "attrs": "idNumber"}, {"type": "Resident", "lastN": "1"}):
        r = await client.get(T, params=params, headers=water)
        assert r.status_code == 200, r.text
        assert ID_NUMBER not in r.text and str(SALARY) not in r.text and PHONE not in r.text, params
        for entity in r.json():
            assert "salary" not in entity
    # What the temporal API shows equals what the entity API shows, attribute by attribute.
    entity_view = (await client.get(f"{E}/urn:ngsi-ld:Resident:B2", params={"options": "keyValues"},
                                    headers=water)).json()
    temporal_view = (await client.get(f"{T}/urn:ngsi-ld:Resident:B2", params={"lastN": "1"}, headers=water)).json()
    for attr in ("idNumber", "phone", "status", "owningDepartment"):
        got = temporal_view[attr]
        got = got[0] if isinstance(got, list) else got
        assert got["value"] == entity_view[attr], attr
    assert set(temporal_view) - {"id", "type"} == set(entity_view) - {"id", "type"}


async def test_history_without_current_state_is_not_shown_to_departments(client: httpx.AsyncClient, auth: Auth,
                                                                         residents: None) -> None:
    assert (await client.delete(f"{E}/{B1}")).status_code == 204
    for who in (official(auth, "civil"), official(auth, "water"), auth.headers("dept_admin", department="civil")):
        r = await client.get(f"{T}/{B1}", headers=who)
        assert r.status_code in (200, 404), r.text
        assert ID_NUMBER not in r.text and str(SALARY) not in r.text and PHONE not in r.text
        r = await client.get(T, params={"type": "Resident", "id": B1, "attrs": "idNumber,salary"}, headers=who)
        assert r.status_code in (200, 403), r.text
        assert ID_NUMBER not in r.text and str(SALARY) not in r.text
    # Tenant-wide roles see it as they see any entity: sensitive values masked, confidential ones hidden.
    seen = (await client.get(f"{T}/{B1}", headers=auth.headers("operator"))).json()
    assert seen["idNumber"][0]["value"] == "110***********1234" and "salary" not in seen
