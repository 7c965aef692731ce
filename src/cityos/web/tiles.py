"""The cockpit's base map: vector tiles of the simulated city, built once and served offline.

`ensure_basemap()` builds a PMTiles archive (the `pmtiles` writer, tiles encoded by `cityos.web.mvt`)
from the city model (`cityos.sim.basemap`) into `<CITYOS_DATA_DIR>/map/` the first time it is needed
(the web UI starts it in the background at server start, the demo before its first page) and reuses
it afterwards: the file's name carries the city seed and the tile format version.

Routes (action `map.read`, public: the base map is geography, no personal data):

    GET /tiles/city/{z}/{x}/{y}.pbf   one Mapbox vector tile; 204 inside the pyramid where the city has
                                      nothing, 404 ProblemDetails outside it
    GET /tiles/city.json              TileJSON 3.0 of the archive (bounds, zooms, layers)
    GET /tiles/city.pmtiles           the archive itself, with HTTP range requests (PMTiles clients)
    GET /vendor/maplibre/…            MapLibre GL JS and its CSS, from the `maplibre` wheel (no CDN)

A deployment points the cockpit at its own base map with one setting: CITYOS_MAP_TILES_URL, an XYZ
raster template such as the city's 天地图 WMTS ("…&TILEMATRIX={z}&TILEROW={y}&TILECOL={x}&tk=…") or an
internal tile server; or CITYOS_MAP_STYLE_URL, a complete MapLibre style. Either replaces the built-in tiles.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import shapely
from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse, Response
from shapely.geometry.base import BaseGeometry

from cityos.core.errors import ResourceNotFound
from cityos.security.api import require

log = logging.getLogger("cityos.web")

FORMAT_VERSION = 3  # bump when the layers or their properties change: a new file name, a fresh build
MIN_ZOOM, MAX_ZOOM = 8, 15  # MapLibre over-zooms vector tiles past the archive's max zoom
MAX_REQUEST_ZOOM = 24
TILE_BUFFER = 64 / 4096  # features reach this far past a tile's edge, so strokes join without seams
# The zoom from which each layer is put in the tiles: detail is left out where it would be a smudge.
# MapLibre draws 512-pixel tiles: at its zoom 11 the city is shown from these tiles of zoom 11.
LAYER_MIN_ZOOM = {"land": 0, "water": 0, "coastline": 0, "district": 0, "river": 0, "road": 8, "park": 10,
                  "building": 11, "poi": 12}
MEDIA_TYPE = "application/vnd.mapbox-vector-tile"

router = APIRouter(tags=["map"])


# ------------------------------------------------------------------------------------ settings


def city_seed() -> int:
    """The seed of the city the base map shows: CITYOS_MAP_SEED (the demo sets its own --seed), else 42."""
    from cityos.sim.city import shown_city_seed  # the city model loads only when asked

    return shown_city_seed()


def map_source() -> dict[str, str]:
    """What the cockpit draws under its layers: the built-in tiles, a raster template or a whole style."""
    style = os.environ.get("CITYOS_MAP_STYLE_URL", "").strip()
    if style:
        return {"mode": "style", "url": style}
    tiles = os.environ.get("CITYOS_MAP_TILES_URL", "").strip()
    if tiles:
        return {"mode": "raster", "url": tiles,
                "attribution": os.environ.get("CITYOS_MAP_ATTRIBUTION", "").strip()}
    return {"mode": "builtin", "url": "/tiles/city/{z}/{x}/{y}.pbf"}


def basemap_path(seed: int | None = None) -> Path:
    from cityos.security.settings import default_data_dir

    return default_data_dir() / "map" / f"city-{city_seed() if seed is None else seed}-v{FORMAT_VERSION}.pmtiles"


# ------------------------------------------------------------------------------------ building


def _world(geometry: BaseGeometry) -> BaseGeometry:
    """lon/lat → Web Mercator in world units (0..1 both ways, y down), the tile pyramid's own space."""

    def project(coords: Any) -> Any:
        import numpy as np

        lon, lat = coords[:, 0], np.clip(coords[:, 1], -85.05, 85.05)
        x = (lon + 180.0) / 360.0
        y = (1.0 - np.arcsinh(np.tan(np.radians(lat))) / math.pi) / 2.0
        return np.column_stack([x, y])

    return shapely.transform(geometry, project)


def _tile_range(bounds: tuple[float, float, float, float], z: int) -> tuple[range, range]:
    minx, miny, maxx, maxy = bounds
    n = 2 ** z
    return (range(max(0, int(minx * n)), min(n - 1, int(maxx * n)) + 1),
            range(max(0, int(miny * n)), min(n - 1, int(maxy * n)) + 1))


