"""A value the database refuses (past its integer range, NUL in text) is the caller's bad input: a 400
ProblemDetails, never a 500. PostgreSQL refuses such values where SQLite stores them, so this runs on
PostgreSQL (on SQLite there is no database refusal to map)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text

from cityos.app import install_error_handlers
from cityos.config import Settings
from cityos.core.db import create_engine


@pytest.fixture
async def refusing_app(database_url: str) -> AsyncIterator[FastAPI]:
    if not database_url.startswith("postgresql"):
        pytest.skip("SQLite stores what PostgreSQL refuses")
    engine = create_engine(Settings(database_url=database_url))
    application = FastAPI()
    install_error_handlers(application)

    @application.get("/store/{number}")
    async def store(number: int) -> dict[str, int]:
        async with engine.connect() as conn:
            value = (await conn.execute(text("SELECT CAST(:n AS smallint)"), {"n": number})).scalar_one()
        return {"stored": int(value)}

    @application.get("/text")
    async def store_text(value: str) -> dict[str, str]:
        async with engine.connect() as conn:
            echoed = (await conn.execute(text("SELECT CAST(:v AS text)"), {"v": value})).scalar_one()
        return {"stored": str(echoed)}

    yield application
    await engine.dispose()


async def test_out_of_range_and_nul_values_are_a_400(refusing_app: FastAPI) -> None:
    transport = httpx.ASGITransport(app=refusing_app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        assert (await http.get("/store/12")).json() == {"stored": 12}
        for reply in (await http.get("/store/99999999"), await http.get("/text", params={"value": "a\x00b"})):
            assert reply.status_code == 400, reply.text
            assert reply.headers["content-type"].startswith("application/problem+json") or \
                reply.headers["content-type"].startswith("application/json")
            assert "cannot be stored" in reply.json()["detail"]
