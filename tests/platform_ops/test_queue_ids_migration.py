"""Revision 0036 on an SQLite database made before it: the queue tables keep their rows and never hand an
id out twice (a late delete by id must not hit a new row; see core/sqltypes.py)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from cityos.config import Settings
from cityos.core import migrate

QUEUES = ("bus_outbox", "iot_event_outbox", "hub_notification_outbox", "sec_audit_intents")


def table_sql(db: Path, name: str) -> str:
    with sqlite3.connect(db) as conn:
        return str(conn.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?",
                                (name,)).fetchone()[0])


def add_outbox_row(conn: sqlite3.Connection, seq: int) -> int:
    cursor = conn.execute("INSERT INTO bus_outbox (tenant, topic, payload, created_at) VALUES "
                          "('', 't', ?, '2026-12-06 08:00:00.000000')", (f'{{"seq": {seq}}}',))
    return int(cursor.lastrowid or 0)


def test_upgrade_keeps_queued_rows_and_stops_id_reuse(tmp_path: Path) -> None:
    db = tmp_path / "before.db"
    settings = Settings(database_url=f"sqlite:///{db}")
    migrate.upgrade(settings, "0035_bus_dead_letters")
    with sqlite3.connect(db) as conn:
        # As the tables were made before 0036 (they are created from today's models): no AUTOINCREMENT.
        conn.execute("DROP TABLE bus_outbox")
        conn.execute("CREATE TABLE bus_outbox (id INTEGER NOT NULL PRIMARY KEY, tenant VARCHAR(256) NOT NULL, "
                     "topic VARCHAR(64) NOT NULL, payload JSON NOT NULL, created_at DATETIME NOT NULL)")
        first, second = add_outbox_row(conn, 0), add_outbox_row(conn, 1)
        conn.execute("DELETE FROM bus_outbox WHERE id = ?", (second,))
        assert add_outbox_row(conn, 2) == second  # the reuse this revision ends
    migrate.upgrade(settings)
    for name in QUEUES:
        assert "AUTOINCREMENT" in table_sql(db, name), name
    with sqlite3.connect(db) as conn:
        assert [r[0] for r in conn.execute("SELECT payload FROM bus_outbox ORDER BY id")] == [
            '{"seq": 0}', '{"seq": 2}']  # queued rows survive the copy, ids and all
        conn.execute("DELETE FROM bus_outbox WHERE id = ?", (second,))
        assert add_outbox_row(conn, 3) > second
        assert {r[0] for r in conn.execute("SELECT id FROM bus_outbox")} >= {first}
    migrate.downgrade(settings, "0035_bus_dead_letters")
    assert "AUTOINCREMENT" not in table_sql(db, "bus_outbox")
