"""IoT indicators over the device registry (see cityos.core.indicators). The registry holds the current
state, so these describe the end of the period when computed on schedule."""

from __future__ import annotations

from collections import defaultdict

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from cityos.core.indicators import IndicatorSource, Measure, Period, share
from cityos.iot.models import devices

LOW_BATTERY_PERCENT = 20.0  # the plans' alarm level [C §8.4]


async def _device_share(conn: AsyncConnection, period: Period, low_battery: bool) -> Measure | None:
    rows = (await conn.execute(select(devices.c.district, devices.c.status, devices.c.battery)
                               .where(devices.c.tenant == period.tenant))).all()
    if not rows:
        return None
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for district, status, battery in rows:
        hit = (battery is not None and battery <= LOW_BATTERY_PERCENT) if low_battery else status == "online"
        counts[str(district or "")][0] += hit
        counts[str(district or "")][1] += 1
    hits = sum(v[0] for v in counts.values())
    return Measure(share(hits, len(rows)), len(rows), by_district={d: share(h, n) for d, (h, n) in counts.items()})


async def online_rate(conn: AsyncConnection, period: Period) -> Measure | None:
    return await _device_share(conn, period, low_battery=False)


async def low_battery_share(conn: AsyncConnection, period: Period) -> Measure | None:
    return await _device_share(conn, period, low_battery=True)


SOURCES: dict[str, IndicatorSource] = {
    "iot.device_online_rate": online_rate,
    "iot.low_battery_share": low_battery_share,
}
