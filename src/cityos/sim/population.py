"""A synthetic population for 一网协同: residents, companies and their life events, made with numpy.

Distributions follow the shape of a Chinese city of the 2020 census (an ageing pyramid: about 19 %
aged 60+, 2.5 % aged 80+), the disabled-persons federation's prevalence (about 6 % certified, a
quarter of them grade 1-2), 低保 coverage of about 2 %, and the 大中小微 split of registered
companies (over 90 % micro and small). One call makes a million residents in about a second.

`PersonEvents` draws life events over simulated days: 80th birthdays (from the birth dates), births,
job losses, disability certifications; `company_events` registrations and hiring.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

import numpy as np
import numpy.typing as npt

from cityos.livelihood.policies.engine import row_of as engine_row_of
from cityos.livelihood.profiles.fields import EMPLOYMENT, INDUSTRY_SECTIONS, SIZE_CLASSES

Columns = dict[str, npt.NDArray[Any]]
CREDIT_WEIGHTS = (0.25, 0.45, 0.15, 0.1, 0.05)
# GB/T 4754 sections and the share of registered companies in each (manufacturing, trade and
# services dominate).
SECTION_WEIGHTS = {"A": 0.02, "C": 0.18, "E": 0.02, "F": 0.07, "G": 0.28, "H": 0.05, "I": 0.09,
                   "L": 0.09, "M": 0.08, "O": 0.06, "R": 0.04, "K": 0.02}


@dataclass
class Synthetic:
    kind: str
    size: int
    as_of: date
    columns: Columns  # field → values (code fields as indices into the field's codes)
    known: dict[str, npt.NDArray[np.bool_]]


def _ages(rng: np.random.Generator, n: int) -> npt.NDArray[np.int64]:
    # Five-year bands 0-4 … 100+, an ageing city's shares.
    bands = np.array([4.5, 5.0, 5.2, 4.8, 5.3, 6.8, 8.0, 7.9, 7.2, 7.6, 8.3, 7.4, 6.2, 5.2, 3.9, 2.6,
                      1.6, 0.9, 0.35, 0.08, 0.02])
    band = rng.choice(len(bands), size=n, p=bands / bands.sum())
    return np.asarray(band * 5 + rng.integers(0, 5, size=n), dtype=np.int64)


def residents(n: int, as_of: date, seed: int = 7) -> Synthetic:
    rng = np.random.default_rng(seed)
    age = _ages(rng, n)
    born = (np.datetime64(as_of, "D") - (age * 365.25).astype("timedelta64[D]")
            - rng.integers(0, 365, size=n).astype("timedelta64[D]"))
    employment = np.where(age < 22, 3, np.where(age >= 60, 2, rng.choice([0, 1, 4], size=n, p=[0.9, 0.05, 0.05])))
    disability = np.where(rng.random(n) < 0.06, rng.choice([1, 2, 3, 4], size=n, p=[0.1, 0.15, 0.35, 0.4]), 0)
    income = np.round(rng.lognormal(np.log(3500), 0.7, size=n), 0)
    elderly = age >= 60
    cols: Columns = {
        "birth_date": born,
        "hukou": (rng.random(n) < 0.15).astype(np.int64),  # 0 local, 1 other
        "household_size": rng.integers(1, 6, size=n),
        "living_alone": elderly & (rng.random(n) < 0.12),
        "disability_level": disability,
        "employment": employment.astype(np.int64),
        "unemployed_months": np.where(employment == 1, rng.integers(0, 30, size=n), 0),
        "pension_insured": rng.random(n) < np.where(age >= 16, 0.92, 0.0),
        "income_per_capita": income,
        "household_assets": np.round(income * rng.uniform(5, 40, size=n), 0),
        "one_child_certificate": (age >= 45) & (age <= 75) & (rng.random(n) < 0.3),
        "care_level": np.where(elderly & (rng.random(n) < 0.08), rng.integers(1, 4, size=n), 0),
        "children_under_3": np.where((age >= 22) & (age <= 40) & (rng.random(n) < 0.08), 1, 0),
        "veteran": (age >= 20) & (rng.random(n) < 0.012),
        "graduation_year": np.where((age >= 21) & (age <= 24), as_of.year - (age - 22), 0),
        "business_owner": (age >= 20) & (age < 65) & (rng.random(n) < 0.06),
    }
    known = {name: np.ones(n, dtype=bool) for name in cols}
    # Not every department has a record for everyone: income is known only for those who declared it
    # (assistance applicants, most of the working-age population).
    known["income_per_capita"] = rng.random(n) < 0.9
    known["household_assets"] = known["income_per_capita"]
    known["graduation_year"] = cols["graduation_year"] > 0
    return Synthetic("person", n, as_of, cols, known)


def companies(n: int, as_of: date, seed: int = 11) -> Synthetic:
    rng = np.random.default_rng(seed)
    weights = np.array([SECTION_WEIGHTS.get(s, 0.003) for s in INDUSTRY_SECTIONS])
    size = rng.choice(len(SIZE_CLASSES), size=n, p=[0.72, 0.2, 0.065, 0.015])
    lo = np.array([1, 10, 100, 300])[size]
    hi = np.array([10, 100, 300, 3000])[size]
    staff = rng.integers(lo, hi)
    age_days = rng.integers(0, 20 * 365, size=n)
    cols: Columns = {
        "registered_on": np.datetime64(as_of, "D") - age_days.astype("timedelta64[D]"),
        "industry": rng.choice(len(INDUSTRY_SECTIONS), size=n, p=weights / weights.sum()).astype(np.int64),
        "size_class": size.astype(np.int64),
        "employees": staff,
        "layoff_rate": np.round(rng.beta(1, 18, size=n), 3),
        "social_insurance_paid": rng.random(n) < 0.9,
        "new_graduate_hires": np.where(rng.random(n) < 0.15, rng.integers(1, 5, size=n), 0),
        "tax_credit": rng.choice(5, size=n, p=CREDIT_WEIGHTS).astype(np.int64),
        "revenue": np.round(staff * rng.lognormal(np.log(40), 0.6, size=n), 1),
        "rd_ratio": np.round(np.where(rng.random(n) < 0.25, rng.uniform(0.01, 0.15, size=n), 0.0), 3),
        "high_tech_certified": rng.random(n) < 0.04,
        "specialized_sme": (size < 3) & (rng.random(n) < 0.01),
        "startup_loan": np.where((age_days < 3 * 365) & (rng.random(n) < 0.2), rng.integers(10, 300, size=n), 0)
        .astype(np.float64),
    }
    known = {name: np.ones(n, dtype=bool) for name in cols}
    return Synthetic("company", n, as_of, cols, known)


def row_of(synthetic: Synthetic, index: int) -> dict[str, Any]:
    """One person or company as plain Python values (codes as text, dates as ISO), for the reference."""
    return engine_row_of(synthetic.kind, synthetic.columns, synthetic.known, index)


@dataclass(frozen=True)
class LifeEvent:
    day: date
    kind: str  # birthday-80 | birth | job-loss | disability | company-registered | hiring
    index: int
    changes: dict[str, Any]


def person_events(synthetic: Synthetic, start: date, days: int, seed: int = 3) -> list[LifeEvent]:
    """Life events of `synthetic`'s residents over `days` days from `start`, in time order."""
    rng = np.random.default_rng(seed)
    born = synthetic.columns["birth_date"].astype("datetime64[D]")
    eightieth = born.astype("datetime64[Y]") + np.timedelta64(80, "Y")
    birthday = eightieth.astype("datetime64[D]") + (born - born.astype("datetime64[Y]").astype("datetime64[D]"))
    lo, hi = np.datetime64(start, "D"), np.datetime64(start + timedelta(days=days), "D")
    events: list[LifeEvent] = []
    for index in np.flatnonzero((birthday >= lo) & (birthday < hi)):
        events.append(LifeEvent(birthday[index].astype(object), "birthday-80", int(index), {}))
    working = np.flatnonzero(synthetic.columns["employment"] == EMPLOYMENT.index("employed"))
    per_day = max(1, synthetic.size // 20_000)
    for offset in range(days):
        day = start + timedelta(days=offset)
        for index in rng.choice(working, size=per_day, replace=False):
            events.append(LifeEvent(day, "job-loss", int(index), {"employment": "unemployed",
                                                                  "unemployed_months": 0}))
        for index in rng.integers(0, synthetic.size, size=per_day):
            events.append(LifeEvent(day, "disability", int(index), {"disability_level": int(rng.integers(1, 3))}))
        parents = rng.integers(0, synthetic.size, size=per_day)
        for index in parents:
            events.append(LifeEvent(day, "birth", int(index), {"children_under_3": 1}))
    events.sort(key=lambda e: e.day)
    return events
