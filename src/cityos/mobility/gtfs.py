"""GTFS static: read a zip with partridge, validate it, and hand back normalised tables.

Notices use the codes and report shape of MobilityData's canonical GTFS validator
(`code`, `severity`, `totalNotices`, `sampleNotices`), so operators can look them up in its rule list.
A feed with any ERROR notice is refused; WARNING and INFO notices travel with the imported feed.

Encodings: partridge reads each file as UTF-8 when it decodes and otherwise asks charset-normalizer
(GBK / GB18030 feeds exist in China). A file that was not UTF-8 gets a `non_utf8_encoding` INFO notice
(our code: the canonical validator only accepts UTF-8); a file nothing can decode is an `i_o_error`.

A circular chain of parent stations is reported as `wrong_parent_location_type` (the canonical
validator's rule that catches it: a cycle always has a parent that is not a station), with the chain in
the sample.
"""

from __future__ import annotations

import datetime as dt
import io
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import pandas as pd
import partridge as ptg
from charset_normalizer import from_bytes

MAX_SAMPLES = 20
MAX_UNCOMPRESSED = 1 << 30  # refuse zip bombs before extracting

REQUIRED_FILES = ("agency.txt", "stops.txt", "routes.txt", "trips.txt", "stop_times.txt")
KNOWN_FILES = frozenset({*REQUIRED_FILES, "calendar.txt", "calendar_dates.txt", "transfers.txt",
                         "frequencies.txt", "shapes.txt", "feed_info.txt", "fare_attributes.txt", "fare_rules.txt",
                         "pathways.txt", "levels.txt", "translations.txt", "attributions.txt"})
DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
REQUIRED_COLUMNS: dict[str, tuple[str, ...]] = {
    "agency.txt": ("agency_name", "agency_url", "agency_timezone"),
    "stops.txt": ("stop_id",),
    "routes.txt": ("route_id", "route_type"),
    "trips.txt": ("route_id", "service_id", "trip_id"),
    "stop_times.txt": ("trip_id", "stop_sequence", "stop_id"),
    "calendar.txt": ("service_id", *DAYS, "start_date", "end_date"),
    "calendar_dates.txt": ("service_id", "date", "exception_type"),
    "transfers.txt": ("from_stop_id", "to_stop_id", "transfer_type"),
    "frequencies.txt": ("trip_id", "start_time", "end_time", "headway_secs"),
}


@dataclass
class Notices:
    """Notices grouped by code, with at most MAX_SAMPLES samples each (like the canonical report)."""

    groups: dict[str, dict[str, Any]] = field(default_factory=dict)

    def add(self, code: str, severity: str, **sample: Any) -> None:
        group = self.groups.setdefault(code, {"code": code, "severity": severity, "totalNotices": 0,
                                              "sampleNotices": []})
        group["totalNotices"] += 1
        if len(group["sampleNotices"]) < MAX_SAMPLES:
            group["sampleNotices"].append({k: _plain(v) for k, v in sample.items()})

    def add_rows(self, code: str, severity: str, filename: str, frame: pd.DataFrame, mask: Any,
                 **columns: str) -> None:
        """One notice per row of `frame` where `mask` holds; `columns` maps sample keys to columns."""
        hits = frame[mask] if mask is not None else frame
        if hits.empty:
            return
        group = self.groups.setdefault(code, {"code": code, "severity": severity, "totalNotices": 0,
                                              "sampleNotices": []})
        group["totalNotices"] += len(hits)
        for index, row in hits.head(MAX_SAMPLES - len(group["sampleNotices"])).iterrows():
            sample: dict[str, Any] = {"filename": filename, "csvRowNumber": int(index) + 2}
            sample.update({key: _plain(row[col]) for key, col in columns.items() if col in row})
            group["sampleNotices"].append(sample)

    @property
    def has_errors(self) -> bool:
        return any(g["severity"] == "ERROR" for g in self.groups.values())

    def report(self) -> list[dict[str, Any]]:
        order = {"ERROR": 0, "WARNING": 1, "INFO": 2}
        return sorted(self.groups.values(), key=lambda g: (order.get(g["severity"], 3), g["code"]))


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and np.isnan(value):
        return None
    return value


