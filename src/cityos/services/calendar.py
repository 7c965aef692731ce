"""Working-day calendar for statutory deadlines (承诺时限).

China's public holidays come from the `holidays` package, including the adjusted working weekends
(调休): `holidays.China().is_working_day(d)` is False on a holiday or an ordinary weekend and True on
a weekend that was declared a working day. Local overrides (a city's own closures or extra working
days) win over both; they come from ``CITYOS_SERVICES_CALENDAR``: comma-separated ``YYYY-MM-DD=off``
or ``YYYY-MM-DD=on`` entries.

Conventions (as 政务服务 counts them): the day of acceptance does not count; a limit of N working
days ends at the close of the N-th working day after it. A paused interval (补正, the applicant
supplying missing materials) adds its working days to the limit.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

import holidays

YELLOW_AT = 0.8  # share of the limit used at which a case turns yellow


@lru_cache(maxsize=64)
def _china(year: int) -> holidays.HolidayBase:
    return holidays.China(years=year)


def parse_overrides(text: str | None) -> dict[date, bool]:
    """``2026-03-02=off,2026-03-07=on`` → {date: is_working_day}."""
    overrides: dict[date, bool] = {}
    for item in (text or "").split(","):
        item = item.strip()
        if not item:
            continue
        day, _, flag = item.partition("=")
        if flag.strip().lower() not in ("on", "off"):
            raise ValueError(f"calendar override {item!r}: expected YYYY-MM-DD=on|off")
        overrides[date.fromisoformat(day.strip())] = flag.strip().lower() == "on"
    return overrides


@dataclass
class WorkCalendar:
    tz: ZoneInfo
    overrides: dict[date, bool]
    # Day arithmetic is asked the same questions all day long (every inbox row shows a deadline): memoised.
    _added: dict[tuple[date, int], date] = field(default_factory=dict, repr=False, compare=False)
    _between: dict[tuple[date, date], int] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_env(cls) -> WorkCalendar:
        return cls(ZoneInfo(os.environ.get("CITYOS_SERVICES_TZ", "Asia/Shanghai")),
                   parse_overrides(os.environ.get("CITYOS_SERVICES_CALENDAR")))

    def is_working_day(self, day: date) -> bool:
        if day in self.overrides:
            return self.overrides[day]
        return bool(_china(day.year).is_working_day(day))

    def local_date(self, moment: datetime) -> date:
        return moment.astimezone(self.tz).date()

    def add_working_days(self, start: date, days: int) -> date:
        """The `days`-th working day after `start` (start itself never counts)."""
        key = (start, days)
        found = self._added.get(key)
        if found is not None:
            return found
        day, left = start, days
        while left > 0:
            day += timedelta(days=1)
            if self.is_working_day(day):
                left -= 1
        if len(self._added) > 50_000:
            self._added.clear()
        self._added[key] = day
        return day

    def working_days_between(self, start: date, end: date) -> int:
        """Working days d with start < d <= end (0 when end <= start)."""
        key = (start, end)
        found = self._between.get(key)
        if found is not None:
            return found
        count, day = 0, start
        while day < end:
            day += timedelta(days=1)
            if self.is_working_day(day):
                count += 1
        if len(self._between) > 50_000:
            self._between.clear()
        self._between[key] = count
        return count

    def due_at(self, submitted_at: datetime, limit_days: int, paused_days: int = 0) -> datetime:
        """The end (local midnight) of the last working day allowed."""
        last = self.add_working_days(self.local_date(submitted_at), limit_days + paused_days)
        return datetime.combine(last + timedelta(days=1), time(0), self.tz)

    def shift(self, moment: datetime, days: int) -> datetime:
        """`moment` moved on by `days` working days: where a deadline lands after a pause (补正) of that many.

        A deadline written as local midnight is the end of the day before it, and that day moves:
        ``shift(due_at(s, n, p), k) == due_at(s, n, p + k)``. Any other moment keeps its time of day on
        the `days`-th working day after its date.
        """
        if days <= 0:
            return moment
        local = moment.astimezone(self.tz)
        if local.time() == time(0):
            last = self.add_working_days(local.date() - timedelta(days=1), days)
            return datetime.combine(last + timedelta(days=1), time(0), self.tz)
        return datetime.combine(self.add_working_days(local.date(), days), local.time(), self.tz)

    def deadline(self, *, submitted_at: datetime, limit_days: int, paused_days: int, paused_since: datetime | None,
                 completed_at: datetime | None, now: datetime) -> dict[str, object]:
        """The deadline view: {limitDays, usedDays, leftDays, state: green|yellow|red, paused, dueAt}."""
        due = self.due_at(submitted_at, limit_days, paused_days)
        ref = completed_at or paused_since or now
        used = max(0, self.working_days_between(self.local_date(submitted_at), self.local_date(ref)) - paused_days)
        if ref >= due:
            state = "red"
        elif limit_days > 0 and used >= YELLOW_AT * limit_days:
            state = "yellow"
        else:
            state = "green"
        return {"limitDays": limit_days, "usedDays": used, "leftDays": limit_days - used, "state": state,
                "paused": paused_since is not None and completed_at is None, "dueAt": due.isoformat()}
