"""Parking tables.

A car park counts `occupied` spaces (open sessions without a reservation) and `held` ones (active
reservations, and sessions that arrived on one); a reservation or an entry is one conditional UPDATE of
those counters (`occupied + held < total`), so concurrent reservations never exceed the capacity on
either database. No foreign keys (the test harness empties tables in any order).
"""

from __future__ import annotations

from sqlalchemy import (
                        BigInteger,
                        Column,
                        Float,
                        Index,
                        Integer,
                        MetaData,
                        PrimaryKeyConstraint,
                        String,
                        Table,
                        Text,
)

from cityos.core.sqltypes import Timestamp

metadata = MetaData()

RESERVATION_STATUSES = ("held", "used", "cancelled", "released")
SESSION_STATUSES = ("open", "paid", "unpaid", "disputed", "refunded")

carparks = Table(
    "park_carparks", metadata,
    Column("tenant", String(256), nullable=False),
    Column("id", String(64), nullable=False),
    Column("name", String(256), nullable=False),
    Column("department", String(128), nullable=True),       # the staff department that runs it
    Column("lat", Float, nullable=False),
    Column("lon", Float, nullable=False),
    Column("total", Integer, nullable=False),
    Column("occupied", Integer, nullable=False),             # vehicles inside that came without a reservation
    Column("held", Integer, nullable=False),                 # spaces held by reservations (waiting or arrived)
    Column("free_minutes", Integer, nullable=False),
    Column("hour_rate", Integer, nullable=False),            # fen (分) per started hour, daytime
    Column("night_rate", Integer, nullable=False),           # fen per started hour inside the night window
    Column("night_start", Integer, nullable=False),          # city-zone hour the night rate starts (0-23)
    Column("night_end", Integer, nullable=False),            # city-zone hour it ends
    Column("daily_cap", Integer, nullable=False),            # fen per 24 h from entry; 0 = no cap
    Column("opens", String(5), nullable=False),              # HH:MM city zone; opens == closes means 24 h
    Column("closes", String(5), nullable=False),
    Column("ev_chargers", Integer, nullable=False),
    Column("created_at", Timestamp, nullable=False),
    Column("updated_at", Timestamp, nullable=False),
    PrimaryKeyConstraint("tenant", "id", name="pk_park_carparks"),
)
Index("ix_park_carparks_place", carparks.c.tenant, carparks.c.lat, carparks.c.lon)

reservations = Table(
    "park_reservations", metadata,
    Column("tenant", String(256), nullable=False),
    Column("id", String(64), nullable=False),
    Column("carpark_id", String(64), nullable=False),
    Column("person", String(256), nullable=False),           # personal: owner and the car park's staff
    Column("plate", String(16), nullable=False),             # personal: masked for others
    Column("start", Timestamp, nullable=False),
    Column("end", Timestamp, nullable=False),
    Column("status", String(16), nullable=False),
    Column("created_at", Timestamp, nullable=False),
    Column("updated_at", Timestamp, nullable=False),
    PrimaryKeyConstraint("tenant", "id", name="pk_park_reservations"),
)
Index("ix_park_reservations_due", reservations.c.status, reservations.c.start)
Index("ix_park_reservations_plate", reservations.c.tenant, reservations.c.carpark_id, reservations.c.plate)

sessions = Table(
    "park_sessions", metadata,
    Column("tenant", String(256), nullable=False),
    Column("id", String(64), nullable=False),
    Column("carpark_id", String(64), nullable=False),
    Column("plate", String(16), nullable=False),
    Column("reservation_id", String(64), nullable=True),
    Column("entry_at", Timestamp, nullable=False),
    Column("exit_at", Timestamp, nullable=True),
    Column("fee", Integer, nullable=True),                   # fen
    Column("status", String(16), nullable=False),
    Column("dispute", Text, nullable=True),
    Column("created_at", Timestamp, nullable=False),
    Column("updated_at", Timestamp, nullable=False),
    PrimaryKeyConstraint("tenant", "id", name="pk_park_sessions"),
)
Index("ix_park_sessions_plate", sessions.c.tenant, sessions.c.plate, sessions.c.status)
Index("ix_park_sessions_carpark", sessions.c.tenant, sessions.c.carpark_id, sessions.c.entry_at)

# A gate camera may send the same event twice: its id is remembered with the session it produced.
plate_events = Table(
    "park_plate_events", metadata,
    Column("tenant", String(256), nullable=False),
    Column("event_id", String(128), nullable=False),
    Column("carpark_id", String(64), nullable=False),
    Column("direction", String(8), nullable=False),
    Column("plate", String(16), nullable=False),
    Column("at", Timestamp, nullable=False),
    Column("session_id", String(64), nullable=True),
    PrimaryKeyConstraint("tenant", "event_id", name="pk_park_plate_events"),
)

payments = Table(
    "park_payments", metadata,
    Column("tenant", String(256), nullable=False),
    Column("id", String(64), nullable=False),
    Column("session_id", String(64), nullable=False),
    Column("kind", String(8), nullable=False),               # charge | refund
    Column("amount", Integer, nullable=False),               # fen, positive
    Column("provider", String(64), nullable=False),
    Column("provider_ref", String(128), nullable=True),
    Column("status", String(16), nullable=False),            # succeeded | failed
    Column("created_at", Timestamp, nullable=False),
    PrimaryKeyConstraint("tenant", "id", name="pk_park_payments"),
)
Index("ix_park_payments_session", payments.c.tenant, payments.c.session_id)

vehicles = Table(
    "park_vehicles", metadata,
    Column("tenant", String(256), nullable=False),
    Column("plate", String(16), nullable=False),
    Column("person", String(256), nullable=False),
    Column("created_at", Timestamp, nullable=False),
    PrimaryKeyConstraint("tenant", "plate", name="pk_park_vehicles"),
)
Index("ix_park_vehicles_person", vehicles.c.tenant, vehicles.c.person)

# Occupancy history per hour of the week (0 = Monday 00:00 city zone): the guidance's prediction.
occupancy = Table(
    "park_occupancy", metadata,
    Column("tenant", String(256), nullable=False),
    Column("carpark_id", String(64), nullable=False),
    Column("hour_of_week", Integer, nullable=False),
    Column("samples", Integer, nullable=False),
    Column("occupied_sum", BigInteger, nullable=False),
    PrimaryKeyConstraint("tenant", "carpark_id", "hour_of_week", name="pk_park_occupancy"),
)

TABLES = [carparks, reservations, sessions, plate_events, payments, vehicles, occupancy]
