"""Fixtures for the e-licence, rating and notification tests: completed applications are
simulated by publishing ``services.application.changed`` on the app's bus, as the services core
does; e-mail goes to a real SMTP server (aiosmtpd) on a free local port."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest

from cityos.core import clock
from smtp_mailbox import Mailbox, free_port, running_mailbox


@pytest.fixture
def closed_port() -> int:
    """A local port nothing listens on."""
    return free_port()


@pytest.fixture
def smtp_server() -> Iterator[tuple[Mailbox, int]]:
    with running_mailbox() as server:
        yield server


@pytest.fixture
def frozen_clock() -> Iterator[Callable[[Any], None]]:
    """Set the injectable clock to a given aware datetime for the rest of the test."""

    def set_to(when: Any) -> None:
        clock.set_clock(lambda: when)

    yield set_to
    clock.reset_clock()


Complete = Callable[..., Awaitable[dict[str, Any]]]


@pytest.fixture
async def complete(app: Any, client: Any) -> AsyncIterator[Complete]:
    """Publish an application status change the way the services core does; returns the application."""

    async def publish(applicant: str = "u1", *, status: str = "completed", department: str = "dept-civil",
                      service_code: str = "svc-birth", tenant: str = "", application_id: str | None = None,
                      **extra: Any) -> dict[str, Any]:
        application = {"id": application_id or f"app-{uuid.uuid4().hex[:12]}", "serviceCode": service_code,
                       "department": department, "applicant": applicant, "status": status,
                       "completedAt": clock.iso(clock.now()) if status == "completed" else None, **extra}
        await app.state.bus.publish("services.application.changed", {"tenant": tenant, "application": application})
        return application

    yield publish