def build_basemap(path: Path, seed: int) -> dict[str, Any]:
    """Write the city's PMTiles archive to `path` (atomically); returns figures of the build."""
    from pmtiles.tile import Compression, TileType, zxy_to_tileid
    from pmtiles.writer import Writer

    from cityos.sim.basemap import LAYERS, basemap_features
    from cityos.sim.city import build_city
    from cityos.web.mvt import EXTENT, encode_tile

    started = time.monotonic()
    city = build_city(seed)
    features = basemap_features(city)
    world = [_world(f.geometry) for f in features]
    tree = shapely.STRtree(world)
    frame = shapely.union_all([g.envelope for g in world]).bounds
    simplified: dict[tuple[int, int], BaseGeometry] = {}
    tiles: list[tuple[int, bytes]] = []
    for z in range(MIN_ZOOM, MAX_ZOOM + 1):
        n = 2 ** z
        tolerance = 0.5 / (n * EXTENT)  # half a tile pixel: invisible, and far fewer vertices
        xs, ys = _tile_range(frame, z)
        for x in xs:
            for y in ys:
                pad = TILE_BUFFER / n
                rect = (x / n - pad, y / n - pad, (x + 1) / n + pad, (y + 1) / n + pad)
                layers: dict[str, list[tuple[BaseGeometry, dict[str, Any]]]] = {name: [] for name in LAYERS}
                for index in sorted(int(i) for i in tree.query(shapely.box(*rect))):
                    feature = features[index]
                    if z < LAYER_MIN_ZOOM.get(feature.layer, 0):
                        continue
                    key = (index, z)
                    if key not in simplified:
                        simplified[key] = shapely.simplify(world[index], tolerance, preserve_topology=True)
                    clipped = shapely.clip_by_rect(simplified[key], *rect)
                    if clipped.is_empty:
                        continue
                    local = shapely.transform(clipped, lambda c, x=x, y=y, n=n: (c * n - (x, y)) * EXTENT)
                    layers[feature.layer].append((local, feature.properties))
                data = encode_tile(layers)
                if data:
                    tiles.append((zxy_to_tileid(z, x, y), data))
    tiles.sort()
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.part")
    minx, miny, maxx, maxy = city.bbox
    with partial.open("wb") as handle:
        writer = Writer(handle)
        for tile_id, data in tiles:
            writer.write_tile(tile_id, data)
        writer.finalize({
            "tile_type": TileType.MVT, "tile_compression": Compression.NONE,
            "min_zoom": MIN_ZOOM, "max_zoom": MAX_ZOOM,
            "min_lon_e7": int(minx * 1e7), "min_lat_e7": int(miny * 1e7),
            "max_lon_e7": int(maxx * 1e7), "max_lat_e7": int(maxy * 1e7),
            "center_zoom": 12, "center_lon_e7": int((minx + maxx) / 2 * 1e7),
            "center_lat_e7": int((miny + maxy) / 2 * 1e7),
        }, {"name": f"CityOS simulated city (seed {seed})", "attribution": "CityOS 模拟城市 simulated city",
            "vector_layers": [{"id": name, "fields": {}} for name in LAYERS]})
    partial.replace(path)
    figures = {"tiles": len(tiles), "bytes": path.stat().st_size, "seconds": round(time.monotonic() - started, 2)}
    log.info("base map built: %s (%s)", path, figures)
    return figures


_build_lock = threading.Lock()


def ensure_basemap(seed: int | None = None) -> Path:
    """The archive's path, built first when it is missing (one build at a time per process)."""
    path = basemap_path(seed)
    if path.exists():
        return path
    with _build_lock:
        if not path.exists():
            build_basemap(path, city_seed() if seed is None else seed)
    return path


# ------------------------------------------------------------------------------------ serving


class _Archive:
    """The open archive: a PMTiles reader over the file's bytes (a few MB), reopened when the file changes."""

    def __init__(self) -> None:
        self.path: Path | None = None
        self.mtime = 0.0
        self.reader: Any = None
        self.header: dict[str, Any] = {}

    def get(self, path: Path) -> Any:
        mtime = path.stat().st_mtime
        if self.reader is None or self.path != path or self.mtime != mtime:
            from pmtiles.reader import MemorySource, Reader

            reader = Reader(MemorySource(path.read_bytes()))
            self.header = dict(reader.header())
            self.reader, self.path, self.mtime = reader, path, mtime
        return self.reader


_archive = _Archive()


_build_task: asyncio.Future[Path] | None = None


def _exists(path: Path) -> bool:
    return path.exists()  # one stat of a local file: not worth a thread


