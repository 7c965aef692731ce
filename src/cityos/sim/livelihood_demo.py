"""一网协同 in the running demo: accounts to try it with, life events over time, and a resident's falls.

- `ensure_accounts`: a citizen account linked to an 82-year-old living alone (eligible for the old-age
  allowance, the one-child parents' reward, home visits, 低保 screening and the senior transit card)
  and an enterprise account linked to a small high-tech company; created once, the passwords shown once.
  The elderly resident wears a wristband on the care roster with an escalation chain of one-minute steps
  (family → community doctor → community worker → 120), so a fall walks the chain within minutes.
- `LifeEvents`: the synthetic population's job losses, disability certifications and births published
  by their departments a few at a time (80th birthdays re-evaluated), so re-evaluation, proactive
  notices and 免申即享 payouts happen while the demo runs.
- `simulated_fall`: the wristband reports a fall; the platform's escalation loop does the rest.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from cityos.core import clock
from cityos.core.errors import AlreadyExists
from cityos.livelihood.profiles.fields import fields_of
from cityos.livelihood.profiles.service import IDENTITY_DATASETS
from cityos.sim.population import LifeEvent, Synthetic, person_events

log = logging.getLogger("cityos.sim.livelihood")

RESIDENT_USER, COMPANY_USER = "resident", "company"
RESIDENT_SUBJECT, COMPANY_SUBJECT = "DEMO-R1", "DEMO-C1"
WRISTBAND = "demo-wristband-1"
LAW = {"basis": "law", "reference": "demo: department data sharing agreement"}
PURPOSES = ["elderly", "social-assistance", "disability", "employment", "family", "veterans",
            "enterprise-support", "care"]


async def _allow(_action: str, _department: Any) -> None:
    return None  # the demo's departments publish as the platform itself


def _resident_fields(today: date) -> dict[str, Any]:
    born = today.replace(year=today.year - 82) - timedelta(days=40)
    return {"birth_date": born.isoformat(), "hukou": "local", "household_size": 1, "living_alone": True,
            "employment": "retired", "pension_insured": True, "income_per_capita": 900,
            "household_assets": 20000, "one_child_certificate": True, "disability_level": 0, "care_level": 1}


def _company_fields(today: date) -> dict[str, Any]:
    return {"registered_on": (today - timedelta(days=2 * 365)).isoformat(), "industry": "M",
            "size_class": "small", "employees": 45, "layoff_rate": 0.02, "social_insurance_paid": True,
            "new_graduate_hires": 3, "tax_credit": "A", "revenue": 3200.0, "rd_ratio": 0.08,
            "high_tech_certified": True, "specialized_sme": False, "startup_loan": 150.0}


async def _share(app: Any, kind: str, subject: str, fields: dict[str, Any], user_id: str,
                 district: str | None) -> dict[str, int]:
    """Each department shares its part of the profile; the first record links the account."""
    specs = fields_of(kind)
    by_department: dict[str, dict[str, Any]] = {}
    for name, value in fields.items():
        by_department.setdefault(specs[name].authority, {})[name] = value
    totals = {"payouts": 0, "notices": 0}
    observed = clock.now().isoformat()
    registry, dataset = IDENTITY_DATASETS[kind]
    # The identity registry registers the subject first; the other departments share after it.
    ordered = [(registry, by_department.pop(registry, {})), *sorted(by_department.items())]
    for i, (department, values) in enumerate(ordered):
        body: dict[str, Any] = {"subject": {"kind": kind, "id": subject}, "department": department,
                                "dataset": dataset if i == 0 else "demo-share", "purposes": PURPOSES, "consent": LAW,
                                "observedAt": observed, "fields": values}
        if i == 0:
            body["userId"] = user_id
            if district:
                body["district"] = district
        result = await app.state.livelihood.publish(None, "", body, _allow)
        totals["payouts"] += int(result.get("payouts", 0) or 0)
        totals["notices"] += int(result.get("notified", 0) or 0)
    return totals


async def _user_id(security: Any, username: str) -> str | None:
    from sqlalchemy import select

    from cityos.security.models import users

    async with security.engine.connect() as conn:
        row = (await conn.execute(select(users.c.id).where(users.c.username == username))).first()
    return None if row is None else str(row.id)


@dataclass(frozen=True)
class DemoAccount:
    username: str
    password: str
    subject: str


async def ensure_accounts(app: Any, district: str | None = None) -> list[DemoAccount]:
    """The demo citizen and enterprise, created once (a second run returns []), with their profiles and
    the citizen's wristband on the care roster."""
    security = app.state.security.service
    made: list[DemoAccount] = []
    today = clock.now().date()
    for username, role, kind, subject, fields, name in (
            (RESIDENT_USER, "citizen", "person", RESIDENT_SUBJECT, _resident_fields(today), "Demo resident 王阿姨"),
            (COMPANY_USER, "enterprise", "company", COMPANY_SUBJECT, _company_fields(today), "Demo company")):
        password = secrets.token_urlsafe(12) + "-Re1"
        try:
            user = await security.create_user(username, password, role, display_name=name)
        except AlreadyExists:
            continue
        await _share(app, kind, subject, fields, user.id, district)
        made.append(DemoAccount(username, password, subject))
        if kind == "person":
            await _enrol_wristband(app, user.id, district)
    return made


