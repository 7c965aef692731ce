"""The pure calculators against the standards' tables: HJ 633-2012, US EPA (2024 PM2.5), GB 3838-2002,
GB 3096-2008. Boundary values on both sides of every breakpoint that matters, the special rules,
and refusals of bad input."""

from __future__ import annotations

import math
from datetime import datetime

import pytest

from cityos.ops.environment import aqi_cn, aqi_us, noise, water

# ---------------------------------------------------------------------- HJ 633-2012


@pytest.mark.parametrize("table", sorted(aqi_cn.BREAKPOINTS))
def test_every_breakpoint_maps_to_its_iaqi_step(table: str) -> None:
    points = aqi_cn.BREAKPOINTS[table]
    for i, concentration in enumerate(points):
        assert aqi_cn.iaqi(table, concentration) == aqi_cn.IAQI_STEPS[i]


@pytest.mark.parametrize(("table", "concentration", "expected"), [
    ("PM2.5_24h", 0, 0), ("PM2.5_24h", 35.1, 51), ("PM2.5_24h", 40, 57), ("PM2.5_24h", 76, 102),
    ("PM2.5_24h", 130, 172), ("PM2.5_24h", 501, 500), ("PM10_24h", 120, 85), ("PM10_24h", 151, 101),
    ("SO2_24h", 100, 75), ("SO2_1h", 150.5, 51), ("NO2_1h", 150, 75), ("NO2_24h", 81, 101),
    ("CO_1h", 10.1, 101), ("CO_24h", 2.1, 53), ("O3_1h", 161, 52), ("O3_8h", 101, 51), ("O3_8h", 800, 300),
])
def test_iaqi_interpolates_and_rounds_up(table: str, concentration: float, expected: int) -> None:
    # formula (1) of HJ 633-2012, rounded up: PM2.5 40 -> 50 + 50/40*5 = 56.25 -> 57
    assert aqi_cn.iaqi(table, concentration) == expected


def test_an_exact_integer_is_not_rounded_up_by_float_noise() -> None:
    assert aqi_cn.iaqi("NO2_1h", 150) == 75  # 50 + 50/100*50, exactly 75
    assert aqi_cn.iaqi("PM2.5_24h", 0.1 + 0.2) == 1  # 0.30000000000000004 -> 0.43 -> 1


def test_so2_one_hour_above_800_uses_the_24_hour_value() -> None:
    assert aqi_cn.iaqi("SO2_1h", 800) == 200
    assert aqi_cn.iaqi("SO2_1h", 801) is None
    result = aqi_cn.hourly(so2=900, so2_24h=100)
    assert result.iaqi == {"SO2_24h": 75} and result.aqi == 75 and result.primary == ["SO2"]
    assert any("24-h SO2" in note for note in result.notes)


def test_o3_eight_hours_above_800_uses_the_one_hour_value() -> None:
    assert aqi_cn.iaqi("O3_8h", 801) is None
    result = aqi_cn.daily(o3_8h_max=850, o3_1h_max=900)
    assert result.iaqi == {"O3_1h": 350} and result.aqi == 350 and result.primary == ["O3"]
    assert result.category is not None and result.category.name == "严重污染"
    assert any("1-h O3" in note for note in result.notes)


def test_primary_pollutant_only_above_50_and_ties_list_all() -> None:
    clean = aqi_cn.hourly(pm25=30, pm10=40, no2=20)
    assert clean.aqi == 43 and clean.primary == []
    assert clean.category is not None and clean.category.name == "优" and clean.category.level == 1
    tie = aqi_cn.hourly(pm25=115, pm10=250, no2=20)
    assert tie.aqi == 150 and tie.primary == ["PM10", "PM2.5"]
    assert tie.category is not None and tie.category.name == "轻度污染"


def test_daily_report_uses_the_24_hour_tables() -> None:
    result = aqi_cn.daily(so2=10, no2=40, co=1.0, pm10=60, pm25=80, o3_1h_max=150, o3_8h_max=120)
    assert result.iaqi["PM2.5_24h"] == 107 and result.iaqi["NO2_24h"] == 50 and result.iaqi["O3_8h"] == 67
    assert result.aqi == 107 and result.primary == ["PM2.5"]


@pytest.mark.parametrize(("aqi", "level", "name", "color"), [
    (0, 1, "优", "#00E400"), (50, 1, "优", "#00E400"), (51, 2, "良", "#FFFF00"), (100, 2, "良", "#FFFF00"),
    (101, 3, "轻度污染", "#FF7E00"), (150, 3, "轻度污染", "#FF7E00"), (151, 4, "中度污染", "#FF0000"),
    (200, 4, "中度污染", "#FF0000"), (201, 5, "重度污染", "#99004C"), (300, 5, "重度污染", "#99004C"),
    (301, 6, "严重污染", "#7E0023"), (500, 6, "严重污染", "#7E0023"),
])
def test_categories_and_official_colours(aqi: int, level: int, name: str, color: str) -> None:
    found = aqi_cn.category(aqi)
    assert (found.level, found.name, found.color) == (level, name, color)


