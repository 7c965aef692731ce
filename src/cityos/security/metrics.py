"""Security figures for `/metrics`: login failures of the last hour, locked accounts, blocked addresses."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from cityos.core.metrics import Family, MetricProbe, Sample
from cityos.security.models import ip_blocks, login_failures, users


async def _read(conn: AsyncConnection) -> list[Sample]:
    now = datetime.now(UTC)
    failures = (await conn.execute(select(func.count()).select_from(login_failures)
                                   .where(login_failures.c.at >= now - timedelta(hours=1)))).scalar_one()
    locked = (await conn.execute(select(func.count()).select_from(users)
                                 .where(users.c.locked_until > now))).scalar_one()
    blocked = (await conn.execute(select(func.count()).select_from(ip_blocks)
                                  .where(ip_blocks.c.blocked_until > now))).scalar_one()
    return [Sample("cityos_login_failures_last_hour", float(failures)),
            Sample("cityos_accounts_locked", float(locked)), Sample("cityos_ip_blocked", float(blocked))]


SECURITY_PROBE = MetricProbe((Family("cityos_login_failures_last_hour", "Failed logins in the last hour"),
                              Family("cityos_accounts_locked", "Accounts locked after failed logins"),
                              Family("cityos_ip_blocked", "Source addresses blocked after failed logins")), _read)
