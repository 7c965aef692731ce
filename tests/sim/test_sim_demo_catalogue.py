"""The demo's data resource catalogue (一池汇聚): what the simulated city really produces, harvested, gives
at least 300 catalogued datasets and at least 100 open ones, and every one of them has data (no empty
shells). Runs `cityos demo` briefly on the session's database (SQLite and PostgreSQL)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from rich.console import Console
from sqlalchemy import func, select

from cityos.app import create_app
from cityos.config import Settings
from cityos.data.models import rows, versions
from cityos.sim.demo import DemoOptions, demo
from cityos.sim.faults import FaultConfig
from cityos.sim.platform import free_port
from cityos.sim.runner import SimOptions

pytestmark = pytest.mark.slow


async def test_the_demo_ships_a_full_catalogue(database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CITYOS_DATABASE_URL", database_url)
    monkeypatch.setenv("CITYOS_MQTT_URL", "mqtt://127.0.0.1:1")
    monkeypatch.setenv("CITYOS_INGEST_WORKERS", "0")
    monkeypatch.setenv("CITYOS_COAP_PORT", str(free_port(0, udp=True)))
    monkeypatch.setenv("CITYOS_COAP_HOST", "127.0.0.1")
    monkeypatch.setenv("CITYOS_DEMO_RESIDENTS", "100")
    monkeypatch.setenv("CITYOS_DEMO_COMPANIES", "10")
    monkeypatch.setenv("CITYOS_DEMO_POPULATION_DELAY", "0")
    # The test harvests when the demo has stopped; the schedule stays out of the way.
    monkeypatch.setenv("CITYOS_DATA_HARVEST_INTERVAL_SECONDS", "0")
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=20)
    # Fewer devices than the demo's 2000, enough for every profile in every district.
    options = SimOptions(devices=400, speed=300, seed=42, scenario="demo", start=start, max_per_message=20,
                         faults=FaultConfig.none())
    api = free_port(0)
    code = await demo(options, DemoOptions(port=api, mqtt_port=free_port(0, taken={api}), duration=10.0),
                      Console(quiet=True))
    assert code == 0

    app = create_app(Settings(database_url=database_url))
    async with app.router.lifespan_context(app):
        harvested = await app.state.data.catalogue.harvest("")
        everything = await app.state.data.catalogue.all("")
        assert harvested["datasets"] == len(everything) >= 300, harvested["datasets"]
        open_ones = [d for d in everything if d["open_type"] != "none"]
        assert len(open_ones) >= 100
        assert {d["source_kind"] for d in everything} == {"entities", "readings", "index"}
        # Each has data: its newest version (or its reading history) has rows, as many as it says.
        async with app.state.engine.connect() as conn:
            stored: dict[str, int] = {}
            for ds in everything:
                version = 0 if ds["source_kind"] == "readings" else (await conn.execute(
                    select(func.max(versions.c.version)).where(versions.c.tenant == "",
                                                               versions.c.dataset == ds["id"]))).scalar()
                stored[ds["id"]] = int((await conn.execute(select(func.count()).select_from(rows).where(
                    rows.c.tenant == "", rows.c.dataset == ds["id"], rows.c.version == version))).scalar_one())
        empty = sorted(code for code, n in stored.items() if n == 0)
        assert not empty, f"datasets without data: {empty[:10]}"
        assert all(stored[d["id"]] == d["row_count"] for d in everything)
        # The open ones are read through the CKAN API by anyone: a sample of each kind answers rows.
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://cityos.test") as http:
            listed = (await http.get("/api/3/action/package_search", params={"rows": 0})).json()["result"]
            assert listed["count"] >= 100
            kinds: dict[str, Any] = {}
            for ds in open_ones:
                if ds["open_type"] == "unconditional":
                    kinds.setdefault(ds["source_kind"], ds)
            for ds in kinds.values():
                found = (await http.get("/api/3/action/datastore_search",
                                        params={"resource_id": ds["id"], "limit": 1})).json()
                assert found["success"] and found["result"]["total"] > 0, ds["id"]
