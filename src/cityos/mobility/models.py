"""Mobility tables: GTFS feeds and their timetables, one set of rows per (tenant, feed).

The timetable is kept compact: one `mob_trips` row per trip carries its stop times as arrays (stop ids,
arrival and departure seconds, pickup / drop-off types), so a feed of a million stop times is some tens of
thousands of rows, written in one transaction. A new version of a feed deletes the feed's rows and
writes the new ones in the same transaction (atomic replacement). No foreign keys (the test harness
empties tables in any order); the feed's rows share (tenant, feed_id).
"""

from __future__ import annotations

from sqlalchemy import Column, Float, Integer, MetaData, PrimaryKeyConstraint, String, Table, Text

from cityos.core.sqltypes import JsonDoc, Timestamp

metadata = MetaData()


def _key() -> list[Column[str]]:
    return [Column("tenant", String(256), nullable=False), Column("feed_id", String(64), nullable=False)]


feeds = Table(
    "mob_feeds", metadata, *_key(),
    Column("version", Integer, nullable=False),
    Column("name", String(256), nullable=False),
    Column("timezone", String(64), nullable=False),
    Column("agencies", JsonDoc, nullable=False),
    Column("start_date", String(10), nullable=True),   # ISO dates of the service range
    Column("end_date", String(10), nullable=True),
    Column("min_lat", Float, nullable=False), Column("min_lon", Float, nullable=False),
    Column("max_lat", Float, nullable=False), Column("max_lon", Float, nullable=False),
    Column("counts", JsonDoc, nullable=False),
    Column("notices", JsonDoc, nullable=False),         # the warnings and infos of the accepted feed
    Column("imported_at", Timestamp, nullable=False),
    Column("imported_by", String(256), nullable=True),
    PrimaryKeyConstraint("tenant", "feed_id", name="pk_mob_feeds"),
)

stops = Table(
    "mob_stops", metadata, *_key(),
    Column("stop_id", String(256), nullable=False),
    Column("name", Text, nullable=False),
    Column("lat", Float, nullable=True),
    Column("lon", Float, nullable=True),
    Column("location_type", Integer, nullable=False),
    Column("parent_station", String(256), nullable=False),
    PrimaryKeyConstraint("tenant", "feed_id", "stop_id", name="pk_mob_stops"),
)

routes = Table(
    "mob_routes", metadata, *_key(),
    Column("route_id", String(256), nullable=False),
    Column("agency_id", String(256), nullable=False),
    Column("short_name", Text, nullable=False),
    Column("long_name", Text, nullable=False),
    Column("route_type", Integer, nullable=False),
    Column("color", String(16), nullable=False),
    PrimaryKeyConstraint("tenant", "feed_id", "route_id", name="pk_mob_routes"),
)

trips = Table(
    "mob_trips", metadata, *_key(),
    Column("trip_id", String(256), nullable=False),
    Column("route_id", String(256), nullable=False),
    Column("service_id", String(256), nullable=False),
    Column("headsign", Text, nullable=False),
    Column("direction_id", String(8), nullable=False),
    # The trip's stop times, in stop_sequence order (JSON arrays).
    Column("stop_ids", JsonDoc, nullable=False),
    Column("stop_sequences", JsonDoc, nullable=False),
    Column("arrivals", JsonDoc, nullable=False),
    Column("departures", JsonDoc, nullable=False),
    Column("pickup", String(4096), nullable=False),     # one digit per stop time
    Column("dropoff", String(4096), nullable=False),
    PrimaryKeyConstraint("tenant", "feed_id", "trip_id", name="pk_mob_trips"),
)

calendars = Table(
    "mob_calendars", metadata, *_key(),
    Column("service_id", String(256), nullable=False),
    Column("days", String(7), nullable=False),          # "1111100": Monday … Sunday
    Column("start_date", String(10), nullable=False),
    Column("end_date", String(10), nullable=False),
    PrimaryKeyConstraint("tenant", "feed_id", "service_id", name="pk_mob_calendars"),
)

calendar_dates = Table(
    "mob_calendar_dates", metadata, *_key(),
    Column("service_id", String(256), nullable=False),
    Column("date", String(10), nullable=False),
    Column("exception_type", Integer, nullable=False),
    PrimaryKeyConstraint("tenant", "feed_id", "service_id", "date", name="pk_mob_calendar_dates"),
)

transfers = Table(
    "mob_transfers", metadata, *_key(),
    Column("seq", Integer, nullable=False),
    Column("from_stop_id", String(256), nullable=False),
    Column("to_stop_id", String(256), nullable=False),
    Column("transfer_type", Integer, nullable=False),
    Column("min_transfer_time", Integer, nullable=False),  # −1: not given
    PrimaryKeyConstraint("tenant", "feed_id", "seq", name="pk_mob_transfers"),
)

frequencies = Table(
    "mob_frequencies", metadata, *_key(),
    Column("seq", Integer, nullable=False),
    Column("trip_id", String(256), nullable=False),
    Column("start_time", Integer, nullable=False),
    Column("end_time", Integer, nullable=False),
    Column("headway", Integer, nullable=False),
    Column("exact_times", String(1), nullable=False),
    PrimaryKeyConstraint("tenant", "feed_id", "seq", name="pk_mob_frequencies"),
)

# GBFS bike-share systems (configured by URL) and their stations' latest counts.
bike_systems = Table(
    "mob_bike_systems", metadata,
    Column("tenant", String(256), nullable=False),
    Column("system_id", String(64), nullable=False),
    Column("url", Text, nullable=False),
    Column("name", Text, nullable=True),
    Column("ttl", Integer, nullable=False),
    Column("stations", Integer, nullable=False),
    Column("free_bikes", Integer, nullable=False),
    Column("skipped", JsonDoc, nullable=False),         # station ids in the status feed but not the information
    Column("last_error", Text, nullable=True),
    Column("fetched_at", Timestamp, nullable=True),
    Column("created_at", Timestamp, nullable=False),
    PrimaryKeyConstraint("tenant", "system_id", name="pk_mob_bike_systems"),
)

bike_stations = Table(
    "mob_bike_stations", metadata,
    Column("tenant", String(256), nullable=False),
    Column("system_id", String(64), nullable=False),
    Column("station_id", String(256), nullable=False),
    Column("name", Text, nullable=False),
    Column("lat", Float, nullable=False),
    Column("lon", Float, nullable=False),
    Column("capacity", Integer, nullable=True),
    Column("bikes", Integer, nullable=False),
    Column("docks", Integer, nullable=True),
    Column("is_renting", Integer, nullable=False),
    Column("is_returning", Integer, nullable=False),
    Column("last_reported", Timestamp, nullable=True),
    PrimaryKeyConstraint("tenant", "system_id", "station_id", name="pk_mob_bike_stations"),
)

FEED_TABLES = (stops, routes, trips, calendars, calendar_dates, transfers, frequencies)
TABLES = (feeds, *FEED_TABLES)
ALL_TABLES = (*TABLES, bike_systems, bike_stations)
