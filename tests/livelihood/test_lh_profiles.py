"""Profiles from department records: identity registry first, sealed sensitive fields, authoritative
source on contradiction, masking by data class, and every bad input."""

from __future__ import annotations

from typing import Any

import httpx
from lh_support import BASE, record, register
from sqlalchemy import select

from cityos.livelihood import models as m


async def test_unknown_person_is_refused_until_the_registry_registers_them(client: httpx.AsyncClient,
                                                                           moving_clock: Any) -> None:
    early = await client.post(f"{BASE}/records", json=record("P-1", "civil-affairs", "assistance",
                                                             {"income_per_capita": 800.0}))
    assert early.status_code == 404 and "unknown person" in early.json()["detail"]
    made = await register(client, "P-1", {"birth_date": "1950-03-01", "hukou": "local"})
    assert made["created"] is True and sorted(made["changed"]) == ["birth_date", "hukou"]
    later = await client.post(f"{BASE}/records", json=record("P-1", "civil-affairs", "assistance",
                                                             {"income_per_capita": 800.0}))
    assert later.status_code == 201, later.text


async def test_sensitive_and_confidential_fields_are_sealed_at_rest(app: Any, client: httpx.AsyncClient,
                                                                   moving_clock: Any) -> None:
    await register(client, "P-2", {"birth_date": "1950-03-01", "hukou": "local"})
    made = await client.post(f"{BASE}/records", json=record("P-2", "civil-affairs", "assistance",
                                                             {"income_per_capita": 812.5, "living_alone": True}))
    assert made.status_code == 201
    async with app.state.engine.connect() as conn:
        rec = (await conn.execute(select(m.records).where(m.records.c.id == made.json()["record"]))).one()
        facts = {r.field: r for r in (await conn.execute(select(m.facts).where(m.facts.c.subject_id == "P-2"))).all()}
    assert rec.clear == {} and rec.sealed.startswith("enc:v1:") and "812" not in rec.sealed
    assert facts["income_per_capita"].value is None and facts["income_per_capita"].sealed.startswith("enc:v1:")
    assert facts["hukou"].value == {"v": "local"} and facts["hukou"].sealed is None


async def test_authoritative_source_wins_and_the_other_record_is_flagged(client: httpx.AsyncClient,
                                                                          moving_clock: Any) -> None:
    first = await register(client, "P-3", {"birth_date": "1946-05-02", "hukou": "local"})
    # Civil affairs holds another birth date, observed later: public security stays authoritative.
    other = await client.post(f"{BASE}/records", json=record("P-3", "civil-affairs", "assistance",
                                                             {"birth_date": "1948-05-02"}, observed="2026-12-03"))
    body = other.json()
    assert other.status_code == 201 and body["changed"] == []
    assert body["flags"] == [{"field": "birth_date", "flaggedRecord": body["record"], "winner": first["record"],
                              "reason": "authoritative source"}]
    # Between two non-authoritative sources the newer observation wins, and the older record is flagged.
    await client.post(f"{BASE}/records", json=record("P-3", "health", "care", {"living_alone": False},
                                                     observed="2026-11-01"))
    newer = await client.post(f"{BASE}/records", json=record("P-3", "human-resources", "visit",
                                                             {"living_alone": True}, observed="2026-12-02"))
    assert newer.json()["changed"] == ["living_alone"]
    view = (await client.get(f"{BASE}/profiles/P-3")).json()
    assert view["fields"]["birth_date"]["department"] == "public-security"
    assert view["fields"]["birth_date"]["value"] == "1946-05-02"
    flagged = {f["department"] for f in view["flagged"]}
    assert flagged == {"civil-affairs", "health"}


async def test_profile_is_masked_by_class_and_department(client: httpx.AsyncClient, auth: Any,
                                                         moving_clock: Any) -> None:
    await register(client, "P-4", {"birth_date": "1950-03-01", "hukou": "local"})
    await client.post(f"{BASE}/records", json=record("P-4", "civil-affairs", "assistance",
                                                     {"income_per_capita": 812.5, "living_alone": True}))
    await client.post(f"{BASE}/records", json=record("P-4", "disabled-persons", "certificate",
                                                     {"disability_level": 2}))
    inside = (await client.get(f"{BASE}/profiles/P-4",
                               headers=auth.headers("official", department="civil-affairs"))).json()["fields"]
    assert inside["income_per_capita"]["value"] == 812.5 and inside["living_alone"]["value"] is True
    assert inside["disability_level"]["masked"] is True and inside["disability_level"]["value"] == "***"
    operator = (await client.get(f"{BASE}/profiles/P-4", headers=auth.headers("operator"))).json()["fields"]
    assert "income_per_capita" not in operator  # confidential: never outside its department
    assert operator["disability_level"]["value"] == "***" and operator["hukou"]["value"] == "local"
    citizen = await client.get(f"{BASE}/profiles/P-4", headers=auth.headers("citizen"))
    assert citizen.status_code == 403
    missing = await client.get(f"{BASE}/profiles/nobody")
    assert missing.status_code == 404


async def test_bad_records_are_refused_and_nothing_is_written(app: Any, client: httpx.AsyncClient,
                                                              anon_client: httpx.AsyncClient, auth: Any,
                                                              moving_clock: Any) -> None:
    await register(client, "P-5", {"birth_date": "1950-03-01"})
    good = record("P-5", "civil-affairs", "assistance", {"income_per_capita": 900.0})
    cases: list[tuple[Any, int]] = [
        (b"{not json", 400), ([1, 2], 400), ({**good, "fields": {"income_per_capita": "900"}}, 400),
        ({**good, "fields": {"salary": 1}}, 400), ({**good, "fields": {}}, 400),
        ({**good, "purposes": ["marketing"]}, 400), ({**good, "consent": {"basis": "maybe"}}, 400),
        ({**good, "observedAt": "yesterday"}, 400), ({**good, "subject": {"kind": "alien", "id": "x"}}, 400),
        ({**good, "department": "x" * 300}, 400),
        ({**good, "fields": {"birth_date": "1950-02-30"}}, 400),
        ({**good, "subject": {"kind": "company", "id": "P-5"}, "fields": {"employees": 3}}, 400),
        ({**good, "subject": {"kind": "company", "id": "C-none"}, "fields": {"employees": 3}}, 404),
        ({**good, "dataset": "a\u0000b"}, 400),
    ]
    for body, status in cases:
        sent = await client.post(f"{BASE}/records", content=body if isinstance(body, bytes) else None,
                                 json=None if isinstance(body, bytes) else body,
                                 headers={"Content-Type": "application/json"})
        assert sent.status_code == status, (body, sent.text)
        assert set(sent.json()) >= {"type", "title", "detail"}
    huge = await client.post(f"{BASE}/records", content=b'{"a": "' + b"x" * 300_000 + b'"}')
    assert huge.status_code == 413
    assert (await anon_client.post(f"{BASE}/records", json=good)).status_code == 401
    assert (await client.post(f"{BASE}/records", json=good, headers=auth.headers("citizen"))).status_code == 403
    other_dept = await client.post(f"{BASE}/records", json=good,
                                   headers=auth.headers("official", department="health"))
    assert other_dept.status_code == 403
    async with app.state.engine.connect() as conn:
        count = len((await conn.execute(select(m.records.c.id).where(m.records.c.subject_id == "P-5"))).all())
    assert count == 1  # only the registry's record
