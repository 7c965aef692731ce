"""随手拍 through the API: a photo (checked, EXIF position read, metadata stripped), then an Open311
report by a signed-in citizen without an api_key, followed and confirmed by that citizen."""

from __future__ import annotations

import io
import uuid
from typing import Any

from PIL import Image
from PIL.ExifTags import GPS, IFD

from cityos.ops.open311.media import MAX_BYTES, exif_location

MEDIA = "/api/ops/open311/media"


def photo(kind: str = "JPEG", gps: tuple[float, float] | None = (20.03, 110.33), size: tuple[int, int] = (64, 48)
          ) -> bytes:
    image = Image.new("RGB", size, (180, 40, 40))
    exif = image.getexif()
    exif[0x010F] = "PhoneMaker"  # Make: camera metadata that must not be published
    if gps is not None:
        lat, lon = gps
        ifd = exif.get_ifd(IFD.GPSInfo)
        ifd[GPS.GPSLatitudeRef], ifd[GPS.GPSLatitude] = "N", (float(int(lat)), (lat % 1) * 60, 0.0)
        ifd[GPS.GPSLongitudeRef], ifd[GPS.GPSLongitude] = "E", (float(int(lon)), (lon % 1) * 60, 0.0)
    out = io.BytesIO()
    image.save(out, kind, exif=exif)
    return out.getvalue()


def citizen(auth: Any) -> tuple[str, dict[str, str]]:
    user_id = uuid.uuid4().hex
    return user_id, auth.headers("citizen", user_id=user_id)


async def test_photo_keeps_pixels_offers_position_and_drops_metadata(client: Any, anon_client: Any,
                                                                    auth: Any) -> None:
    _, headers = citizen(auth)
    reply = await client.post(MEDIA, content=photo(), headers={**headers, "Content-Type": "image/jpeg"})
    assert reply.status_code == 201, reply.text
    body = reply.json()
    assert body["contentType"] == "image/jpeg"
    assert abs(body["exifLocation"]["lat"] - 20.03) < 1e-4 and abs(body["exifLocation"]["long"] - 110.33) < 1e-4
    assert body["mediaUrl"].endswith(f"{MEDIA}/{body['id']}")
    served = await anon_client.get(f"{MEDIA}/{body['id']}")  # public, like the report's media_url
    assert served.status_code == 200 and served.headers["content-type"] == "image/jpeg"
    stored = Image.open(io.BytesIO(served.content))
    assert stored.size == (64, 48) and exif_location(stored) is None and 0x010F not in stored.getexif()


async def test_photo_without_position_and_png(client: Any, auth: Any) -> None:
    _, headers = citizen(auth)
    reply = await client.post(MEDIA, content=photo("PNG", gps=None), headers={**headers, "Content-Type": "image/png"})
    assert reply.status_code == 201 and reply.json()["exifLocation"] is None
    assert reply.json()["contentType"] == "image/png"


async def test_bad_photos_are_refused(client: Any, anon_client: Any, auth: Any) -> None:
    _, headers = citizen(auth)
    jpeg = {**headers, "Content-Type": "image/jpeg"}
    gif = io.BytesIO()
    Image.new("RGB", (8, 8)).save(gif, "GIF")
    cases = [(b"%PDF-1.4 not a photo", 415), (gif.getvalue(), 415), (photo()[:200], 415), (b"", 400),
             (b"<svg xmlns='http://www.w3.org/2000/svg'/>", 415)]
    for data, status in cases:
        reply = await client.post(MEDIA, content=data, headers=jpeg)
        assert reply.status_code == status, (data[:20], reply.text)
        assert reply.json()["title"]
    big = await client.post(MEDIA, content=b"\xff\xd8" + b"0" * MAX_BYTES, headers=jpeg)
    assert big.status_code == 413
    assert (await anon_client.post(MEDIA, content=photo(), headers={"Content-Type": "image/jpeg"})).status_code == 401
    assert (await anon_client.get(f"{MEDIA}/{'0' * 32}")).status_code == 404
    assert (await anon_client.get(f"{MEDIA}/..%2F..%2Fetc")).status_code == 404


async def test_photos_per_hour_are_limited(client: Any, auth: Any) -> None:
    _, headers = citizen(auth)
    small = photo(gps=None, size=(4, 4))
    statuses = [(await client.post(MEDIA, content=small, headers={**headers, "Content-Type": "image/jpeg"}))
                .status_code for _ in range(31)]
    assert statuses[:30] == [201] * 30 and statuses[30] == 429


async def test_signed_in_citizen_reports_without_a_key_follows_and_confirms(client: Any, anon_client: Any,
                                                                           auth: Any) -> None:
    _, headers = citizen(auth)
    media = (await client.post(MEDIA, content=photo(), headers={**headers, "Content-Type": "image/jpeg"})).json()
    form = {"service_code": "pothole", "lat": "20.03", "long": "110.33", "description": "路面塌陷一个大坑",
            "media_url": media["mediaUrl"]}
    reply = await client.post("/open311/v2/requests.json", data=form, headers=headers)
    assert reply.status_code == 201, reply.text
    incident_id = reply.json()[0]["service_request_id"]
    # Without a token the api_key is still required.
    assert (await anon_client.post("/open311/v2/requests.json", data=form)).status_code == 400
    mine = await client.get("/api/ops/incidents", headers=headers)
    assert mine.status_code == 200
    assert incident_id in {str(i["id"]) for i in mine.json()["items"]}
    public = await anon_client.get(f"/open311/v2/requests/{incident_id}.json")
    assert public.json()[0]["media_url"] == media["mediaUrl"]
    operator = auth.headers("operator")
    for step in ("dispatch", "accept", "arrive", "resolve"):
        done = await client.post(f"/api/ops/incidents/{incident_id}/{step}", headers=operator)
        assert done.status_code == 200, done.text
    other = auth.headers("citizen", user_id=uuid.uuid4().hex)
    assert (await client.post(f"/api/ops/incidents/{incident_id}/confirm", headers=other,
                              json={"satisfied": True})).status_code in (403, 404)
    confirmed = await client.post(f"/api/ops/incidents/{incident_id}/confirm", headers=headers,
                                  json={"satisfied": True})
    assert confirmed.status_code == 200 and confirmed.json()["status"] == "closed"
