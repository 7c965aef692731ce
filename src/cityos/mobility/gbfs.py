"""GBFS v2.3 (shared bikes): fetch a system's feeds and check them.

`read_system(url)` follows the auto-discovery file (gbfs.json) to `station_information`,
`station_status` and, when offered, `free_bike_status`, and returns the stations with their live counts.
Anything malformed (not JSON, a required field missing or of the wrong type, a position off the
globe, negative counts) raises `GbfsError` naming the file and the field; a station in the status
feed that the information feed does not know is skipped and counted.

Outbound requests go through the platform's guarded client (`cityos.core.outbound`): http(s) only,
public addresses unless CITYOS_OUTBOUND_ALLOW lists the target, every redirect checked, bounded in
size and time. A refused URL is the caller's mistake (400); a feed that cannot be fetched is the
upstream's (502), with the cause in the server log only.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin

import orjson

from cityos.core.errors import BadRequestData, ProblemError
from cityos.core.outbound import Outbound, OutboundError, OutboundRefused

log = logging.getLogger(__name__)

MAX_BYTES = 5 * 1024 * 1024
TIMEOUT_S = 10.0


class GbfsError(ProblemError):
    """The bike-share system's feed could not be read or is invalid (502: the fault is upstream)."""

    status, error_type, title = 502, "https://cityos.example/errors/UpstreamFeedInvalid", "GBFS feed invalid"


async def fetch_json(outbound: Outbound, url: str, what: str) -> dict[str, Any]:
    try:
        await outbound.check_url(url)
        response = await outbound.get(url, headers={"Accept": "application/json"}, timeout=TIMEOUT_S,
                                      max_bytes=MAX_BYTES)
    except OutboundRefused as exc:
        raise BadRequestData(f"{what}: {exc.reason}") from exc
    except OutboundError as exc:
        log.warning("GBFS %s at %s: %s", what, url, exc.reason)
        raise GbfsError(f"{what}: could not fetch {url}") from exc
    if response.status != 200:
        raise GbfsError(f"{what}: HTTP {response.status} from {url}")
    try:
        body = orjson.loads(response.content)
    except orjson.JSONDecodeError as exc:
        raise GbfsError(f"{what} is not JSON") from exc
    if not isinstance(body, dict) or not isinstance(body.get("data"), dict):
        raise GbfsError(f"{what}: the document has no 'data' object")
    return body


@dataclass
class Station:
    station_id: str
    name: str
    lat: float
    lon: float
    capacity: int | None
    bikes: int = 0
    docks: int | None = None
    is_renting: bool = False
    is_returning: bool = False
    last_reported: int | None = None
    reported: bool = False


@dataclass
class System:
    name: str | None
    ttl: int
    stations: list[Station]
    free_bikes: int
    skipped: list[str] = field(default_factory=list)


def _field(item: dict[str, Any], name: str, kinds: tuple[type, ...], what: str, required: bool = True) -> Any:
    value = item.get(name)
    if value is None:
        if required:
            raise GbfsError(f"{what}: '{name}' is missing")
        return None
    if isinstance(value, bool) and bool not in kinds:
        raise GbfsError(f"{what}: '{name}' has the wrong type")
    if not isinstance(value, kinds):
        raise GbfsError(f"{what}: '{name}' has the wrong type")
    return value


def _flag(value: Any) -> bool:
    return value is True or value == 1


def parse_information(body: dict[str, Any]) -> list[Station]:
    stations = body["data"].get("stations")
    if not isinstance(stations, list):
        raise GbfsError("station_information: 'data.stations' must be a list")
    out: dict[str, Station] = {}
    for i, item in enumerate(stations):
        what = f"station_information station #{i}"
        if not isinstance(item, dict):
            raise GbfsError(f"{what} is not an object")
        sid = str(_field(item, "station_id", (str, int), what))
        lat = float(_field(item, "lat", (int, float), what))
        lon = float(_field(item, "lon", (int, float), what))
        if not (-90 <= lat <= 90 and -180 <= lon <= 180):
            raise GbfsError(f"{what}: position {lat},{lon} is not on Earth")
        capacity = _field(item, "capacity", (int,), what, required=False)
        if capacity is not None and capacity < 0:
            raise GbfsError(f"{what}: 'capacity' is negative")
        name = _field(item, "name", (str,), what)
        if sid in out:
            raise GbfsError(f"{what}: station_id {sid} appears twice")
        out[sid] = Station(sid, name[:256], lat, lon, capacity)
    return list(out.values())


