"""Waste-sorting tables.

Points live in two places: `waste_ledger` (every credit and debit, append-only, the audit of the balance) and
`waste_balances` (the running balance). A redemption is one conditional UPDATE of the balance
(`points >= cost`) and of the reward's stock (`stock > 0`) in one transaction, so concurrent redemptions of the
same points succeed at most once; a deposit is unique per (bin, scan id), so a bin that sends a scan twice
credits it once.
"""

from __future__ import annotations

from sqlalchemy import (
                        Boolean,
                        Column,
                        Float,
                        Index,
                        Integer,
                        MetaData,
                        PrimaryKeyConstraint,
                        String,
                        Table,
                        UniqueConstraint,
)

from cityos.core.sqltypes import Timestamp

metadata = MetaData()

CATEGORIES = ("recyclable", "kitchen", "hazardous", "other")  # 可回收物 厨余垃圾 有害垃圾 其他垃圾

cards = Table(
    "waste_cards", metadata,
    Column("tenant", String(256), nullable=False),
    Column("card", String(64), nullable=False),            # the QR code's value
    Column("person", String(256), nullable=False),
    Column("community", String(64), nullable=False),
    Column("active", Boolean, nullable=False),
    Column("issued_at", Timestamp, nullable=False),
    PrimaryKeyConstraint("tenant", "card", name="pk_waste_cards"),
)
Index("ix_waste_cards_person", cards.c.tenant, cards.c.person)

deposits = Table(
    "waste_deposits", metadata,
    Column("tenant", String(256), nullable=False),
    Column("id", String(64), nullable=False),
    Column("point", String(128), nullable=False),          # the bin or collection point (its device id)
    Column("scan", String(64), nullable=False),            # the bin's own id of the scan (idempotency key)
    Column("card", String(64), nullable=False),
    Column("person", String(256), nullable=False),
    Column("community", String(64), nullable=False),
    Column("category", String(16), nullable=False),
    Column("weight_kg", Float, nullable=False),
    Column("correct", Boolean, nullable=True),             # None until checked
    Column("checked_by", String(16), nullable=True),       # sensor | attendant
    Column("points", Integer, nullable=False),
    Column("at", Timestamp, nullable=False),
    PrimaryKeyConstraint("tenant", "id", name="pk_waste_deposits"),
    UniqueConstraint("tenant", "point", "scan", name="uq_waste_deposits_scan"),
)
Index("ix_waste_deposits_community", deposits.c.tenant, deposits.c.community, deposits.c.at)

balances = Table(
    "waste_balances", metadata,
    Column("tenant", String(256), nullable=False),
    Column("person", String(256), nullable=False),
    Column("points", Integer, nullable=False),
    PrimaryKeyConstraint("tenant", "person", name="pk_waste_balances"),
)

ledger = Table(
    "waste_ledger", metadata,
    Column("tenant", String(256), nullable=False),
    Column("id", String(64), nullable=False),
    Column("person", String(256), nullable=False),
    Column("delta", Integer, nullable=False),
    Column("reason", String(16), nullable=False),          # deposit | redeem
    Column("ref", String(64), nullable=False),             # the deposit or the redemption
    Column("at", Timestamp, nullable=False),
    PrimaryKeyConstraint("tenant", "id", name="pk_waste_ledger"),
)
Index("ix_waste_ledger_person", ledger.c.tenant, ledger.c.person, ledger.c.at)

rewards = Table(
    "waste_rewards", metadata,
    Column("tenant", String(256), nullable=False),
    Column("id", String(64), nullable=False),
    Column("name", String(128), nullable=False),
    Column("cost", Integer, nullable=False),
    Column("stock", Integer, nullable=False),
    PrimaryKeyConstraint("tenant", "id", name="pk_waste_rewards"),
)

TABLES = [cards, deposits, balances, ledger, rewards]