@dataclass
class FeedTables:
    """A validated feed, normalised: times in seconds after the service day's noon-minus-12h, dates as dates."""

    agencies: list[dict[str, Any]]
    timezone: str
    stops: pd.DataFrame          # stop_id, stop_name, lat, lon, location_type, parent_station
    routes: pd.DataFrame         # route_id, agency_id, short_name, long_name, route_type, color
    trips: pd.DataFrame          # trip_id, route_id, service_id, headsign, direction_id
    stop_times: pd.DataFrame     # trip_id, stop_id, stop_sequence, arrival, departure, pickup, dropoff (sorted)
    calendar: pd.DataFrame       # service_id, monday..sunday (0/1), start_date, end_date (datetime.date)
    calendar_dates: pd.DataFrame  # service_id, date, exception_type
    transfers: pd.DataFrame      # from_stop_id, to_stop_id, transfer_type, min_transfer_time (-1: none)
    frequencies: pd.DataFrame    # trip_id, start, end, headway, exact_times

    def service_range(self) -> tuple[dt.date | None, dt.date | None]:
        dates = [*self.calendar["start_date"], *self.calendar["end_date"], *self.calendar_dates["date"]]
        return (min(dates), max(dates)) if dates else (None, None)


def _empty(*columns: str) -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=object) for c in columns})


def _blank(series: pd.Series) -> pd.Series:
    return series.isna() | (series.astype(str).str.len() == 0)


