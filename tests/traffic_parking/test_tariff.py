"""The parking fee as a pure function (hypothesis properties plus worked examples) and plate rules."""

from __future__ import annotations

import datetime as dt
import math
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cityos.traffic.parking.tariff import BadPlate, Tariff, fee, mask_plate, normalise_plate

ZONE = ZoneInfo("Asia/Shanghai")
BASE = dt.datetime(2026, 12, 7, 0, 0, tzinfo=dt.UTC)  # 08:00 in Shanghai, a Monday

tariffs = st.builds(Tariff, free_minutes=st.integers(0, 120), hour_rate=st.integers(0, 5000),
                    night_rate=st.integers(0, 5000), night_start=st.integers(0, 23), night_end=st.integers(0, 23),
                    daily_cap=st.integers(0, 50000))
entries = st.integers(0, 14 * 24 * 60).map(lambda m: BASE + dt.timedelta(minutes=m))
stays = st.integers(0, 5 * 24 * 60).map(lambda m: dt.timedelta(minutes=m))


@settings(max_examples=300, deadline=None)
@given(tariffs, entries, stays)
def test_fee_is_bounded_and_free_within_the_free_minutes(tariff: Tariff, entry: dt.datetime,
                                                         stay: dt.timedelta) -> None:
    amount = fee(entry, entry + stay, tariff, ZONE)
    assert amount >= 0
    if stay <= dt.timedelta(minutes=tariff.free_minutes):
        assert amount == 0
    started_hours = math.ceil(stay / dt.timedelta(hours=1))
    assert amount <= started_hours * max(tariff.hour_rate, tariff.night_rate)
    if tariff.daily_cap:
        days = max(1, math.ceil(stay / dt.timedelta(hours=24)))
        assert amount <= days * tariff.daily_cap


@settings(max_examples=300, deadline=None)
@given(tariffs, entries, stays, stays)
def test_staying_longer_never_costs_less(tariff: Tariff, entry: dt.datetime, stay: dt.timedelta,
                                         extra: dt.timedelta) -> None:
    assert fee(entry, entry + stay + extra, tariff, ZONE) >= fee(entry, entry + stay, tariff, ZONE)


@settings(max_examples=200, deadline=None)
@given(tariffs, entries, st.integers(1, 4))
def test_whole_days_cost_the_cap_when_a_day_exceeds_it(tariff: Tariff, entry: dt.datetime, days: int) -> None:
    day_price = fee(entry, entry + dt.timedelta(hours=24), tariff, ZONE)
    total = fee(entry, entry + dt.timedelta(hours=24 * days), tariff, ZONE)
    if tariff.daily_cap and tariff.hour_rate * 24 > tariff.daily_cap and tariff.night_rate * 24 > tariff.daily_cap:
        assert day_price == tariff.daily_cap and total == days * tariff.daily_cap


def test_worked_examples() -> None:
    tariff = Tariff(free_minutes=15, hour_rate=1000, night_rate=200, night_start=22, night_end=7, daily_cap=6000)
    morning = dt.datetime(2026, 12, 7, 9, 0, tzinfo=ZONE)
    assert fee(morning, morning + dt.timedelta(minutes=15), tariff, ZONE) == 0
    assert fee(morning, morning + dt.timedelta(minutes=16), tariff, ZONE) == 1000
    assert fee(morning, morning + dt.timedelta(hours=2, minutes=10), tariff, ZONE) == 3000
    assert fee(morning, morning + dt.timedelta(hours=10), tariff, ZONE) == 6000  # capped
    evening = dt.datetime(2026, 12, 7, 21, 0, tzinfo=ZONE)
    # 21:00 day rate, then 22:00-07:00 nine night hours: 1000 + 9 × 200.
    assert fee(evening, evening + dt.timedelta(hours=10), tariff, ZONE) == 2800
    with pytest.raises(ValueError):
        fee(morning, morning - dt.timedelta(minutes=1), tariff, ZONE)


@pytest.mark.parametrize("raw, plate", [("粤B·12345", "粤B12345"), ("粤b 12345", "粤B12345"),
                                        ("沪AD12345", "沪AD12345"), ("京A1234学", "京A1234学")])
def test_plates_are_normalised(raw: str, plate: str) -> None:
    assert normalise_plate(raw) == plate


@pytest.mark.parametrize("raw", ["", "ABC123", "粤I12345", "粤B1234", "粤B1234567", "X粤B12345", 12345, None,
                                 "粤B12345' OR 1=1", "粤B" + "1" * 40])
def test_malformed_plates_are_refused(raw: object) -> None:
    with pytest.raises(BadPlate):
        normalise_plate(raw)


def test_mask_keeps_the_office_and_the_last_two() -> None:
    assert mask_plate("粤B12345") == "粤B·***45"
    assert mask_plate("沪AD12345") == "沪A·***45"
