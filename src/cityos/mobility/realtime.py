"""GTFS-Realtime TripUpdates for a feed, from the timetable alone (the schedule-only baseline).

Every trip running now or starting within `HORIZON_S` gets a TripUpdate with its remaining stops'
scheduled arrival and departure times (delay 0, schedule_relationship SCHEDULED). This is the feed and
the format that arrival predictions will fill: no vehicle positions, dwell times or traffic speeds
are used yet, so it carries no prediction. Protobuf via gtfs-realtime-bindings, or the same message
as JSON (protobuf's JSON mapping).
"""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import numpy as np
from google.transit import gtfs_realtime_pb2

from cityos.mobility.timetable import Timetable

HORIZON_S = 1800
MAX_TRIPS = 5000


def trip_updates(feed_id: str, tt: Timetable, now: dt.datetime) -> gtfs_realtime_pb2.FeedMessage:
    zone = ZoneInfo(tt.timezone)
    local = now.astimezone(zone)
    date = local.date()
    base = dt.datetime.combine(date, dt.time(12), zone) - dt.timedelta(hours=12)
    seconds = int((local - base).total_seconds())
    message = gtfs_realtime_pb2.FeedMessage()
    message.header.gtfs_realtime_version = "2.0"
    message.header.incrementality = gtfs_realtime_pb2.FeedHeader.FULL_DATASET
    message.header.timestamp = int(now.timestamp())
    message.header.feed_version = f"{feed_id}:schedule"
    if tt.first_date is not None and tt.last_date is not None and not (
            tt.first_date - dt.timedelta(days=1) <= date <= tt.last_date + dt.timedelta(days=1)):
        return message
    day = tt.day(date)
    count = 0
    for dp in day.patterns:
        running = np.flatnonzero((dp.dep[:, 0] <= seconds + HORIZON_S) & (dp.arr[:, -1] >= seconds))
        for row in running.tolist():
            if count >= MAX_TRIPS:
                return message
            trip = int(dp.trips[row])
            offset = int(dp.offsets[row])
            entity = message.entity.add()
            entity.id = f"{feed_id}:{tt.trip_ids[trip]}:{offset // 86400}"
            update = entity.trip_update
            update.trip.trip_id = tt.trip_ids[trip].split("@")[0]
            update.trip.route_id = tt.route_ids[int(tt.trip_route[trip])]
            update.trip.start_date = (date - dt.timedelta(days=offset // 86400)).strftime("%Y%m%d")
            first = int(dp.dep[row, 0]) - offset
            update.trip.start_time = f"{first // 3600:02d}:{first // 60 % 60:02d}:{first % 60:02d}"
            update.trip.schedule_relationship = gtfs_realtime_pb2.TripDescriptor.SCHEDULED
            update.timestamp = int(now.timestamp())
            update.delay = 0
            for position in np.flatnonzero(dp.arr[row] >= seconds).tolist():
                stu = update.stop_time_update.add()
                stu.stop_id = tt.stop_ids[int(dp.stops[position])]
                stu.arrival.time = int((base + dt.timedelta(seconds=int(dp.arr[row, position]))).timestamp())
                stu.arrival.delay = 0
                stu.departure.time = int((base + dt.timedelta(seconds=int(dp.dep[row, position]))).timestamp())
                stu.departure.delay = 0
                stu.schedule_relationship = gtfs_realtime_pb2.TripUpdate.StopTimeUpdate.SCHEDULED
            count += 1
    return message
