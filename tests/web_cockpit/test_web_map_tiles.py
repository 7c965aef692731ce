"""The base map's tiles and the KPI trends, without a browser: the MVT encoding, the archive, the series."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pmtiles.reader import MemorySource, Reader
from shapely.geometry import LineString, Point, Polygon

from cityos.sim.basemap import basemap_features, basemap_labels
from cityos.sim.city import build_city
from cityos.web.mvt import _fields, _read_varint, decode_layers, encode_tile
from cityos.web.tiles import build_basemap


def _commands(tile: bytes) -> list[list[int]]:
    """The geometry command streams of a one-layer tile's features."""
    layer = next(v for n, v in _fields(tile) if n == 3)
    streams = []
    for number, feature in _fields(layer):
        if number != 2:
            continue
        raw = next(v for n, v in _fields(feature) if n == 4)
        values, pos = [], 0
        while pos < len(raw):
            value, pos = _read_varint(raw, pos)
            values.append(value)
        streams.append(values)
    return streams


def test_mvt_encoding_round_trip_and_winding() -> None:
    square = Polygon([(0, 0), (0, 100), (100, 100), (100, 0)], holes=[[(20, 20), (80, 20), (80, 80), (20, 80)]])
    tile = encode_tile({"blocks": [(square, {"name_zh": "秀英区", "n": -3, "park": True, "area": 1.5})],
                        "empty": [], "roads": [(LineString([(0, 0), (10, 10), (10, 10), (20, 0)]), {})],
                        "pois": [(Point(5, 7), {"kind": "school"})]})
    layers = decode_layers(tile)
    assert set(layers) == {"blocks", "roads", "pois"}  # empty layers are left out
    assert layers["blocks"] == [{"name_zh": "秀英区", "n": -3, "park": 1, "area": layers["blocks"][0]["area"]}]
    assert layers["pois"] == [{"kind": "school"}]
    # MoveTo(1) x y, LineTo(3) …, ClosePath for the outline and again for the hole; zig-zag deltas.
    stream = _commands(encode_tile({"b": [(square, {})]}))[0]
    assert stream[0] == (1 | 1 << 3) and stream[3] == (2 | 3 << 3) and stream.count(7 | 1 << 3) == 2

    def ring_area(start: int) -> float:
        x = y = 0
        points = []
        for i in range(start + 1, start + 3, 2):
            dx, dy = stream[i], stream[i + 1]
            x += (dx >> 1) ^ -(dx & 1)
            y += (dy >> 1) ^ -(dy & 1)
            points.append((x, y))
        for i in range(start + 4, start + 10, 2):
            dx, dy = stream[i], stream[i + 1]
            x += (dx >> 1) ^ -(dx & 1)
            y += (dy >> 1) ^ -(dy & 1)
            points.append((x, y))
        return sum(a[0] * b[1] - b[0] * a[1] for a, b in zip(points, points[1:] + points[:1], strict=True))

    assert ring_area(0) > 0 and ring_area(11) < 0  # outline positive, hole negative (y down)
    # The duplicate vertex of the line is dropped: MoveTo + LineTo(2).
    assert _commands(encode_tile({"r": [(LineString([(0, 0), (10, 10), (10, 10), (20, 0)]), {})]}))[0][3] == \
        (2 | 2 << 3)
    # A polygon that collapses to nothing at this zoom is not written at all.
    assert encode_tile({"b": [(Polygon([(0, 0), (0.1, 0), (0.1, 0.1)]), {})]}) == b""


def test_city_model_for_the_map() -> None:
    city = build_city(42)
    features = basemap_features(city)
    layers = {f.layer for f in features}
    assert {"land", "water", "coastline", "district", "road", "river", "building", "park", "poi"} <= layers
    # Chinese names first: every district, road and river has one from the catalogue.
    named = [f for f in features if f.layer in ("district", "road", "river")]
    assert named and all(f.properties["name_zh"] for f in named)
    # The sea lies north of the city and touches no district; blocks keep off the roads.
    sea = next(f.geometry for f in features if f.layer == "water" and f.properties["kind"] == "sea")
    assert all(sea.intersection(d.polygon).area < 1e-9 for d in city.districts)
    arterial = next(r.line for r in city.roads if r.category == "arterial")
    assert all(not b.geometry.intersects(arterial) for b in features if b.layer == "building")
    assert basemap_features(build_city(42))[40].geometry.equals(features[40].geometry)  # same seed, same map
    labels = basemap_labels(city)
    assert any(lb.name_zh == "南渡江" for lb in labels) and all(lb.name_zh for lb in labels)


