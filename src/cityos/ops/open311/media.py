"""Photos attached to citizens' reports (随手拍): checked, stripped of metadata, stored, served.

A photo is accepted when Pillow decodes it as JPEG, PNG or WebP (the declared type is not trusted)
within `MAX_BYTES` and `MAX_PIXELS`. The GPS position in its EXIF data, if any, is read and offered
to the reporter as the report's location; the stored copy is re-encoded from the pixels (turned
upright first), so neither the position nor the camera's other metadata is published with it.
"""

from __future__ import annotations

import asyncio
import io
import uuid
from datetime import timedelta
from typing import Any

from PIL import Image, ImageOps, UnidentifiedImageError
from PIL.ExifTags import GPS, IFD
from sqlalchemy import func, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from cityos.core import clock
from cityos.core.db import write_transaction
from cityos.core.errors import BadRequestData, ProblemError, ResourceNotFound, TooLarge, UnsupportedMediaType
from cityos.ops.open311.models import media

MAX_BYTES = 8 * 1024 * 1024
MAX_PIXELS = 40_000_000
MAX_SIDE = 2048  # stored photos are scaled to fit; enough to see a pothole, small enough to serve
PER_OWNER_PER_HOUR = 30
FORMATS = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp"}


def _degrees(value: Any, ref: Any) -> float | None:
    try:
        d, m, s = (float(part) for part in value)
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    result = d + m / 60 + s / 3600
    return -result if str(ref).upper() in ("S", "W") else result


def exif_location(image: Image.Image) -> dict[str, float] | None:
    """The photo's EXIF GPS position as {"lat", "long"}, or None when absent or implausible."""
    try:
        gps = image.getexif().get_ifd(IFD.GPSInfo)
    except Exception:  # a broken EXIF block is the photo's problem, not the report's
        return None
    if not gps:
        return None
    lat = _degrees(gps.get(GPS.GPSLatitude), gps.get(GPS.GPSLatitudeRef, "N"))
    lon = _degrees(gps.get(GPS.GPSLongitude), gps.get(GPS.GPSLongitudeRef, "E"))
    if lat is None or lon is None or not (-90 <= lat <= 90 and -180 <= lon <= 180) or (lat == 0 and lon == 0):
        return None
    return {"lat": round(lat, 6), "long": round(lon, 6)}


def clean_photo(data: bytes) -> tuple[bytes, str, dict[str, float] | None]:
    """(re-encoded bytes, content type, EXIF location) of an uploaded photo; raises on anything else."""
    if len(data) > MAX_BYTES:
        raise TooLarge(f"a photo is at most {MAX_BYTES // (1024 * 1024)} MiB 照片不能超过 8 MB")
    if not data:
        raise BadRequestData("the photo is empty 照片为空")
    try:
        with Image.open(io.BytesIO(data)) as probe:
            kind = probe.format or ""
            if kind not in FORMATS:
                raise UnsupportedMediaType("a photo is JPEG, PNG or WebP 仅支持 JPEG、PNG、WebP 照片")
            if probe.width * probe.height > MAX_PIXELS:
                raise TooLarge("the photo has too many pixels 照片像素过多")
            probe.verify()
        with Image.open(io.BytesIO(data)) as image:
            location = exif_location(image)
            upright = ImageOps.exif_transpose(image)
            upright.thumbnail((MAX_SIDE, MAX_SIDE))
            out = io.BytesIO()
            if kind == "JPEG":
                upright.convert("RGB").save(out, "JPEG", quality=85)
            else:
                upright.save(out, kind)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        raise UnsupportedMediaType("the file is not a readable photo 无法识别的照片文件") from None
    return out.getvalue(), FORMATS[kind], location


class TooManyPhotos(ProblemError):
    status, error_type, title = 429, "https://cityos.dev/errors/TooManyRequests", "Too many requests"


class MediaStore:
    def __init__(self, engine: AsyncEngine, write_lock: asyncio.Lock) -> None:
        self.engine = engine
        self._lock = write_lock

    async def add(self, tenant: str, owner: str, data: bytes) -> dict[str, Any]:
        now = clock.now()
        async with self.engine.connect() as conn:
            recent = (await conn.execute(select(func.count()).select_from(media).where(
                media.c.owner == owner, media.c.created_at > now - timedelta(hours=1)))).scalar_one()
        if int(recent) >= PER_OWNER_PER_HOUR:
            raise TooManyPhotos(f"at most {PER_OWNER_PER_HOUR} photos an hour 每小时最多上传 {PER_OWNER_PER_HOUR} 张")
        clean, content_type, location = await asyncio.to_thread(clean_photo, data)
        media_id = uuid.uuid4().hex
        async with write_transaction(self.engine, self._lock) as conn:
            await conn.execute(insert(media).values(id=media_id, tenant=tenant, owner=owner, content_type=content_type,
                                                    size=len(clean), data=clean, created_at=now))
        return {"id": media_id, "contentType": content_type, "size": len(clean), "exifLocation": location}

    async def get(self, media_id: str) -> tuple[str, bytes]:
        if len(media_id) != 32 or not media_id.isalnum():
            raise ResourceNotFound("no such photo")
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(media.c.content_type, media.c.data).where(media.c.id == media_id))).first()
        if row is None:
            raise ResourceNotFound("no such photo")
        return str(row.content_type), bytes(row.data)

