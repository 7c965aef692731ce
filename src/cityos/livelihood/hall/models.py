"""Service-hall tables: service groups, windows (with the groups they can serve) and tickets.

A ticket's number is unique per hall, group and (city) day; calling the next ticket is a conditional
UPDATE of a waiting ticket, so two windows calling at once never get the same ticket.
"""

from __future__ import annotations

from sqlalchemy import Boolean, Column, Index, Integer, MetaData, PrimaryKeyConstraint, String, Table, UniqueConstraint

from cityos.core.sqltypes import JsonDoc, Timestamp

metadata = MetaData()

CHANNELS = ("online", "kiosk", "desk")
WAITING, CALLED, SERVING, DONE, NO_SHOW = "waiting", "called", "serving", "done", "noshow"

groups = Table(
    "hall_groups", metadata,
    Column("tenant", String(256), nullable=False),
    Column("hall", String(64), nullable=False),
    Column("code", String(8), nullable=False),            # the ticket prefix: A, B, …
    Column("name", String(128), nullable=False),          # 户籍业务, 社保医保, 不动产登记, 企业开办
    Column("department", String(128), nullable=True),
    PrimaryKeyConstraint("tenant", "hall", "code", name="pk_hall_groups"),
)

windows = Table(
    "hall_windows", metadata,
    Column("tenant", String(256), nullable=False),
    Column("hall", String(64), nullable=False),
    Column("number", Integer, nullable=False),            # 窗口号
    Column("skills", JsonDoc, nullable=False),            # the group codes it serves
    Column("open", Boolean, nullable=False),
    Column("staff", String(256), nullable=True),          # who opened it (a staff principal's id)
    Column("department", String(128), nullable=True),
    PrimaryKeyConstraint("tenant", "hall", "number", name="pk_hall_windows"),
)

tickets = Table(
    "hall_tickets", metadata,
    Column("tenant", String(256), nullable=False),
    Column("id", String(64), nullable=False),
    Column("hall", String(64), nullable=False),
    Column("group_code", String(8), nullable=False),      # the group it was issued for (its number's prefix)
    Column("queue", String(8), nullable=False),           # the group whose queue it is in now (after transfers)
    Column("day", String(10), nullable=False),            # the city day it was taken on
    Column("seq", Integer, nullable=False),
    Column("number", String(16), nullable=False),         # A023
    Column("channel", String(8), nullable=False),
    Column("person", String(256), nullable=True),         # online tickets: the citizen (personal)
    Column("status", String(16), nullable=False),
    Column("window", Integer, nullable=True),
    Column("taken_at", Timestamp, nullable=False),
    Column("called_at", Timestamp, nullable=True),
    Column("started_at", Timestamp, nullable=True),
    Column("finished_at", Timestamp, nullable=True),
    Column("transfers", Integer, nullable=False),
    PrimaryKeyConstraint("tenant", "id", name="pk_hall_tickets"),
    UniqueConstraint("tenant", "hall", "day", "group_code", "seq", name="uq_hall_tickets_number"),
)
Index("ix_hall_tickets_queue", tickets.c.tenant, tickets.c.hall, tickets.c.queue, tickets.c.status, tickets.c.taken_at)

TABLES = [groups, windows, tickets]
