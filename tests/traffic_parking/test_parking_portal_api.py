"""What the portal's parking pages rely on, on both backends: a window given in city time (+08:00) comes
back as the same moment from every list; a citizen's own lists hold only their own reservations and bills."""

from __future__ import annotations

import datetime as dt
from typing import Any
from zoneinfo import ZoneInfo

import httpx
from test_parking import API, People, make_carpark

from cityos.core import clock

CITY = ZoneInfo("Asia/Shanghai")


async def test_a_city_time_window_reads_back_as_the_same_moment(client: httpx.AsyncClient, app: Any) -> None:
    people = People(app)
    carpark = await make_carpark(client, people, total=5)
    start = (clock.now() + dt.timedelta(hours=2)).astimezone(CITY).replace(second=0, microsecond=0)
    chen = people.citizen("chen")
    made = await client.post(f"{API}/reservations", headers=chen, json={
        "carparkId": carpark["id"], "plate": "琼A·12345", "start": start.isoformat(),
        "end": (start + dt.timedelta(hours=2)).isoformat()})
    assert made.status_code == 201, made.text
    mine = (await client.get(f"{API}/reservations/mine", headers=chen)).json()
    assert [dt.datetime.fromisoformat(r["start"]) for r in mine] == [start]
    assert dt.datetime.fromisoformat(made.json()["start"]) == start
    assert (await client.get(f"{API}/reservations/mine", headers=people.citizen("lin"))).json() == []