@pytest.mark.parametrize(("value", "message"), [
    (-1, "must not be negative"), (math.nan, "finite"), (math.inf, "finite"), ("12", "must be a number"),
    (True, "must be a number"),
])
def test_bad_concentrations_are_refused(value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        aqi_cn.iaqi("PM2.5_24h", value)  # type: ignore[arg-type]


def test_no_concentration_no_aqi() -> None:
    assert aqi_cn.hourly().aqi is None and aqi_cn.daily().category is None


# ---------------------------------------------------------------------- US EPA


def test_epa_worked_example_ozone() -> None:
    # The EPA's Technical Assistance Document example: 8-h O3 0.08753333 ppm truncates to 0.087 -> AQI 154
    result = aqi_us.aqi(o3_8h=0.08753333)
    assert result.aqi == 154 and result.primary == ["O3"]
    assert result.category is not None and result.category.name == "Unhealthy"


@pytest.mark.parametrize(("pm25", "expected"), [
    (0.0, 0), (9.0, 50), (9.09, 50), (9.1, 51), (12.0, 56), (35.4, 100), (35.5, 101), (35.9, 102),
    (55.4, 150), (55.5, 151), (125.4, 200), (125.5, 201), (225.4, 300), (225.5, 301), (325.4, 500),
])
def test_epa_2024_pm25_breakpoints(pm25: float, expected: int) -> None:
    assert aqi_us.aqi(pm25_24h=pm25).aqi == expected


def test_epa_beyond_the_index() -> None:
    result = aqi_us.aqi(pm25_24h=400)
    assert result.aqi == 500 and any("beyond the AQI" in n for n in result.notes)


def test_epa_truncation_per_pollutant() -> None:
    assert aqi_us.aqi(co_8h=4.45).aqi == 50  # CO to 0.1 ppm
    assert aqi_us.aqi(pm10_24h=54.9).aqi == 50  # PM10 to an integer
    assert aqi_us.aqi(no2_1h=100.7).aqi == 100  # NO2 to an integer ppb


def test_epa_ozone_one_hour_rules() -> None:
    assert aqi_us.aqi(o3_1h=0.1).aqi is None  # 1-h O3 below 0.125 ppm defines no index
    both = aqi_us.aqi(o3_8h=0.060, o3_1h=0.130)
    assert both.sub_indices == {"O3_8h": 67, "O3_1h": 107} and both.aqi == 107
    high = aqi_us.aqi(o3_8h=0.25, o3_1h=0.25)
    assert high.sub_indices == {"O3_1h": 223} and any("1-h O3 index" in n for n in high.notes)


def test_epa_so2_above_304_ppb_uses_the_24_hour_average() -> None:
    assert aqi_us.aqi(so2_1h=304).aqi == 200
    assert aqi_us.aqi(so2_1h=400, so2_24h=200).aqi == 200
    assert aqi_us.aqi(so2_1h=400, so2_24h=400).aqi == 232
    assert aqi_us.aqi(so2_1h=400).aqi == 200


def test_epa_from_cityos_units() -> None:
    # NO2 188 ug/m3 = 99.97 ppb at 25 degC -> truncated 99 -> AQI 99
    assert aqi_us.from_metric(no2_1h=188).aqi == 99
    assert aqi_us.from_metric(pm25_24h=35.9).aqi == 102
    with pytest.raises(ValueError, match="negative"):
        aqi_us.from_metric(o3_8h=-3)


# ---------------------------------------------------------------------- GB 3838-2002


def test_water_class_is_the_worst_parameter() -> None:
    result = water.classify({"pH": 7.2, "DO": 6.5, "CODMn": 3, "NH3N": 0.4, "TP": 0.15})
    assert result.name == "III" and result.limiting == ["TP"]
    assert result.classes == {"pH": 1, "DO": 2, "CODMn": 2, "NH3N": 2, "TP": 3}
    assert result.meets(3) and not result.meets(2)


@pytest.mark.parametrize(("key", "value", "level"), [
    ("DO", 7.5, 1), ("DO", 7.49, 2), ("DO", 6, 2), ("DO", 5, 3), ("DO", 3, 4), ("DO", 2, 5), ("DO", 1.9, 6),
    ("NH3N", 0.15, 1), ("NH3N", 0.16, 2), ("NH3N", 1.0, 3), ("NH3N", 2.0, 5), ("NH3N", 2.5, 6),
    ("COD", 15, 1), ("COD", 15.1, 3), ("COD", 40, 5), ("COD", 41, 6), ("BOD5", 3, 1), ("BOD5", 3.5, 3),
    ("CODMn", 15, 5), ("CODMn", 15.5, 6), ("TP", 0.02, 1), ("TP", 0.4, 5), ("TP", 0.41, 6),
    ("Hg", 0.0001, 3), ("Cd", 0.002, 2), ("coliform", 10000, 3),
    ("pH", 6, 1), ("pH", 9, 1), ("pH", 5.9, 6), ("pH", 9.1, 6),
])
def test_parameter_limits(key: str, value: float, level: int) -> None:
    assert water.parameter_class(key, value) == level


def test_lakes_have_stricter_phosphorus_and_count_nitrogen() -> None:
    assert water.parameter_class("TP", 0.03, "river") == 2
    assert water.parameter_class("TP", 0.03, "lake") == 3
    river = water.classify({"DO": 8, "TN": 1.8})
    assert river.name == "I" and river.ignored == ["TN"]
    lake = water.classify({"DO": 8, "TN": 1.8}, "lake")
    assert lake.name == "V" and lake.limiting == ["TN"]


def test_worse_than_v() -> None:
    result = water.classify({"DO": 1.0, "NH3N": 3.0, "COD": 10})
    assert result.name == "劣V" and result.level == 6 and result.limiting == ["DO", "NH3N"]


def test_class_names_parse() -> None:
    assert [water.class_level(x) for x in ("I", "ii", "Ⅲ", "IV", "V", "劣V", "4")] == [1, 2, 3, 4, 5, 6, 4]
    with pytest.raises(ValueError, match="not a water quality class"):
        water.class_level("VII")


@pytest.mark.parametrize(("values", "message"), [
    ({"DO": -1}, "must not be negative"), ({"NH3N": math.nan}, "finite"), ({"zinc": 1}, "unknown parameter"),
    ({"COD": "high"}, "must be a number"),
])
def test_bad_water_values_are_refused(values: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        water.classify(values)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="river or lake"):
        water.classify({"DO": 5}, "sea")


# ---------------------------------------------------------------------- GB 3096-2008


def test_zone_limits_table() -> None:
    assert noise.LIMITS == {"0": (50, 40), "1": (55, 45), "2": (60, 50), "3": (65, 55), "4a": (70, 55),
                            "4b": (70, 60)}
    assert noise.zone_class("4") == "4a" and noise.zone_class("2类") == "2"
    with pytest.raises(ValueError, match="zone class"):
        noise.zone_class("5")


@pytest.mark.parametrize(("zone", "period", "leq", "exceedance"), [
    ("2", "day", 63.4, 3.4), ("2", "day", 60.0, 0.0), ("2", "night", 50.0, 0.0), ("2", "night", 50.04, 0.0),
    ("4a", "night", 58, 3.0), ("4b", "night", 58, 0.0), ("0", "day", 50.1, 0.1), ("3", "day", 55, 0.0),
])
def test_exceedance(zone: str, period: str, leq: float, exceedance: float) -> None:
    result = noise.assess(zone, period, leq)
    assert result.exceedance == exceedance and result.compliant == (exceedance == 0)


def test_night_maximum_may_exceed_the_limit_by_15_db_at_most() -> None:
    ok = noise.assess("1", "night", 44, lamax=60)
    assert ok.lamax_limit == 60 and ok.lamax_exceedance == 0 and ok.compliant
    loud = noise.assess("1", "night", 44, lamax=61)
    assert loud.lamax_exceedance == 1.0 and not loud.compliant
    assert noise.assess("1", "day", 44, lamax=90).lamax_limit is None  # the rule is for nights


def test_levels_combine_by_energy() -> None:
    assert noise.leq([55, 55, 55, 55]) == pytest.approx(55)
    assert noise.leq([60, 70]) == pytest.approx(67.40, abs=0.01)
    assert noise.leq([]) is None


def test_day_is_six_to_twenty_two_local_time() -> None:
    assert noise.period_of(datetime(2026, 1, 1, 5, 59)) == "night"
    assert noise.period_of(datetime(2026, 1, 1, 6, 0)) == "day"
    assert noise.period_of(datetime(2026, 1, 1, 21, 59)) == "day"
    assert noise.period_of(datetime(2026, 1, 1, 22, 0)) == "night"


@pytest.mark.parametrize("value", [math.nan, -3, 250, "loud"])
def test_bad_levels_are_refused(value: object) -> None:
    with pytest.raises(ValueError):
        noise.assess("2", "day", value)  # type: ignore[arg-type]
