"""The message catalogue: display names Chinese first, English beside; times in the city's zone."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from cityos.core import messages


def test_labels_fall_back_to_the_parent_category_then_the_code() -> None:
    assert messages.category("environment.air") == "空气污染 Air pollution"
    assert messages.category("environment.air.pm25") == "空气污染 Air pollution"
    assert messages.category("no-such-thing") == "no-such-thing"  # shown as is, never empty
    assert messages.label("level", "especially_major") == "特别重大 Especially major"
    assert messages.label("action", "alarm.cleared") == "告警已清除 Alarm cleared"
    assert messages.department("it-operations") == "信息中心运维 IT Operations"
    assert messages.label("status", None) == "" and messages.label("unknown-kind", "x") == "x"


def test_titles_come_from_category_and_place() -> None:
    assert messages.incident_title("environment.air", "Longhua") == "空气污染 Air pollution · 龙华区 Longhua"
    assert messages.incident_title("flood", "Nandu River", "Meilan") == \
        "洪水 Flood · 南渡江 Nandu River · 美兰区 Meilan"
    assert messages.incident_title("fire", None, "") == "火灾 Fire"
    assert len(messages.incident_title("fire", "x" * 500)) == 200


def test_local_time_is_the_city_zone_with_the_zone_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CITYOS_TIMEZONE", raising=False)
    assert messages.local_time("2026-03-02T04:09:00.000Z") == "03-02 12:09 CST"
    assert messages.local_time(datetime(2026, 3, 2, 4, 9), "%H:%M") == "12:09 CST"  # naive = UTC
    monkeypatch.setenv("CITYOS_TIMEZONE", "Europe/Berlin")
    assert messages.local_time("2026-07-02T04:09:00+00:00", "%H:%M") == "06:09 CEST"
    monkeypatch.setenv("CITYOS_TIMEZONE", "Asia/Kolkata")
    assert messages.local_time("2026-07-02T04:09:00Z", "%H:%M") == "09:39 IST"
    monkeypatch.setenv("CITYOS_TIMEZONE", "Etc/GMT-8")  # a zone whose name is an offset
    assert messages.local_time(datetime(2026, 7, 2, 4, 9, tzinfo=UTC), "%H:%M") == "12:09 UTC+8"
    monkeypatch.setenv("CITYOS_TIMEZONE", "Not/AZone")  # an unknown zone falls back to Asia/Shanghai
    assert messages.local_time("2026-07-02T04:09:00Z", "%H:%M") == "12:09 CST"
    assert messages.local_time("not a time") == "not a time" and messages.local_time(None) == ""