def apply_status(stations: list[Station], body: dict[str, Any]) -> list[str]:
    items = body["data"].get("stations")
    if not isinstance(items, list):
        raise GbfsError("station_status: 'data.stations' must be a list")
    by_id = {s.station_id: s for s in stations}
    skipped = []
    for i, item in enumerate(items):
        what = f"station_status station #{i}"
        if not isinstance(item, dict):
            raise GbfsError(f"{what} is not an object")
        sid = str(_field(item, "station_id", (str, int), what))
        bikes = _field(item, "num_bikes_available", (int,), what)
        docks = _field(item, "num_docks_available", (int,), what, required=False)
        if bikes < 0 or (docks is not None and docks < 0):
            raise GbfsError(f"{what}: negative bike or dock count")
        station = by_id.get(sid)
        if station is None:
            skipped.append(sid)
            continue
        station.bikes, station.docks = bikes, docks
        station.is_renting = _flag(_field(item, "is_renting", (bool, int), what))
        station.is_returning = _flag(_field(item, "is_returning", (bool, int), what))
        reported = _field(item, "last_reported", (int,), what, required=False)
        station.last_reported = reported
        station.reported = True
    return skipped


def count_free_bikes(body: dict[str, Any]) -> int:
    bikes = body["data"].get("bikes")
    if not isinstance(bikes, list):
        raise GbfsError("free_bike_status: 'data.bikes' must be a list")
    free = 0
    for i, item in enumerate(bikes):
        what = f"free_bike_status bike #{i}"
        if not isinstance(item, dict):
            raise GbfsError(f"{what} is not an object")
        _field(item, "bike_id", (str,), what)
        if not _flag(item.get("is_reserved")) and not _flag(item.get("is_disabled")):
            free += 1
    return free


def discover(body: dict[str, Any], base: str) -> dict[str, str]:
    """Feed name → URL from gbfs.json (the first language offered, English preferred)."""
    data = body["data"]
    languages = [data["en"]] if isinstance(data.get("en"), dict) else [v for v in data.values() if isinstance(v, dict)]
    if not languages or not isinstance(languages[0].get("feeds"), list):
        raise GbfsError("gbfs.json: 'data.<language>.feeds' is missing")
    feeds = {}
    for item in languages[0]["feeds"]:
        if isinstance(item, dict) and isinstance(item.get("name"), str) and isinstance(item.get("url"), str):
            feeds[item["name"]] = urljoin(base, item["url"])
    return feeds


async def read_system(url: str, http: Outbound) -> System:
    root = await fetch_json(http, url, "gbfs.json")
    feeds = discover(root, url)
    for required in ("station_information", "station_status"):
        if required not in feeds:
            raise GbfsError(f"gbfs.json lists no {required} feed")
    stations = parse_information(await fetch_json(http, feeds["station_information"], "station_information"))
    skipped = apply_status(stations, await fetch_json(http, feeds["station_status"], "station_status"))
    free = 0
    if "free_bike_status" in feeds:
        free = count_free_bikes(await fetch_json(http, feeds["free_bike_status"], "free_bike_status"))
    name = None
    if "system_information" in feeds:
        info = await fetch_json(http, feeds["system_information"], "system_information")
        name = info["data"].get("name") if isinstance(info["data"].get("name"), str) else None
    raw_ttl = root.get("ttl")
    ttl = int(raw_ttl) if isinstance(raw_ttl, int) and not isinstance(raw_ttl, bool) and raw_ttl >= 0 else 60
    return System(name, ttl, stations, free, skipped)
