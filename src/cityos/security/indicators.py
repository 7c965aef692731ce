"""Security indicators over the security domain's tables (see cityos.core.indicators)."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from cityos.core.indicators import IndicatorSource, Measure, Period, share
from cityos.security.models import login_failures, users
from cityos.security.policy import STAFF_ROLES


async def staff_mfa_coverage(conn: AsyncConnection, period: Period) -> Measure | None:
    """Share of staff accounts with a second factor enrolled."""
    rows = (await conn.execute(select(users.c.totp_enabled, func.count()).where(
        users.c.tenant == period.tenant, users.c.role.in_(sorted(STAFF_ROLES))).group_by(users.c.totp_enabled))).all()
    total = sum(n for _, n in rows)
    if not total:
        return None
    return Measure(share(sum(n for enabled, n in rows if enabled), total), total)


async def failed_logins(conn: AsyncConnection, period: Period) -> Measure | None:
    """Failed logins in the period (a spike is an attack or a usability problem)."""
    count = (await conn.execute(select(func.count()).select_from(login_failures).where(
        login_failures.c.at >= period.start, login_failures.c.at < period.end))).scalar_one()
    return Measure(float(count), int(count))


SOURCES: dict[str, IndicatorSource] = {
    "security.staff_mfa_coverage": staff_mfa_coverage,
    "security.failed_logins": failed_logins,
}