async def build_in_background(delay: float = 0.0) -> Path:
    """Build the archive in a child process at low priority: the build is seconds of CPU-bound Python,
    which in a thread would hold the GIL against the server's event loop. One build at a time."""
    global _build_task
    path = basemap_path()
    if path.exists():
        return path
    if _build_task is None or _build_task.done():
        _build_task = asyncio.ensure_future(_build_child(path, delay))
    return await asyncio.shield(_build_task)


async def _build_child(path: Path, delay: float) -> Path:
    import sys

    if delay:
        await asyncio.sleep(delay)
    if _exists(path):
        return path
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cityos.web.tiles", str(city_seed()), str(path),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    _, err = await child.communicate()
    if child.returncode != 0 or not _exists(path):
        raise RuntimeError(f"building the base map failed: {err.decode(errors='replace')[-2000:]}")
    return path


async def _ready_archive() -> Path:
    path = basemap_path()
    if not path.exists():
        await build_in_background()
    return path


def _problem_not_found(detail: str) -> ResourceNotFound:
    return ResourceNotFound(detail)


_read: Callable[..., Any] = require("map.read")


@router.get("/tiles/city/{z}/{x}/{y}.pbf", response_class=Response,
            responses={200: {"content": {MEDIA_TYPE: {}}}, 204: {"description": "no city features in this tile"},
                       404: {"description": "outside the tile pyramid"}})
async def city_tile(z: int, x: int, y: int, principal: Any = Depends(_read)) -> Response:
    """One vector tile of the city's base map (layers: land, water, park, building, district, river, road,
    coastline, poi)."""
    if not 0 <= z <= MAX_REQUEST_ZOOM or not (0 <= x < 2 ** z and 0 <= y < 2 ** z):
        raise _problem_not_found(f"tile {z}/{x}/{y} is outside the tile pyramid (z 0–{MAX_REQUEST_ZOOM})")
    path = await _ready_archive()
    data = _archive.get(path).get(z, x, y) if z <= MAX_ZOOM else None
    headers = {"Cache-Control": "public, max-age=3600"}
    if not data:
        return Response(status_code=204, headers=headers)
    return Response(bytes(data), media_type=MEDIA_TYPE, headers=headers)


@router.get("/tiles/city.json")
async def city_tilejson(request: Request, principal: Any = Depends(_read)) -> dict[str, Any]:
    """TileJSON 3.0 of the built-in base map."""
    from cityos.sim.basemap import LAYERS

    path = await _ready_archive()
    _archive.get(path)
    header = _archive.header
    base = str(request.base_url).rstrip("/")
    return {"tilejson": "3.0.0", "name": "CityOS city", "scheme": "xyz",
            "tiles": [f"{base}/tiles/city/{{z}}/{{x}}/{{y}}.pbf"],
            "minzoom": header.get("min_zoom", MIN_ZOOM), "maxzoom": header.get("max_zoom", MAX_ZOOM),
            "bounds": [header.get(k, 0) / 1e7 for k in ("min_lon_e7", "min_lat_e7", "max_lon_e7", "max_lat_e7")],
            "vector_layers": [{"id": name, "fields": {}} for name in LAYERS]}


@router.get("/tiles/city.pmtiles", response_class=FileResponse)
async def city_pmtiles(principal: Any = Depends(_read)) -> FileResponse:
    """The PMTiles archive itself; range requests are answered (206), as PMTiles clients need."""
    return FileResponse(await _ready_archive(), media_type="application/vnd.pmtiles")


def maplibre_assets() -> Path:
    """The directory of MapLibre GL JS inside the `maplibre` wheel (MIT/BSD, maplibre-gl 5.x).

    Found without importing the package: its import loads widget frameworks and warns about missing ones."""
    import importlib.util

    spec = importlib.util.find_spec("maplibre")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the maplibre package (MapLibre GL JS assets) is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "srcjs"


@functools.lru_cache(maxsize=4)
def city_frame(seed: int | None = None) -> tuple[tuple[float, float, float, float], list[dict[str, Any]]]:
    """The simulated city's bounding box and its base-map labels (roads, rivers, sea) for the cockpit."""
    from cityos.sim.basemap import basemap_labels
    from cityos.sim.city import build_city

    city = build_city(city_seed() if seed is None else seed)
    labels = [{"kind": lb.kind, "zh": lb.name_zh, "en": lb.name_en, "lon": round(lb.lon, 6), "lat": round(lb.lat, 6),
               "minZoom": lb.min_zoom} for lb in basemap_labels(city)]
    minx, miny, maxx, maxy = city.bbox
    return (minx, miny, maxx, maxy + 0.02), labels  # a strip of the sea: the city lies on its coast


if __name__ == "__main__":  # python -m cityos.web.tiles SEED PATH: the build, in its own process
    import sys

    with contextlib.suppress(OSError):
        os.nice(10)
    print(build_basemap(Path(sys.argv[2]), int(sys.argv[1])))