async def _enrol_wristband(app: Any, resident_id: str, district: str | None) -> None:
    """The care roster entry: the demo operator plays the community doctor and worker."""
    operator = await _user_id(app.state.security.service, "operator") or resident_id
    chain = [{"role": "family", "userId": resident_id, "ackMinutes": 1},
             {"role": "doctor", "userId": operator, "ackMinutes": 1},
             {"role": "worker", "userId": operator, "ackMinutes": 1},
             {"role": "emergency", "ackMinutes": 5}]
    body: dict[str, Any] = {"subject": RESIDENT_SUBJECT, "devices": [WRISTBAND], "chain": chain,
                            "workerId": operator}  # the operator's "my people" on the care page
    if district:
        body["district"] = district
    await app.state.livelihood_care.enrol(None, "", body)


async def simulated_fall(app: Any) -> list[str]:
    """The demo resident's wristband reports a fall (and a raised heart rate): the alert and its first call."""
    result = await app.state.livelihood_care.reading("", {"device": WRISTBAND,
                                                          "values": {"fallDetected": True, "heartRate": 104}})
    alerts: list[str] = result["alerts"]
    return alerts


class LifeEvents:
    """The loaded population's life events, a few per step: departments publish what changed."""

    def __init__(self, app: Any, population: Synthetic, prefix: str = "R", per_step: int = 3,
                 days: int = 365, seed: int = 3) -> None:
        self.app = app
        self.prefix = prefix
        self.per_step = per_step
        self._events: Iterator[LifeEvent] = iter(person_events(population, clock.now().date(), days, seed))
        self.published = self.payouts = self.notices = 0
        self._specs = fields_of("person")  # the department that records each field publishes its change

    async def step(self) -> dict[str, int]:
        """Publish the next `per_step` events; returns the counts of this step."""
        done = {"events": 0, "payouts": 0, "notices": 0}
        for event in self._take():
            subject = f"{self.prefix}{event.index}"
            if event.kind == "birthday-80" or not event.changes:
                result = await self.app.state.livelihood.life_event("", subject)  # age comes from the date
            else:
                body = {"subject": {"kind": "person", "id": subject},
                        "department": self._specs[next(iter(event.changes))].authority, "dataset": event.kind,
                        "purposes": PURPOSES, "consent": LAW, "observedAt": clock.now().isoformat(),
                        "fields": event.changes}
                result = await self.app.state.livelihood.publish(None, "", body, _allow)
            done["events"] += 1
            done["payouts"] += int(result.get("payouts", 0) or 0)
            done["notices"] += int(result.get("notified", 0) or 0)
        self.published += done["events"]
        self.payouts += done["payouts"]
        self.notices += done["notices"]
        return done

    def _take(self) -> list[LifeEvent]:
        taken: list[LifeEvent] = []
        for event in self._events:
            taken.append(event)
            if len(taken) >= self.per_step:
                break
        return taken
