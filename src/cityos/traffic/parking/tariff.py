"""Pure parking rules: the fee of a stay by tariff, and Chinese licence plates (check and mask)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta, tzinfo

HOUR = timedelta(hours=1)
DAY = timedelta(hours=24)

# Province abbreviation, issuing-office letter (no I or O), then 5 characters (6 for new-energy plates);
# the last may be 挂 学 警 港 澳 (trailer, driving school, police, Hong Kong, Macau).
_PROVINCES = "京津沪渝冀豫云辽黑湘皖鲁新苏浙赣鄂桂甘晋蒙陕吉闽贵粤青藏川宁琼"
PLATE = re.compile(rf"^[{_PROVINCES}][A-HJ-NP-Z][A-HJ-NP-Z0-9]{{4,5}}[A-HJ-NP-Z0-9挂学警港澳]$")


class BadPlate(ValueError):
    pass


def normalise_plate(raw: object) -> str:
    """`粤B·12345`, `粤b 12345` → `粤B12345`; anything else is refused."""
    if not isinstance(raw, str) or len(raw) > 16:
        raise BadPlate("plate must be a string such as 粤B·12345")
    plate = raw.replace("·", "").replace("•", "").replace(" ", "").replace("-", "").upper()
    if not PLATE.match(plate):
        raise BadPlate(f"{raw!r} is not a Chinese licence plate (e.g. 粤B·12345, 粤BD12345)")
    return plate


def mask_plate(plate: str) -> str:
    """粤B12345 → 粤B·***45: the issuing office stays (useful for statistics), the owner cannot be found."""
    return f"{plate[:2]}·***{plate[-2:]}"


def display_plate(plate: str) -> str:
    return f"{plate[:2]}·{plate[2:]}"


@dataclass(frozen=True)
class Tariff:
    """Fees in fen (分). Each started hour after the free minutes costs `hour_rate`, or `night_rate` when
    the hour starts in [night_start, night_end) city time; each 24 h from entry costs at most `daily_cap`
    (0: no cap). A stay within the free minutes is free."""

    free_minutes: int
    hour_rate: int
    night_rate: int
    night_start: int
    night_end: int
    daily_cap: int

    def check(self) -> None:
        if not 0 <= self.free_minutes <= 24 * 60:
            raise ValueError("freeMinutes must be between 0 and 1440")
        for name, value in (("hourRate", self.hour_rate), ("nightRate", self.night_rate),
                            ("dailyCap", self.daily_cap)):
            if not 0 <= value <= 1_000_000:
                raise ValueError(f"{name} must be between 0 and 1000000 fen")
        if not (0 <= self.night_start <= 23 and 0 <= self.night_end <= 23):
            raise ValueError("nightStart and nightEnd must be hours 0-23")


def is_night(hour: int, tariff: Tariff) -> bool:
    if tariff.night_start == tariff.night_end:
        return False
    if tariff.night_start < tariff.night_end:
        return tariff.night_start <= hour < tariff.night_end
    return hour >= tariff.night_start or hour < tariff.night_end


def hour_price(moment: datetime, tariff: Tariff, zone: tzinfo) -> int:
    return tariff.night_rate if is_night(moment.astimezone(zone).hour, tariff) else tariff.hour_rate


def fee(entry: datetime, exit_: datetime, tariff: Tariff, zone: tzinfo) -> int:
    """The fee of a stay from `entry` to `exit_` (aware datetimes), in fen."""
    if exit_ < entry:
        raise ValueError("exit before entry")
    stay = exit_ - entry
    if stay <= timedelta(minutes=tariff.free_minutes):
        return 0
    total = 0
    day_start = entry
    while day_start < exit_:
        day_end = min(day_start + DAY, exit_)
        day_fee = 0
        hour = day_start
        while hour < day_end:
            day_fee += hour_price(hour, tariff, zone)
            hour += HOUR
        total += min(day_fee, tariff.daily_cap) if tariff.daily_cap else day_fee
        day_start += DAY
    return total


def first_hour_price(tariff: Tariff, arrival: datetime, zone: tzinfo) -> int:
    """What the first charged hour of a stay starting at `arrival` costs (for the guidance's price)."""
    price = hour_price(arrival, tariff, zone)
    return min(price, tariff.daily_cap) if tariff.daily_cap else price
