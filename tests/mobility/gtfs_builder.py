"""Small GTFS zips for tests: a valid two-line feed, and the same with one defect at a time."""

from __future__ import annotations

import io
import zipfile

BASE: dict[str, str] = {
    "agency.txt": "agency_id,agency_name,agency_url,agency_timezone\nA,Test Transit,http://example.org,Asia/Shanghai\n",
    "stops.txt": ("stop_id,stop_name,stop_lat,stop_lon,location_type,parent_station\n"
                  "S1,North Station,31.2300,121.4700,1,\n"
                  "P1,North Station platform,31.2300,121.4700,0,S1\n"
                  "P2,Market,31.2200,121.4700,0,\n"
                  "P3,South Gate,31.2100,121.4700,0,\n"
                  "P4,East Park,31.2100,121.4800,0,\n"),
    "routes.txt": ("route_id,agency_id,route_short_name,route_long_name,route_type\n"
                   "R1,A,1,North-South,3\nR2,A,2,Cross,3\n"),
    "trips.txt": ("route_id,service_id,trip_id,trip_headsign\n"
                  "R1,WK,T1,South Gate\nR1,WK,T2,South Gate\nR2,WK,T3,East Park\n"),
    "stop_times.txt": ("trip_id,arrival_time,departure_time,stop_id,stop_sequence\n"
                       "T1,08:00:00,08:00:00,P1,1\nT1,08:10:00,08:11:00,P2,2\nT1,08:20:00,08:20:00,P3,3\n"
                       "T2,23:50:00,23:50:00,P1,1\nT2,24:05:00,24:05:00,P2,2\nT2,24:20:00,24:20:00,P3,3\n"
                       "T3,08:25:00,08:25:00,P3,1\nT3,08:35:00,08:35:00,P4,2\n"),
    "calendar.txt": ("service_id,monday,tuesday,wednesday,thursday,friday,saturday,sunday,start_date,end_date\n"
                     "WK,1,1,1,1,1,0,0,20260101,20271231\n"),
}


def gtfs_zip(changes: dict[str, str | None] | None = None, encoding: str = "utf-8",
             folder: str = "") -> bytes:
    """The base feed with files replaced (a str) or removed (None)."""
    files = dict(BASE)
    for name, text in (changes or {}).items():
        if text is None:
            files.pop(name, None)
        else:
            files[name] = text
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, text in files.items():
            archive.writestr(folder + name, text.encode(encoding))
    return buffer.getvalue()