def parse_times(series: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """GTFS H:MM:SS (hours past 24 allowed) → seconds; (values with -1 for blank, invalid mask)."""
    text = series.fillna("").astype(str)
    parts = text.str.extract(r"^(\d{1,3}):([0-5]\d):([0-5]\d)$")
    ok = parts[0].notna().to_numpy()
    blank = (text.str.len() == 0).to_numpy()
    values = np.full(len(text), -1, dtype=np.int64)
    if ok.any():
        p = parts[ok].astype(np.int64)
        values[ok] = (p[0] * 3600 + p[1] * 60 + p[2]).to_numpy()
    return values, ~ok & ~blank


def _parse_dates(series: pd.Series) -> tuple[pd.Series, np.ndarray]:
    parsed = pd.to_datetime(series.fillna("").astype(str), format="%Y%m%d", errors="coerce")
    bad = parsed.isna().to_numpy()
    return parsed.dt.date, bad


def _numbers(series: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    values = pd.to_numeric(series, errors="coerce")
    bad = (values.isna() & ~_blank(series)).to_numpy()
    return values.to_numpy(dtype=float), bad


def _column(frame: pd.DataFrame, name: str, default: str = "") -> pd.Series:
    if name in frame.columns:
        return frame[name].fillna(default)
    return pd.Series([default] * len(frame), index=frame.index, dtype=object)


def _read_files(data: bytes, notices: Notices, workdir: Path) -> dict[str, pd.DataFrame] | None:
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        broken = archive.testzip()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, NotImplementedError) as exc:
        notices.add("i_o_error", "ERROR", exception="BadZipFile", message=f"not a readable zip archive: {exc}")
        return None
    if broken is not None:
        notices.add("i_o_error", "ERROR", exception="BadZipFile", message=f"corrupt member {broken} (CRC)")
        return None
    members = [i for i in archive.infolist() if not i.is_dir()]
    if sum(i.file_size for i in members) > MAX_UNCOMPRESSED:
        notices.add("i_o_error", "ERROR", exception="TooLarge",
                    message=f"the archive expands past {MAX_UNCOMPRESSED} bytes")
        return None
    names: dict[str, zipfile.ZipInfo] = {}
    for info in members:
        if "/" in info.filename.strip("/"):
            notices.add("invalid_input_files_in_subfolder", "ERROR", filename=info.filename,
                        message="GTFS files must be at the root of the zip")
            continue
        names[info.filename] = info
    if notices.has_errors:
        return None
    for name, info in names.items():
        if name not in KNOWN_FILES:
            notices.add("unknown_file", "INFO", filename=name)
            continue
        raw = archive.read(info)
        if raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            decoded = decode_non_utf8(raw)
            if decoded is None:
                notices.add("i_o_error", "ERROR", filename=name, exception="UnicodeDecodeError",
                            message="the file is neither UTF-8 nor another encoding that could be detected")
                continue
            text, encoding = decoded
            notices.add("non_utf8_encoding", "INFO", filename=name, encoding=encoding)
            raw = text.encode("utf-8")
        (workdir / name).write_bytes(raw)
    if notices.has_errors:
        return None
    feed = ptg.load_raw_feed(str(workdir))
    frames: dict[str, pd.DataFrame] = {}
    for name in names:
        if name not in KNOWN_FILES or name == "shapes.txt":
            continue
        try:
            frame = feed.get(name)
        except (pd.errors.ParserError, ValueError, UnicodeDecodeError) as exc:
            notices.add("csv_parsing_failed", "ERROR", filename=name, message=str(exc)[:300])
            continue
        except pd.errors.EmptyDataError:
            frame = pd.DataFrame()
        frame = frame.rename(columns=lambda c: str(c).lstrip("\ufeff").strip())
        if frame.columns.duplicated().any():
            notices.add("duplicated_column", "ERROR", filename=name,
                        fieldName=str(frame.columns[frame.columns.duplicated()][0]))
            continue
        frames[name] = frame
    return frames


def _mostly_chinese(text: str) -> bool:
    wide = [c for c in text if ord(c) > 127]
    cjk = sum(1 for c in wide if "\u4e00" <= c <= "\u9fff" or "\u3000" <= c <= "\u303f" or "\uff00" <= c <= "\uffef")
    return bool(wide) and cjk >= 0.9 * len(wide)


def decode_non_utf8(raw: bytes) -> tuple[str, str] | None:
    """(text, encoding) of a file that is not UTF-8, or None.

    Chinese feeds come in GBK / GB18030: a strict GB18030 decode that yields mostly Chinese characters is
    taken first, because statistical detection often mistakes short Chinese files for Korean or Big5.
    Anything else goes to charset-normalizer.
    """
    try:
        text = raw.decode("gb18030")
    except UnicodeDecodeError:
        text = ""
    if text and _mostly_chinese(text):
        return text, "gb18030"
    best = from_bytes(raw).best()
    if best is None:
        return None
    return str(best), best.encoding


def read_feed(data: bytes, today: dt.date | None = None) -> tuple[FeedTables | None, Notices]:
    """Validate a GTFS zip; the tables when it has no ERROR notice (else None), and the notices."""
    notices = Notices()
    with tempfile.TemporaryDirectory(prefix="cityos-gtfs-") as tmp:
        frames = _read_files(data, notices, Path(tmp))
    if frames is None or notices.has_errors:
        return None, notices
    for name in REQUIRED_FILES:
        if name not in frames:
            notices.add("missing_required_file", "ERROR", filename=name)
        elif frames[name].empty:
            notices.add("empty_file", "ERROR", filename=name)
    if "calendar.txt" not in frames and "calendar_dates.txt" not in frames:
        notices.add("missing_calendar_and_calendar_date_files", "ERROR")
    for name, frame in frames.items():
        for column in REQUIRED_COLUMNS.get(name, ()):
            if column not in frame.columns:
                notices.add("missing_required_column", "ERROR", filename=name, fieldName=column)
            elif not frame.empty:
                for index in np.flatnonzero(_blank(frame[column]).to_numpy())[:MAX_SAMPLES]:
                    notices.add("missing_required_field", "ERROR", filename=name, csvRowNumber=int(index) + 2,
                                fieldName=column)
    if notices.has_errors:
        return None, notices
    tables = _normalise(frames, notices, today or dt.date.today())
    return (None if notices.has_errors else tables), notices


def _duplicates(notices: Notices, name: str, frame: pd.DataFrame, keys: list[str]) -> None:
    if all(k in frame.columns for k in keys) and not frame.empty:
        mask = frame.duplicated(subset=keys, keep="first").to_numpy()
        notices.add_rows("duplicate_key", "ERROR", name, frame, mask,
                         **{f"fieldValue{i + 1}": k for i, k in enumerate(keys)})


def _foreign(notices: Notices, child: str, frame: pd.DataFrame, column: str, parent: str, known: set[str],
             optional: bool = False) -> None:
    if column not in frame.columns or frame.empty:
        return
    values = frame[column]
    mask = ~values.isin(known)
    if optional:
        mask &= ~_blank(values)
    hits = frame[mask.to_numpy()]
    if hits.empty:
        return
    for index, value in hits[column].head(MAX_SAMPLES).items():
        notices.add("foreign_key_violation", "ERROR", childFilename=child, childFieldName=column,
                    parentFilename=parent, parentFieldName=column if column != "parent_station" else "stop_id",
                    fieldValue=value, csvRowNumber=int(index) + 2)
    extra = len(hits) - min(len(hits), MAX_SAMPLES)
    if extra:
        notices.groups["foreign_key_violation"]["totalNotices"] += extra


def _normalise(frames: dict[str, pd.DataFrame], notices: Notices, today: dt.date) -> FeedTables:
    agency, stops, routes = frames["agency.txt"], frames["stops.txt"], frames["routes.txt"]
    trips, stop_times = frames["trips.txt"], frames["stop_times.txt"]
    for name, keys in (("agency.txt", ["agency_id"]), ("stops.txt", ["stop_id"]), ("routes.txt", ["route_id"]),
                       ("trips.txt", ["trip_id"]), ("stop_times.txt", ["trip_id", "stop_sequence"]),
                       ("calendar.txt", ["service_id"]), ("calendar_dates.txt", ["service_id", "date"])):
        if name in frames:
            _duplicates(notices, name, frames[name], keys)

    # agency
    zones = sorted(set(agency["agency_timezone"].astype(str)))
    for zone in zones:
        try:
            ZoneInfo(zone)
        except (ZoneInfoNotFoundError, ValueError):
            notices.add("invalid_timezone", "ERROR", filename="agency.txt", fieldName="agency_timezone",
                        fieldValue=zone)
    if len(zones) > 1:
        notices.add("inconsistent_agency_timezone", "ERROR", filename="agency.txt", expected=zones[0],
                    actual=zones[1])
    agencies = [{k: (None if pd.isna(v) else v) for k, v in row.items()} for row in agency.to_dict("records")]

    # stops
    location_type = pd.to_numeric(_column(stops, "location_type", "0").replace("", "0"), errors="coerce")
    notices.add_rows("invalid_integer", "ERROR", "stops.txt", stops, location_type.isna().to_numpy(),
                     fieldValue="location_type")
    location_type = location_type.fillna(0).astype(int)
    lat, bad_lat = _numbers(_column(stops, "stop_lat"))
    lon, bad_lon = _numbers(_column(stops, "stop_lon"))
    notices.add_rows("invalid_float", "ERROR", "stops.txt", stops, bad_lat | bad_lon, stopId="stop_id")
    needs_position = location_type.isin([0, 1, 2]).to_numpy()
    for column, values in (("stop_name", None), ("stop_lat", lat), ("stop_lon", lon)):
        missing = _blank(_column(stops, column)).to_numpy() if values is None else np.isnan(values)
        mask = needs_position & missing
        if mask.any():
            for index in np.flatnonzero(mask)[:MAX_SAMPLES]:
                notices.add("missing_required_field", "ERROR", filename="stops.txt", csvRowNumber=int(index) + 2,
                            fieldName=column)
    out_of_range = (np.abs(lat) > 90) | (np.abs(lon) > 180)
    notices.add_rows("number_out_of_range", "ERROR", "stops.txt", stops, out_of_range, stopId="stop_id")
    near_origin = (np.abs(lat) < 1) & (np.abs(lon) < 1)
    notices.add_rows("point_near_origin", "ERROR", "stops.txt", stops, near_origin, stopId="stop_id")
    stop_ids = set(stops["stop_id"])
    parent = _column(stops, "parent_station")
    _foreign(notices, "stops.txt", stops.assign(parent_station=parent), "parent_station", "stops.txt", stop_ids,
             optional=True)
    _parents(notices, stops["stop_id"].tolist(), parent.tolist(), location_type.tolist())

    # routes
    if "agency_id" in routes.columns and "agency_id" in agency.columns:
        _foreign(notices, "routes.txt", routes, "agency_id", "agency.txt", set(agency["agency_id"]), optional=True)
    route_type = pd.to_numeric(routes["route_type"], errors="coerce")
    notices.add_rows("invalid_integer", "ERROR", "routes.txt", routes, route_type.isna().to_numpy(),
                     routeId="route_id")
    names_missing = (_blank(_column(routes, "route_short_name")) & _blank(_column(routes, "route_long_name")))
    notices.add_rows("route_both_short_and_long_name_missing", "ERROR", "routes.txt", routes,
                     names_missing.to_numpy(), routeId="route_id")

    # calendars
    calendar = frames.get("calendar.txt", _empty(*REQUIRED_COLUMNS["calendar.txt"]))
    calendar_dates = frames.get("calendar_dates.txt", _empty(*REQUIRED_COLUMNS["calendar_dates.txt"]))
    start, bad_start = _parse_dates(calendar["start_date"])
    end, bad_end = _parse_dates(calendar["end_date"])
    notices.add_rows("invalid_date", "ERROR", "calendar.txt", calendar, bad_start | bad_end, serviceId="service_id")
    ok = ~(bad_start | bad_end)
    reversed_range = np.zeros(len(calendar), dtype=bool)
    if ok.any():
        reversed_range[ok] = (pd.Series(start[ok].to_numpy()) > pd.Series(end[ok].to_numpy())).to_numpy()
    notices.add_rows("start_and_end_range_out_of_order", "ERROR", "calendar.txt", calendar, reversed_range,
                     serviceId="service_id", startFieldValue="start_date", endFieldValue="end_date")
    day_flags = {}
    for day in DAYS:
        flags = calendar[day].astype(str)
        notices.add_rows("number_out_of_range", "ERROR", "calendar.txt", calendar,
                         (~flags.isin(["0", "1"])).to_numpy(), fieldName=day, serviceId="service_id")
        day_flags[day] = (flags == "1").astype(int).to_numpy()
    exception_dates, bad_dates = _parse_dates(calendar_dates["date"])
    notices.add_rows("invalid_date", "ERROR", "calendar_dates.txt", calendar_dates, bad_dates,
                     serviceId="service_id")
    exception_type = calendar_dates["exception_type"].astype(str)
    notices.add_rows("number_out_of_range", "ERROR", "calendar_dates.txt", calendar_dates,
                     (~exception_type.isin(["1", "2"])).to_numpy(), serviceId="service_id")
    if not notices.has_errors:
        last = max([*end.tolist(), *exception_dates.tolist()], default=None)
        if last is not None and last < today:
            notices.add("expired_calendar", "WARNING", filename="calendar.txt", lastServiceDate=last.isoformat())

    # trips
    route_ids, service_ids = set(routes["route_id"]), set(calendar["service_id"]) | set(calendar_dates["service_id"])
    _foreign(notices, "trips.txt", trips, "route_id", "routes.txt", route_ids)
    _foreign(notices, "trips.txt", trips, "service_id", "calendar.txt", service_ids)

    # stop_times
    trip_ids = set(trips["trip_id"])
    _foreign(notices, "stop_times.txt", stop_times, "trip_id", "trips.txt", trip_ids)
    _foreign(notices, "stop_times.txt", stop_times, "stop_id", "stops.txt", stop_ids)
    timed = _stop_times(notices, stop_times)

    # transfers, frequencies
    transfers = frames.get("transfers.txt", _empty(*REQUIRED_COLUMNS["transfers.txt"]))
    _foreign(notices, "transfers.txt", transfers, "from_stop_id", "stops.txt", stop_ids)
    _foreign(notices, "transfers.txt", transfers, "to_stop_id", "stops.txt", stop_ids)
    transfer_type = pd.to_numeric(transfers["transfer_type"].replace("", "0"), errors="coerce")
    notices.add_rows("number_out_of_range", "ERROR", "transfers.txt", transfers,
                     (~transfer_type.isin([0, 1, 2, 3])).to_numpy(), fieldName="transfer_type")
    min_time, bad_min = _numbers(_column(transfers, "min_transfer_time"))
    notices.add_rows("invalid_integer", "ERROR", "transfers.txt", transfers, bad_min, fieldName="min_transfer_time")
    frequencies = frames.get("frequencies.txt", _empty(*REQUIRED_COLUMNS["frequencies.txt"]))
    _foreign(notices, "frequencies.txt", frequencies, "trip_id", "trips.txt", trip_ids)
    f_start, bad_fs = parse_times(frequencies["start_time"])
    f_end, bad_fe = parse_times(frequencies["end_time"])
    headway, bad_h = _numbers(frequencies["headway_secs"])
    notices.add_rows("invalid_time", "ERROR", "frequencies.txt", frequencies, bad_fs | bad_fe, tripId="trip_id")
    notices.add_rows("start_and_end_range_out_of_order", "ERROR", "frequencies.txt", frequencies,
                     f_start >= f_end, tripId="trip_id", startFieldValue="start_time", endFieldValue="end_time")
    notices.add_rows("number_out_of_range", "ERROR", "frequencies.txt", frequencies,
                     bad_h | ~(np.nan_to_num(headway, nan=0) > 0), tripId="trip_id", fieldName="headway_secs")
    if notices.has_errors:
        return None  # type: ignore[return-value]

    return FeedTables(
        agencies=agencies, timezone=zones[0],
        stops=pd.DataFrame({"stop_id": stops["stop_id"].astype(str), "stop_name": _column(stops, "stop_name"),
                            "lat": lat, "lon": lon, "location_type": location_type.to_numpy(),
                            "parent_station": parent.astype(str)}),
        routes=pd.DataFrame({"route_id": routes["route_id"].astype(str), "agency_id": _column(routes, "agency_id"),
                             "short_name": _column(routes, "route_short_name"),
                             "long_name": _column(routes, "route_long_name"),
                             "route_type": route_type.astype(int).to_numpy(),
                             "color": _column(routes, "route_color")}),
        trips=pd.DataFrame({"trip_id": trips["trip_id"].astype(str), "route_id": trips["route_id"].astype(str),
                            "service_id": trips["service_id"].astype(str),
                            "headsign": _column(trips, "trip_headsign"),
                            "direction_id": _column(trips, "direction_id")}),
        stop_times=timed,
        calendar=pd.DataFrame({"service_id": calendar["service_id"].astype(str), **day_flags,
                               "start_date": start.to_numpy(), "end_date": end.to_numpy()}),
        calendar_dates=pd.DataFrame({"service_id": calendar_dates["service_id"].astype(str),
                                     "date": exception_dates.to_numpy(),
                                     "exception_type": exception_type.astype(int).to_numpy()}),
        transfers=pd.DataFrame({"from_stop_id": transfers["from_stop_id"].astype(str),
                                "to_stop_id": transfers["to_stop_id"].astype(str),
                                "transfer_type": transfer_type.fillna(0).astype(int).to_numpy(),
                                "min_transfer_time": np.nan_to_num(min_time, nan=-1).astype(int)}),
        frequencies=pd.DataFrame({"trip_id": frequencies["trip_id"].astype(str), "start": f_start, "end": f_end,
                                  "headway": np.nan_to_num(headway).astype(int),
                                  "exact_times": _column(frequencies, "exact_times", "0").astype(str).to_numpy()}),
    )


def _parents(notices: Notices, ids: list[str], parents: list[str], types: list[int]) -> None:
    by_id = {i: (p, t) for i, p, t in zip(ids, parents, types, strict=True)}
    reported: set[str] = set()
    for row, (stop_id, parent, kind) in enumerate(zip(ids, parents, types, strict=True)):
        if not parent:
            if kind in (2, 3, 4):
                notices.add("missing_required_field", "ERROR", filename="stops.txt", csvRowNumber=row + 2,
                            fieldName="parent_station", stopId=stop_id)
            continue
        if parent not in by_id:
            continue
        if kind == 1:
            notices.add("station_with_parent_station", "ERROR", filename="stops.txt", csvRowNumber=row + 2,
                        stopId=stop_id, parentStation=parent)
        # Walk up the chain: a cycle is a chain of parents that never reaches a station.
        chain, seen, cur = [stop_id], {stop_id}, parent
        while cur and cur in by_id and cur not in seen:
            chain.append(cur)
            seen.add(cur)
            cur = by_id[cur][0]
        if cur in seen and stop_id not in reported:
            cycle = [*chain[chain.index(cur):], cur]
            reported.update(cycle)
            notices.add("wrong_parent_location_type", "ERROR", filename="stops.txt", csvRowNumber=row + 2,
                        stopId=stop_id, parentStation=parent, message="circular parent_station chain: "
                        + " → ".join(cycle))
            continue
        parent_kind = by_id[parent][1]
        expected = {0: 1, 2: 1, 3: 1, 4: 0}.get(kind)
        if expected is not None and parent_kind != expected and stop_id not in reported:
            notices.add("wrong_parent_location_type", "ERROR", filename="stops.txt", csvRowNumber=row + 2,
                        stopId=stop_id, locationType=kind, parentStation=parent, parentLocationType=parent_kind,
                        expectedLocationType=expected)


def _error_count(notices: Notices) -> int:
    return sum(g["totalNotices"] for g in notices.groups.values() if g["severity"] == "ERROR")


def _stop_times(notices: Notices, frame: pd.DataFrame) -> pd.DataFrame:
    """Parse, order and check stop times; other files' errors do not stop these checks."""
    before = _error_count(notices)
    seq = pd.to_numeric(frame["stop_sequence"], errors="coerce")
    notices.add_rows("invalid_integer", "ERROR", "stop_times.txt", frame, seq.isna().to_numpy(), tripId="trip_id",
                     fieldName="stop_sequence")
    arrival, bad_a = parse_times(_column(frame, "arrival_time"))
    departure, bad_d = parse_times(_column(frame, "departure_time"))
    notices.add_rows("invalid_time", "ERROR", "stop_times.txt", frame, bad_a | bad_d, tripId="trip_id",
                     stopSequence="stop_sequence")
    pickup = pd.to_numeric(_column(frame, "pickup_type", "0").replace("", "0"), errors="coerce")
    dropoff = pd.to_numeric(_column(frame, "drop_off_type", "0").replace("", "0"), errors="coerce")
    notices.add_rows("number_out_of_range", "ERROR", "stop_times.txt", frame,
                     (~pickup.isin([0, 1, 2, 3]) | ~dropoff.isin([0, 1, 2, 3])).to_numpy(), tripId="trip_id")
    if _error_count(notices) > before:
        return frame
    out = pd.DataFrame({"trip_id": frame["trip_id"].astype(str), "stop_id": frame["stop_id"].astype(str),
                        "stop_sequence": seq.astype(np.int64).to_numpy(), "arrival": arrival, "departure": departure,
                        "pickup": pickup.astype(int).to_numpy(), "dropoff": dropoff.astype(int).to_numpy(),
                        "row": np.arange(len(frame)) + 2})
    only_one = (out["arrival"] < 0) != (out["departure"] < 0)
    notices.add_rows("stop_time_with_only_arrival_or_departure_time", "ERROR", "stop_times.txt", out,
                     only_one.to_numpy(), tripId="trip_id", stopSequence="stop_sequence")
    out = out.sort_values(["trip_id", "stop_sequence"], kind="stable").reset_index(drop=True)
    first = out["trip_id"] != out["trip_id"].shift()
    last = out["trip_id"] != out["trip_id"].shift(-1)
    edge_missing = (first | last) & ((out["arrival"] < 0) | (out["departure"] < 0))
    _row_notices(notices, "missing_trip_edge", out, edge_missing)
    sizes = out.groupby("trip_id", sort=False).size()
    for trip_id in sizes[sizes < 2].index[:MAX_SAMPLES]:
        notices.add("unusable_trip", "WARNING", filename="trips.txt", tripId=trip_id)
    if _error_count(notices) > before:
        return out
    out = out[out["trip_id"].map(sizes) >= 2].reset_index(drop=True)
    # Blank intermediate times (timepoint=0): interpolate by stop order within the trip, as consumers do.
    for column in ("arrival", "departure"):
        if not (out[column] < 0).any():
            continue
        values = out[column].astype(float).where(out[column] >= 0)
        out[column] = values.groupby(out["trip_id"], sort=False).transform(
            lambda s: s.interpolate(limit_area="inside")).round().astype(np.int64)
    previous_departure = out["departure"].shift()
    backwards = (out["trip_id"] == out["trip_id"].shift()) & (out["arrival"] < previous_departure)
    _row_notices(notices, "stop_time_with_arrival_before_previous_departure_time", out, backwards,
                 previous=previous_departure)
    inverted = out["departure"] < out["arrival"]
    _row_notices(notices, "stop_time_with_arrival_before_previous_departure_time", out, inverted)
    return out.drop(columns=["row"])


def _row_notices(notices: Notices, code: str, frame: pd.DataFrame, mask: pd.Series,
                 previous: pd.Series | None = None) -> None:
    hits = frame[mask.to_numpy()]
    for index, row in hits.head(MAX_SAMPLES).iterrows():
        sample: dict[str, Any] = {"filename": "stop_times.txt", "csvRowNumber": int(row["row"]),
                                  "tripId": row["trip_id"], "stopSequence": int(row["stop_sequence"])}
        if previous is not None:
            sample["departureTime"] = int(previous[index])
            sample["arrivalTime"] = int(row["arrival"])
        notices.add(code, "ERROR" if code != "unusable_trip" else "WARNING", **sample)
    extra = len(hits) - min(len(hits), MAX_SAMPLES)
    if extra:
        notices.groups[code]["totalNotices"] += extra
