"""Mapbox Vector Tile (MVT 2.1) encoding of shapely geometries already in tile coordinates.

Written here rather than taken from `mapbox-vector-tile`: its current release needs protobuf < 7,
which the GTFS-realtime bindings (protobuf 7) exclude, and its older releases import shapely APIs that
shapely 2 removed. The format is small: a protobuf `Tile` of `Layer`s whose features carry
zig-zag delta-encoded drawing commands. `decode_layers` reads tiles back (tests, diagnostics).
"""

from __future__ import annotations

from typing import Any

from shapely.geometry import LinearRing, LineString, MultiLineString, MultiPoint, MultiPolygon, Point, Polygon
from shapely.geometry.base import BaseGeometry

EXTENT = 4096
_POINT, _LINE, _POLYGON = 1, 2, 3
_MOVE_TO, _LINE_TO, _CLOSE = 1, 2, 7


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _zigzag(value: int) -> int:
    return (value << 1) ^ (value >> 63)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2)."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _packed(number: int, values: list[int]) -> bytes:
    return _field(number, b"".join(_varint(v) for v in values))


def _value(value: Any) -> bytes:
    if isinstance(value, bool):
        return _varint(7 << 3) + _varint(int(value))
    if isinstance(value, int):
        return _varint(6 << 3) + _varint(_zigzag(value))
    if isinstance(value, float):
        import struct

        return _varint(3 << 3 | 1) + struct.pack("<d", value)
    return _field(1, str(value).encode())


class _Cursor:
    def __init__(self) -> None:
        self.x = self.y = 0
        self.out: list[int] = []

    def ring(self, coords: list[tuple[int, int]], closed: bool) -> None:
        self.out += [(_MOVE_TO | 1 << 3)]
        self._point(coords[0])
        if len(coords) > 1:
            self.out.append(_LINE_TO | (len(coords) - 1) << 3)
            for point in coords[1:]:
                self._point(point)
        if closed:
            self.out.append(_CLOSE | 1 << 3)

    def _point(self, point: tuple[int, int]) -> None:
        x, y = point
        self.out += [_zigzag(x - self.x), _zigzag(y - self.y)]
        self.x, self.y = x, y


def _dedupe(coords: Any) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for x, y in coords:
        point = (round(x), round(y))
        if not out or out[-1] != point:
            out.append(point)
    return out


def _ring_area(ring: list[tuple[int, int]]) -> int:
    return sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in zip(ring, ring[1:] + ring[:1], strict=True))


def _polygon_rings(polygon: Polygon, cursor: _Cursor) -> bool:
    drawn = False
    for index, ring in enumerate([polygon.exterior, *polygon.interiors]):
        coords = _dedupe(LinearRing(ring).coords)[:-1]
        if len(coords) < 3:
            if index == 0:
                return False  # the outline collapsed at this zoom: so does the polygon
            continue
        area = _ring_area(coords)
        if area == 0:
            continue
        # MVT: exterior rings have a positive area in tile coordinates (y down), holes a negative one.
        if (area > 0) != (index == 0):
            coords.reverse()
        cursor.ring(coords, closed=True)
        drawn = True
    return drawn


def _geometry(geometry: BaseGeometry) -> tuple[int, list[int]] | None:
    cursor = _Cursor()
    if isinstance(geometry, Point | MultiPoint):
        points = [(round(p.x), round(p.y)) for p in getattr(geometry, "geoms", [geometry])]
        cursor.out.append(_MOVE_TO | len(points) << 3)
        for point in points:
            cursor._point(point)
        return _POINT, cursor.out
    if isinstance(geometry, LineString | MultiLineString):
        for line in getattr(geometry, "geoms", [geometry]):
            coords = _dedupe(line.coords)
            if len(coords) >= 2:
                cursor.ring(coords, closed=False)
        return (_LINE, cursor.out) if cursor.out else None
    if isinstance(geometry, Polygon | MultiPolygon):
        drawn = [_polygon_rings(p, cursor) for p in getattr(geometry, "geoms", [geometry])]
        return (_POLYGON, cursor.out) if any(drawn) else None
    return None


def encode_tile(layers: dict[str, list[tuple[BaseGeometry, dict[str, Any]]]]) -> bytes:
    """One tile: layer name → [(geometry in 0..EXTENT tile coordinates, properties)]; empty layers are left out."""
    tile = bytearray()
    for name, features in layers.items():
        keys: dict[str, int] = {}
        values: dict[tuple[str, Any], int] = {}
        encoded = bytearray()
        for geometry, properties in features:
            drawn = _geometry(geometry)
            if drawn is None:
                continue
            kind, commands = drawn
            tags: list[int] = []
            for key, value in properties.items():
                if value is None or value == "":
                    continue
                tags.append(keys.setdefault(key, len(keys)))
                tags.append(values.setdefault((type(value).__name__, value), len(values)))
            feature = (_packed(2, tags) if tags else b"") + _varint(3 << 3) + _varint(kind) + _packed(4, commands)
            encoded += _field(2, feature)
        if not encoded:
            continue
        layer = _varint(15 << 3) + _varint(2) + _field(1, name.encode()) + bytes(encoded)
        layer += b"".join(_field(3, k.encode()) for k in keys)
        layer += b"".join(_field(4, _value(v)) for (_, v) in values)
        layer += _varint(5 << 3) + _varint(EXTENT)
        tile += _field(3, layer)
    return bytes(tile)


# ------------------------------------------------------------------------------------ decoding


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _fields(data: bytes) -> list[tuple[int, Any]]:
    pos = 0
    out: list[tuple[int, Any]] = []
    while pos < len(data):
        key, pos = _read_varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _read_varint(data, pos)
            out.append((number, value))
        elif wire == 2:
            length, pos = _read_varint(data, pos)
            out.append((number, data[pos:pos + length]))
            pos += length
        elif wire == 1:
            out.append((number, data[pos:pos + 8]))
            pos += 8
        elif wire == 5:
            out.append((number, data[pos:pos + 4]))
            pos += 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
    return out


def decode_layers(data: bytes) -> dict[str, list[dict[str, Any]]]:
    """Layer name → features' properties (string and integer values; geometry not decoded)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for number, layer in _fields(data):
        if number != 3:
            continue
        fields = _fields(layer)
        name = next(v.decode() for n, v in fields if n == 1)
        keys = [v.decode() for n, v in fields if n == 3]
        values: list[Any] = []
        for n, raw in fields:
            if n == 4:
                kind, value = _fields(raw)[0]
                values.append(value.decode() if kind == 1 else (value >> 1) ^ -(value & 1) if kind == 6 else value)
        features = []
        for n, raw in fields:
            if n == 2:
                tags_raw = next((v for fn, v in _fields(raw) if fn == 2), b"")
                tags, pos = [], 0
                while pos < len(tags_raw):
                    tag, pos = _read_varint(tags_raw, pos)
                    tags.append(tag)
                features.append({keys[k]: values[v] for k, v in zip(tags[::2], tags[1::2], strict=True)})
        out[name] = features
    return out
