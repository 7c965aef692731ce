"""Appointment tables.

A slot holds `capacity` places and counts `booked` ones; a booking is one conditional UPDATE of that
counter (`booked < capacity`), so concurrent bookings can never exceed the capacity on either database.
No foreign keys (the test harness empties tables in any order); rows of one site share `tenant`.
"""

from __future__ import annotations

from sqlalchemy import (
                        Boolean,
                        Column,
                        Index,
                        Integer,
                        MetaData,
                        PrimaryKeyConstraint,
                        String,
                        Table,
                        Text,
                        UniqueConstraint,
)

from cityos.core.sqltypes import Timestamp

metadata = MetaData()

SITE_KINDS = ("hospital", "vaccination", "hall")
ACTIVE = "booked"  # an appointment that holds its place
STATUSES = ("booked", "cancelled", "noshow", "fulfilled")

schedules = Table(
    "appt_schedules", metadata,
    Column("tenant", String(256), nullable=False),
    Column("id", String(64), nullable=False),
    Column("kind", String(16), nullable=False),          # hospital | vaccination | hall
    Column("site", String(256), nullable=False),         # 市第一人民医院, 徐汇区疫苗接种点, 市民中心
    Column("service", String(256), nullable=False),      # 心内科, 新冠疫苗, 户籍窗口
    Column("actor", String(256), nullable=True),         # a doctor's name or a window; None for a whole service
    Column("department", String(128), nullable=True),    # the staff department that runs it
    Column("active", Boolean, nullable=False),
    Column("created_at", Timestamp, nullable=False),
    PrimaryKeyConstraint("tenant", "id", name="pk_appt_schedules"),
)

slots = Table(
    "appt_slots", metadata,
    Column("tenant", String(256), nullable=False),
    Column("id", String(64), nullable=False),
    Column("schedule_id", String(64), nullable=False),
    Column("start", Timestamp, nullable=False),
    Column("end", Timestamp, nullable=False),
    Column("capacity", Integer, nullable=False),
    Column("booked", Integer, nullable=False),
    Column("blocked", Boolean, nullable=False),          # taken out of service by staff (busy-unavailable)
    PrimaryKeyConstraint("tenant", "id", name="pk_appt_slots"),
    UniqueConstraint("tenant", "schedule_id", "start", name="uq_appt_slots_start"),
)
Index("ix_appt_slots_schedule", slots.c.tenant, slots.c.schedule_id, slots.c.start)

appointments = Table(
    "appt_appointments", metadata,
    Column("tenant", String(256), nullable=False),
    Column("id", String(64), nullable=False),
    Column("slot_id", String(64), nullable=False),
    Column("schedule_id", String(64), nullable=False),
    Column("person", String(256), nullable=False),       # the booking principal's id (personal: owner and staff only)
    Column("status", String(16), nullable=False),
    Column("start", Timestamp, nullable=False),          # copied from the slot: reminders and no-show rules need it
    Column("note", Text, nullable=True),
    Column("reminded_at", Timestamp, nullable=True),
    Column("from_waitlist", Boolean, nullable=False),
    Column("created_at", Timestamp, nullable=False),
    Column("updated_at", Timestamp, nullable=False),
    PrimaryKeyConstraint("tenant", "id", name="pk_appt_appointments"),
)
Index("ix_appt_appointments_person", appointments.c.tenant, appointments.c.person, appointments.c.start)
Index("ix_appt_appointments_slot", appointments.c.tenant, appointments.c.slot_id)

waitlist = Table(
    "appt_waitlist", metadata,
    Column("tenant", String(256), nullable=False),
    Column("id", String(64), nullable=False),
    Column("schedule_id", String(64), nullable=False),
    Column("person", String(256), nullable=False),
    Column("day", String(10), nullable=False),           # the wanted day (ISO date, city zone)
    Column("created_at", Timestamp, nullable=False),
    Column("appointment_id", String(64), nullable=True),  # set when promoted
    PrimaryKeyConstraint("tenant", "id", name="pk_appt_waitlist"),
    UniqueConstraint("tenant", "schedule_id", "person", "day", name="uq_appt_waitlist_person"),
)

TABLES = [schedules, slots, appointments, waitlist]