def test_basemap_archive(tmp_path: Path) -> None:
    path = tmp_path / "city.pmtiles"
    figures = build_basemap(path, 42)
    assert figures["tiles"] > 500 and path.exists()
    reader = Reader(MemorySource(path.read_bytes()))
    header = reader.header()
    assert (header["min_zoom"], header["max_zoom"]) == (8, 15)

    def tile_of(lon: float, lat: float, z: int) -> tuple[int, int, int]:
        n = 2 ** z
        return z, int((lon + 180) / 360 * n), int((1 - math.asinh(math.tan(math.radians(lat))) / math.pi) / 2 * n)

    centre = decode_layers(reader.get(*tile_of(110.33, 20.03, 14)))
    assert {"building", "road", "district"} <= set(centre)
    assert "building" not in decode_layers(reader.get(*tile_of(110.33, 20.03, 9)))  # detail only close up
    assert reader.get(12, 0, 0) is None  # far away: no tile
    assert not list(tmp_path.glob("*.part"))  # written atomically


def test_incident_trend_series() -> None:
    from cityos.web.cockpit.trends import SampledHistory, buckets, incident_series

    now = datetime(2026, 12, 5, 10, 30, tzinfo=UTC)

    def iso(hours_ago: float) -> str:
        return (now - timedelta(hours=hours_ago)).isoformat()

    items = [
        {"id": "1", "status": "reported", "reportedAt": iso(5), "sla": {"state": "ok"}},
        {"id": "2", "status": "closed", "reportedAt": iso(3), "acceptedAt": iso(2.5), "closedAt": iso(1),
         "sla": {"state": "breached"}},
        {"id": "3", "status": "accepted", "reportedAt": iso(3.2), "acceptedAt": iso(3.0), "sla": {"state": "met"}},
        {"id": "4", "status": "reported", "reportedAt": "not a time"},
    ]
    starts = buckets(now, "24h")
    assert len(starts) == 24 and starts[-1] <= now < starts[-1] + timedelta(hours=1)
    open_counts = [v for _, v in incident_series(items, "open", "24h", now)]
    assert open_counts[-1] == 2 and open_counts[-2] == 2 and open_counts[-3] == 3 and open_counts[0] == 0
    sla = dict(incident_series(items, "sla", "24h", now))
    assert sla[datetime(2026, 12, 5, 7, tzinfo=UTC)] == 50.0  # #2 breached, #3 met in the 07:00 bucket
    response = dict(incident_series(items, "response", "24h", now))
    assert response[datetime(2026, 12, 5, 7, tzinfo=UTC)] == pytest.approx((30 + 12) / 2)
    assert len(incident_series(items, "open", "7d", now)) == 28
    history = SampledHistory()
    history.record("online", 80.0, now)
    history.record("online", 10.0, now)  # within a minute of the last sample: not taken
    history.record("online", None, now)
    assert [v for _, v in history.samples["online"]] == [80.0]


def test_one_setting_points_the_cockpit_at_the_citys_own_tiles(monkeypatch: pytest.MonkeyPatch) -> None:
    from cityos.web.tiles import map_source

    monkeypatch.delenv("CITYOS_MAP_STYLE_URL", raising=False)
    monkeypatch.delenv("CITYOS_MAP_TILES_URL", raising=False)
    assert map_source() == {"mode": "builtin", "url": "/tiles/city/{z}/{x}/{y}.pbf"}
    template = "https://t0.tianditu.gov.cn/vec_w/wmts?tk=KEY&TILEMATRIX={z}&TILEROW={y}&TILECOL={x}"
    monkeypatch.setenv("CITYOS_MAP_TILES_URL", template)
    monkeypatch.setenv("CITYOS_MAP_ATTRIBUTION", "天地图")
    assert map_source() == {"mode": "raster", "url": template, "attribution": "天地图"}
    monkeypatch.setenv("CITYOS_MAP_STYLE_URL", "https://tiles.city.internal/style.json")
    assert map_source() == {"mode": "style", "url": "https://tiles.city.internal/style.json"}  # a whole style wins
