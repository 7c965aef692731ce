"""`Timestamp` on SQLite: a time with an offset is stored and compared as the same instant in UTC (SQLite keeps
text and would otherwise drop the offset, eight hours off for the city's +08:00)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

from sqlalchemy import Column, Integer, MetaData, Table, create_engine, select

from cityos.core.sqltypes import Timestamp

CST = timezone(timedelta(hours=8))


def test_offset_times_are_stored_and_compared_as_utc_instants(tmp_path: Path) -> None:
    metadata = MetaData()
    events = Table("events", metadata, Column("id", Integer, primary_key=True), Column("at", Timestamp))
    engine = create_engine(f"sqlite:///{tmp_path / 'times.db'}")
    metadata.create_all(engine)
    utc_time = datetime(2026, 12, 5, 17, 10, tzinfo=UTC)                 # 01:10 on the 6th in the city
    with engine.begin() as conn:
        conn.execute(events.insert(), [{"id": 1, "at": utc_time},
                                       {"id": 2, "at": datetime(2026, 12, 6, 9, 0, tzinfo=CST)}])  # 01:00 UTC
    city_midnight = datetime(2026, 12, 6, 0, 0, tzinfo=CST)              # 16:00 UTC on the 5th
    with engine.connect() as conn:
        since = [r.id for r in conn.execute(select(events.c.id).where(events.c.at >= city_midnight)
                                            .order_by(events.c.id))]
        stored = {r.id: r.at for r in conn.execute(select(events.c.id, events.c.at))}
    assert since == [1, 2]  # both fall after the city's midnight
    assert stored[2].replace(tzinfo=UTC) == datetime(2026, 12, 6, 1, 0, tzinfo=UTC)  # the instant, in UTC
