"""Shared helpers of the livelihood (一网协同 I) tests. A module of its own name, not `conftest`: another
directory's conftest may already hold that module name when the whole suite runs."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

# 10:00 in Shanghai: in the day, so inactivity checks run.
NOW = datetime(2026, 12, 5, 2, 0, tzinfo=UTC)
BASE = "/api/livelihood"
LAW = {"basis": "law", "reference": "《社会救助暂行办法》第十一条"}


@dataclass
class Moving:
    at: datetime

    def advance(self, **delta: float) -> None:
        self.at += timedelta(**delta)


def record(subject: str, department: str, dataset: str, fields: dict[str, Any], *, kind: str = "person",
           purposes: list[str] | None = None, user_id: str | None = None, observed: str = "2026-12-01",
           district: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"subject": {"kind": kind, "id": subject}, "department": department, "dataset": dataset,
                            "purposes": purposes or ["elderly", "social-assistance", "disability", "employment",
                                                     "family", "veterans", "enterprise-support", "care"],
                            "consent": LAW, "observedAt": observed, "fields": fields}
    if user_id:
        body["userId"] = user_id
    if district:
        body["district"] = district
    return body


def born_years_ago(years: int, days_before: int = 0) -> str:
    today = NOW.date()
    return today.replace(year=today.year - years).isoformat() if not days_before else \
        (today.replace(year=today.year - years) - timedelta(days=days_before)).isoformat()


async def register(client: httpx.AsyncClient, subject: str, fields: dict[str, Any], user_id: str | None = None,
                   district: str | None = None) -> dict[str, Any]:
    made = await client.post(f"{BASE}/records", json=record(subject, "public-security", "household", fields,
                                                            user_id=user_id, district=district))
    assert made.status_code == 201, made.text
    result: dict[str, Any] = made.json()
    return result
