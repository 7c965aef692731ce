"""HTTP API of ops.environment (router and start-up).

    GET  /api/ops/environment/aqi?district=&standard=hj633|us-epa   stations' AQI and the district means/maxima
    GET  /api/ops/environment/water?district=                      stations' GB 3838-2002 class
    GET  /api/ops/environment/noise?district=                      stations' GB 3096-2008 exceedance
    GET  /api/ops/environment/stations/{entity id}                 one station's indices and episodes (404)
    POST /api/ops/environment/aqi/calculate                        concentrations in → IAQI/AQI out (stateless)
    POST /api/ops/environment/water/classify                       parameters in → class out (stateless)
    POST /api/ops/environment/noise/assess                         Leq in → exceedance out (stateless)

Every route needs `entity.read`; the tenant is the request's (NGSILD-Tenant / the token's).
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import Any, Literal

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import Response

from cityos.core.errors import BadRequestData
from cityos.core.responses import json_response
from cityos.hub.service import ENTITY_CHANGED
from cityos.ops.environment import aqi_cn, aqi_us, noise, water
from cityos.ops.environment.models import AqiRequest, NoiseRequest, WaterRequest
from cityos.ops.environment.service import AIR, NOISE, WATER, EnvironmentService, EnvironmentSettings
from cityos.ops.environment.worker import EnvironmentWorker
from cityos.security.api import request_tenant, require
from cityos.security.policy import Principal

router = APIRouter(prefix="/api/ops/environment", tags=["ops environment"])
routers: list[APIRouter] = [router]

READ = Depends(require("entity.read"))


def service_of(request: Request) -> EnvironmentService:
    found: EnvironmentService = request.app.state.environment
    return found




def _district_summary(stations: list[dict[str, Any]], standard: str) -> list[dict[str, Any]]:
    groups: dict[str, list[dict[str, Any]]] = {}
    for s in stations:
        if isinstance(s.get("aqi"), int) and isinstance(s.get("district"), str):
            groups.setdefault(s["district"], []).append(s)
    out = []
    for district, members in sorted(groups.items()):
        aqis = [m["aqi"] for m in members]
        mean = math.ceil(round(sum(aqis) / len(aqis), 9))
        cat = aqi_us.category(mean) if standard == "us-epa" else aqi_cn.category(mean)
        worst = max(members, key=lambda m: m["aqi"])
        out.append({"district": district, "aqi": mean, "aqiMean": mean, "aqiMax": max(aqis), "level": cat.level,
                    "category": cat.name, "color": cat.color, "stationCount": len(members),
                    "worstStation": worst["id"]})
    return out


@router.get("/aqi")
async def air(request: Request, district: str | None = None, standard: Literal["hj633", "us-epa"] = "hj633",
              principal: Principal | None = READ) -> Response:
    service = service_of(request)
    views = await service.stations(request_tenant(request, principal), AIR, district)
    stations = []
    for v in views:
        if standard == "us-epa":
            value = v.get("aqiUsEpa")
            cat_us = aqi_us.category(value) if isinstance(value, int) else None
            stations.append({"id": v["id"], "district": v["district"], "location": v["location"], "aqi": value,
                             "level": cat_us.level if cat_us else None, "category": cat_us.name if cat_us else None,
                             "color": cat_us.color if cat_us else None})
        else:
            stations.append({"id": v["id"], "district": v["district"], "location": v["location"],
                             "aqi": v.get("aqi"), "level": v.get("aqiLevel"), "category": v.get("aqiCategory"),
                             "color": v.get("aqiColor"), "primaryPollutant": v.get("primaryPollutant"),
                             "iaqi": v.get("iaqi"), "aqi24h": v.get("aqi24h"),
                             "category24h": v.get("aqi24hCategory"),
                             "primaryPollutant24h": v.get("primaryPollutant24h")})
    districts = _district_summary(stations, standard)
    return json_response({"standard": standard, "stations": stations, "districts": districts})


@router.get("/water")
async def water_quality(request: Request, district: str | None = None,
                        principal: Principal | None = READ) -> Response:
    stations = await service_of(request).stations(request_tenant(request, principal), WATER, district)
    return json_response({"standard": "GB 3838-2002", "stations": stations})


@router.get("/noise")
async def noise_levels(request: Request, district: str | None = None,
                       principal: Principal | None = READ) -> Response:
    stations = await service_of(request).stations(request_tenant(request, principal), NOISE, district)
    return json_response({"standard": "GB 3096-2008", "stations": stations})


@router.get("/stations/{entity_id:path}")
async def station(request: Request, entity_id: str, principal: Principal | None = READ) -> Response:
    return json_response(await service_of(request).station(request_tenant(request, principal), entity_id))


def _calculate_aqi(spec: AqiRequest) -> dict[str, Any]:
    c = spec.concentrations
    if spec.standard == "us-epa":
        result = aqi_us.from_metric(pm25_24h=c.pm25_24h if c.pm25_24h is not None else c.pm25,
                                    pm10_24h=c.pm10_24h if c.pm10_24h is not None else c.pm10,
                                    o3_8h=c.o3_8h, o3_1h=c.o3, co_8h=c.co_8h, so2_1h=c.so2, so2_24h=c.so2_24h,
                                    no2_1h=c.no2)
        return {"standard": "us-epa", **result.as_dict()}
    hourly = aqi_cn.hourly(so2=c.so2, no2=c.no2, co=c.co, o3=c.o3, o3_8h=c.o3_8h, pm10=c.pm10, pm25=c.pm25,
                           so2_24h=c.so2_24h)
    daily = aqi_cn.daily(so2=c.so2_24h, no2=c.no2_24h, co=c.co_24h, pm10=c.pm10_24h, pm25=c.pm25_24h,
                         o3_1h_max=c.o3_1h_max, o3_8h_max=c.o3_8h_max)
    return {"standard": "hj633", "hourly": hourly.as_dict(), "daily": daily.as_dict()}


@router.post("/aqi/calculate")
async def calculate(spec: AqiRequest, _principal: Principal | None = READ) -> Response:
    """Concentrations in µg/m³ (CO mg/m³). hj633: `hourly` from the 1-h values (so2, no2, co, o3, o3_8h, pm10,
    pm25) and `daily` from the 24-h ones (so2_24h, no2_24h, co_24h, pm10_24h, pm25_24h, o3_1h_max, o3_8h_max).
    us-epa: pm25_24h (or pm25), pm10_24h (or pm10), o3_8h, o3 (1-h), co_8h, so2 (1-h), so2_24h, no2 (1-h)."""
    given = spec.concentrations.model_dump(exclude_none=True)
    if not given:
        raise BadRequestData("give at least one concentration")
    try:
        return json_response(_calculate_aqi(spec))
    except ValueError as exc:
        raise BadRequestData(str(exc)) from exc


@router.post("/water/classify")
async def classify(spec: WaterRequest, _principal: Principal | None = READ) -> Response:
    if not spec.values:
        raise BadRequestData("give at least one parameter value")
    try:
        target = water.class_level(spec.target)
        result = water.classify(spec.values, spec.body)
    except ValueError as exc:
        raise BadRequestData(str(exc)) from exc
    return json_response({"standard": "GB 3838-2002", "body": spec.body, **result.as_dict(),
                  "target": water.class_name(target), "compliant": result.meets(target)})


@router.post("/noise/assess")
async def assess(spec: NoiseRequest, _principal: Principal | None = READ) -> Response:
    try:
        result = noise.assess(spec.zone, spec.period, spec.leq, spec.lamax)
    except ValueError as exc:
        raise BadRequestData(str(exc)) from exc
    return json_response({"standard": "GB 3096-2008", **result.as_dict()})


async def start(app: FastAPI) -> Callable[[], Awaitable[None]]:
    """Start the environment service and its worker on `app`; returns the shutdown function."""
    service = EnvironmentService(app.state.hub.service, app.state.temporal, app.state.bus,
                                 app.state.hub.resolver.core, EnvironmentSettings())
    worker = EnvironmentWorker(service)
    app.state.environment = service
    app.state.environment_worker = worker
    unsubscribe = app.state.bus.subscribe(ENTITY_CHANGED, worker.on_change, group="environment")
    worker.start()

    async def stop() -> None:
        unsubscribe()
        await worker.stop()

    return stop
