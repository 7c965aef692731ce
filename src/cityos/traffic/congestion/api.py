"""HTTP API of the congestion index (拥堵指数), under `/api/traffic/congestion`.

    GET  /                                  city, district and segment TPI with levels (congestion.read, public)
    GET  /history?scope=city|district|segment&key=
    POST /segments                          {id?, name, district, roadClass, lengthM, location?: LineString}
                                            (congestion.manage); published as a `RoadSegment` entity
    POST /segments/grid                     {seed?}: the simulated city's road grid as segments with geometry
                                            (congestion.manage)
    GET  /forecast?segment=|district=       the index, level and speed now and in 15 minutes, with the model
                                            version (congestion.forecast, public); the city without either
    POST /forecast/train                    {days?}: retrain now (congestion.train); also hourly on its own;
                                            the version is stored (JSON parameters) and every worker uses it
    GET  /diversions?segment=               routes around a segment forecast at 中度拥堵 or worse
                                            (congestion.forecast)
    POST /readings                          {"readings": [{segmentId, speedKmh, flowVph?, observedAt?}]}
                                            (congestion.report: detectors' gateway or the traffic department)
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.responses import Response

from cityos.core.db import write_lock_of
from cityos.core.errors import BadRequestData
from cityos.core.responses import json_response, read_json_object
from cityos.core.tasks import periodic
from cityos.security.api import request_tenant, require
from cityos.security.policy import Principal
from cityos.sim.city import shown_city_seed
from cityos.traffic.congestion.forecasting import RETRAIN_SECONDS, ForecastService
from cityos.traffic.congestion.service import CongestionService

router = APIRouter(prefix="/api/traffic/congestion", tags=["congestion"])
routers: list[APIRouter] = [router]


def congestion_of(request: Request) -> CongestionService:
    service: CongestionService = request.app.state.congestion
    return service


@router.get("")
async def overview(request: Request, principal: Principal | None = Depends(require("congestion.read"))) -> Response:
    return json_response(await congestion_of(request).overview(principal, request_tenant(request, principal)))


@router.get("/history")
async def history(request: Request, scope: str = Query("city", max_length=16), key: str = Query("", max_length=128),
                  limit: int = Query(288, ge=1, le=5000),
                  principal: Principal | None = Depends(require("congestion.read"))) -> Response:
    return json_response(await congestion_of(request).history(principal, request_tenant(request, principal),
                                                              scope, key, limit))


@router.post("/segments", status_code=201)
async def add_segment(request: Request,
                      principal: Principal | None = Depends(require("congestion.manage"))) -> Response:
    body = await read_json_object(request)
    return json_response(await congestion_of(request).add_segment(principal, request_tenant(request, principal),
                                                                  body), 201)


@router.post("/segments/grid", status_code=201)
async def add_grid(request: Request, principal: Principal | None = Depends(require("congestion.manage"))) -> Response:
    body = await read_json_object(request) if await request.body() else {}
    seed = body.get("seed", shown_city_seed())
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= 2**31:
        raise BadRequestData("seed must be a non-negative integer")
    return json_response(await congestion_of(request).register_grid(principal, request_tenant(request, principal),
                                                                    seed), 201)


def forecasts_of(request: Request) -> ForecastService:
    service: ForecastService = request.app.state.congestion_forecast
    return service


@router.get("/forecast")
async def forecast(request: Request, segment: str = Query("", max_length=64),
                   district: str = Query("", max_length=128),
                   principal: Principal | None = Depends(require("congestion.forecast"))) -> Response:
    return json_response(await forecasts_of(request).forecast(principal, request_tenant(request, principal),
                                                              segment.strip() or None, district.strip() or None))


@router.post("/forecast/train")
async def retrain(request: Request, principal: Principal | None = Depends(require("congestion.train"))) -> Response:
    body = await read_json_object(request) if await request.body() else {}
    return json_response(await forecasts_of(request).retrain(principal, request_tenant(request, principal),
                                                             body.get("days", 14)))


@router.get("/diversions")
async def diversions(request: Request, segment: str = Query(..., min_length=1, max_length=64),
                     principal: Principal | None = Depends(require("congestion.forecast"))) -> Response:
    return json_response(await forecasts_of(request).diversion(principal, request_tenant(request, principal),
                                                               segment.strip()))


@router.post("/readings")
async def report(request: Request, principal: Principal | None = Depends(require("congestion.report"))) -> Response:
    body = await read_json_object(request)
    return json_response(await congestion_of(request).report(principal, request_tenant(request, principal), body))


async def start(app: FastAPI) -> Callable[[], Awaitable[None]]:
    hub = getattr(app.state, "hub", None)
    app.state.congestion = CongestionService(app.state.engine, write_lock_of(app),
                                             hub.service if hub is not None else None,
                                             hub.resolver.core if hub is not None else None)
    forecasts = ForecastService(app.state.engine, shown_city_seed(), write_lock_of(app),
                                *((hub.resolver.core.expand,) if hub is not None else ()))
    app.state.congestion_forecast = forecasts
    stop_training = periodic("congestion forecast training", forecasts.retrain_all, RETRAIN_SECONDS, first=60.0)

    async def stop() -> None:
        await stop_training()

    return stop
