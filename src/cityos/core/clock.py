"""An injectable clock: deadlines, SLAs and history are tested by moving time, not by sleeping."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

_now: Callable[[], datetime] = lambda: datetime.now(UTC)  # noqa: E731


def now() -> datetime:
    return _now()


def set_clock(fn: Callable[[], datetime]) -> None:
    global _now
    _now = fn


def reset_clock() -> None:
    set_clock(lambda: datetime.now(UTC))


def iso(dt: datetime) -> str:
    """NGSI-LD DateTime: UTC with millisecond precision and a Z suffix."""
    # isoformat is C all the way (strftime was most of an ingested reading's cost); it ends in "+00:00"
    return dt.astimezone(UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


def as_utc(value: datetime) -> datetime:
    """Drivers hand timestamps back aware (asyncpg) or naive (SQLite); every stored timestamp is UTC."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def as_utc_or_none(value: datetime | None) -> datetime | None:
    return None if value is None else as_utc(value)


def parse_iso(value: str) -> datetime:
    """Parse an ISO 8601 DateTime; raises ValueError on anything else."""
    if not isinstance(value, str) or len(value) < 10 or len(value) > 40:
        raise ValueError("not an ISO 8601 DateTime")
    text = value[:-1] + "+00:00" if value.endswith(("Z", "z")) else value
    return as_utc(datetime.fromisoformat(text)).astimezone(UTC)

