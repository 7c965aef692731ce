"""HTTP API of ops.open311 (router and start-up)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import APIRouter, FastAPI

routers: list[APIRouter] = []


async def start(app: FastAPI) -> Callable[[], Awaitable[None]]:
    """Start this domain's services and background work on `app`; returns the shutdown function."""

    async def stop() -> None:
        return None

    return stop
