"""Working-day calendar: China's holidays and adjusted working weekends (调休), local overrides."""

from __future__ import annotations

from datetime import UTC, date, datetime
from zoneinfo import ZoneInfo

import pytest

from cityos.services.calendar import WorkCalendar, parse_overrides

SHANGHAI = ZoneInfo("Asia/Shanghai")


def test_services_calendar_china_holidays_and_adjusted_weekends() -> None:
    cal = WorkCalendar(SHANGHAI, {})
    assert cal.is_working_day(date(2026, 3, 2))  # an ordinary Monday
    assert not cal.is_working_day(date(2026, 3, 7))  # an ordinary Saturday
    assert not cal.is_working_day(date(2026, 2, 17))  # Spring Festival
    assert not cal.is_working_day(date(2026, 10, 1))  # National Day
    assert cal.is_working_day(date(2026, 2, 14))  # Saturday made a working day (调休)
    assert cal.is_working_day(date(2026, 2, 28))  # Saturday made a working day (调休)
    # Friday 13 Feb + 1 working day = Saturday 14 Feb (调休), + 2 = Tuesday 24 Feb after the festival.
    assert cal.add_working_days(date(2026, 2, 13), 1) == date(2026, 2, 14)
    assert cal.add_working_days(date(2026, 2, 13), 2) == date(2026, 2, 24)
    assert cal.working_days_between(date(2026, 2, 13), date(2026, 2, 24)) == 2


def test_services_calendar_local_overrides() -> None:
    overrides = parse_overrides("2026-03-03=off, 2026-03-07=on")
    cal = WorkCalendar(SHANGHAI, overrides)
    assert not cal.is_working_day(date(2026, 3, 3)) and cal.is_working_day(date(2026, 3, 7))
    assert cal.add_working_days(date(2026, 3, 2), 1) == date(2026, 3, 4)
    with pytest.raises(ValueError):
        parse_overrides("2026-03-03=maybe")


def test_services_calendar_deadline_states() -> None:
    cal = WorkCalendar(SHANGHAI, {})
    submitted = datetime(2026, 3, 2, 1, 0, tzinfo=UTC)  # Monday 09:00 local
    due = cal.due_at(submitted, 10)
    assert due == datetime(2026, 3, 17, 0, 0, tzinfo=SHANGHAI)  # end of Monday 16 March

    def state(now: datetime, paused_since: datetime | None = None, paused_days: int = 0) -> dict[str, object]:
        return cal.deadline(submitted_at=submitted, limit_days=10, paused_days=paused_days,
                            paused_since=paused_since, completed_at=None, now=now)

    assert state(datetime(2026, 3, 9, 2, tzinfo=UTC))["state"] == "green"  # 5 of 10
    eighty = state(datetime(2026, 3, 12, 2, tzinfo=UTC))  # 8 of 10
    assert eighty["state"] == "yellow" and eighty["usedDays"] == 8 and eighty["leftDays"] == 2
    late = state(datetime(2026, 3, 17, 2, tzinfo=UTC))
    assert late["state"] == "red" and late["leftDays"] == -1
    paused = state(datetime(2026, 3, 20, 2, tzinfo=UTC), paused_since=datetime(2026, 3, 4, 2, tzinfo=UTC))
    assert paused["paused"] is True and paused["usedDays"] == 2 and paused["state"] == "green"
    resumed = state(datetime(2026, 3, 17, 2, tzinfo=UTC), paused_days=5)
    assert resumed["usedDays"] == 6 and resumed["state"] == "green"
