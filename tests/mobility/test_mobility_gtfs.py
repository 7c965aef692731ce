"""GTFS validation: each defect gets its canonical-validator notice code and the feed is refused."""

from __future__ import annotations

import datetime as dt

import pytest
from gtfs_builder import BASE, gtfs_zip

from cityos.mobility.gtfs import read_feed

TODAY = dt.date(2026, 12, 5)


def codes(data: bytes) -> dict[str, str]:
    tables, notices = read_feed(data, TODAY)
    report = notices.report()
    assert (tables is None) == notices.has_errors
    return {g["code"]: g["severity"] for g in report}


def test_valid_feed_is_read_with_times_past_midnight() -> None:
    tables, notices = read_feed(gtfs_zip(), TODAY)
    assert tables is not None, notices.report()
    assert not notices.has_errors
    t2 = tables.stop_times[tables.stop_times["trip_id"] == "T2"]
    assert t2["arrival"].tolist() == [23 * 3600 + 50 * 60, 24 * 3600 + 5 * 60, 24 * 3600 + 20 * 60]
    assert tables.timezone == "Asia/Shanghai"
    assert tables.service_range() == (dt.date(2026, 1, 1), dt.date(2027, 12, 31))


@pytest.mark.parametrize(("data", "code"), [
    (b"this is not a zip", "i_o_error"),
    (gtfs_zip()[:200], "i_o_error"),
    (gtfs_zip(folder="gtfs/"), "invalid_input_files_in_subfolder"),
    (gtfs_zip({"stops.txt": None}), "missing_required_file"),
    (gtfs_zip({"calendar.txt": None}), "missing_calendar_and_calendar_date_files"),
    (gtfs_zip({"routes.txt": "route_id,agency_id,route_short_name\nR1,A,1\nR2,A,2\n"}), "missing_required_column"),
    (gtfs_zip({"trips.txt": "route_id,service_id,trip_id\nR1,WK,T1\nR1,,T2\nR2,WK,T3\n"}), "missing_required_field"),
    (gtfs_zip({"stop_times.txt": BASE["stop_times.txt"].replace("T3,08:35:00,08:35:00,P4", "T3,08:35:00,08:35:00,P9")}),
     "foreign_key_violation"),
    (gtfs_zip({"trips.txt": BASE["trips.txt"].replace("R2,WK,T3", "R9,WK,T3")}), "foreign_key_violation"),
    (gtfs_zip({"stop_times.txt": BASE["stop_times.txt"].replace("T1,08:20:00,08:20:00", "T1,08:05:00,08:05:00")}),
     "stop_time_with_arrival_before_previous_departure_time"),
    (gtfs_zip({"stop_times.txt": BASE["stop_times.txt"].replace("T1,08:10:00,08:11:00", "T1,08:10:00,")}),
     "stop_time_with_only_arrival_or_departure_time"),
    (gtfs_zip({"stop_times.txt": BASE["stop_times.txt"].replace("T1,08:00:00,08:00:00", "T1,,")}),
     "missing_trip_edge"),
    (gtfs_zip({"stop_times.txt": BASE["stop_times.txt"].replace("08:10:00", "8h10")}), "invalid_time"),
    (gtfs_zip({"calendar.txt": BASE["calendar.txt"].replace("20260101,20271231", "20271231,20260101")}),
     "start_and_end_range_out_of_order"),
    (gtfs_zip({"calendar.txt": BASE["calendar.txt"].replace("20260101", "2026-01-01")}), "invalid_date"),
    (gtfs_zip({"stops.txt": BASE["stops.txt"].replace("P2,Market,31.2200,121.4700,0,",
                                                      "P2,Market,31.2200,121.4700,0,P3").replace(
        "P3,South Gate,31.2100,121.4700,0,", "P3,South Gate,31.2100,121.4700,0,P2")}), "wrong_parent_location_type"),
    (gtfs_zip({"stops.txt": BASE["stops.txt"].replace("S1,North Station,31.2300,121.4700,1,",
                                                      "S1,North Station,31.2300,121.4700,1,P2")}),
     "station_with_parent_station"),
    (gtfs_zip({"stops.txt": BASE["stops.txt"] + "P1,Again,31.2,121.4,0,\n"}), "duplicate_key"),
    (gtfs_zip({"stops.txt": BASE["stops.txt"].replace("31.2200,121.4700", "131.2200,121.4700")}),
     "number_out_of_range"),
    (gtfs_zip({"agency.txt": BASE["agency.txt"].replace("Asia/Shanghai", "Mars/Olympus")}), "invalid_timezone"),
    (gtfs_zip({"routes.txt": "route_id,agency_id,route_short_name,route_long_name,route_type\nR1,A,,,3\n"
                             "R2,A,2,Cross,3\n"}), "route_both_short_and_long_name_missing"),
    (gtfs_zip({"frequencies.txt": "trip_id,start_time,end_time,headway_secs\nT3,09:00:00,08:00:00,600\n"}),
     "start_and_end_range_out_of_order"),
])
def test_defect_is_refused_with_its_code(data: bytes, code: str) -> None:
    found = codes(data)
    assert found.get(code) == "ERROR", found


def test_circular_parents_name_the_chain() -> None:
    data = gtfs_zip({"stops.txt": BASE["stops.txt"].replace(
        "P2,Market,31.2200,121.4700,0,", "P2,Market,31.2200,121.4700,0,P3").replace(
        "P3,South Gate,31.2100,121.4700,0,", "P3,South Gate,31.2100,121.4700,0,P2")})
    tables, notices = read_feed(data, TODAY)
    assert tables is None
    samples = notices.groups["wrong_parent_location_type"]["sampleNotices"]
    assert any("P2 → P3 → P2" in s.get("message", "") or "P3 → P2 → P3" in s.get("message", "") for s in samples)


def test_notice_samples_locate_the_row() -> None:
    times = BASE["stop_times.txt"].replace("T3,08:35:00,08:35:00,P4", "T3,08:35:00,08:35:00,P9")
    _, notices = read_feed(gtfs_zip({"stop_times.txt": times}), TODAY)
    sample = notices.groups["foreign_key_violation"]["sampleNotices"][0]
    assert sample == {"childFilename": "stop_times.txt", "childFieldName": "stop_id", "parentFilename": "stops.txt",
                      "parentFieldName": "stop_id", "fieldValue": "P9", "csvRowNumber": 9}


def test_warnings_do_not_refuse() -> None:
    expired = gtfs_zip({"calendar.txt": BASE["calendar.txt"].replace("20271231", "20260301")})
    found = codes(expired)
    assert found == {"expired_calendar": "WARNING"}
    one_stop = gtfs_zip({"trips.txt": BASE["trips.txt"] + "R2,WK,T4,x\n",
                         "stop_times.txt": BASE["stop_times.txt"] + "T4,09:00:00,09:00:00,P4,1\n"})
    assert codes(one_stop) == {"unusable_trip": "WARNING"}
    assert codes(gtfs_zip({"notes.txt": "hello\n"})) == {"unknown_file": "INFO"}


def test_gbk_feed_is_decoded() -> None:
    chinese = BASE["stops.txt"].replace("North Station platform", "人民广场站站台").replace(
        "North Station", "人民广场站").replace("Market", "南京东路菜市场").replace("South Gate", "老西门").replace(
        "East Park", "东方公园")
    data = gtfs_zip({"stops.txt": chinese * 1 + "", "routes.txt": BASE["routes.txt"].replace("North-South", "南北线路")
                     .replace("Cross", "东西横贯线路")}, encoding="gbk")
    tables, notices = read_feed(data, TODAY)
    assert tables is not None, notices.report()
    assert "人民广场站" in tables.stops["stop_name"].tolist()
    assert "南北线路" in tables.routes["long_name"].tolist()
    assert notices.groups["non_utf8_encoding"]["severity"] == "INFO"


def test_undecodable_bytes_are_an_io_error() -> None:
    data = gtfs_zip({"stops.txt": None})
    import io
    import zipfile
    buffer = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as src, zipfile.ZipFile(buffer, "w") as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info))
        dst.writestr("stops.txt", b"stop_id,stop_name\n\xff\xfe\x00\x81\x00\xff,\x80\x81\xfe\n")
    found = codes(buffer.getvalue())
    assert "ERROR" in found.values()


def test_blank_intermediate_times_are_interpolated() -> None:
    data = gtfs_zip({"stop_times.txt": BASE["stop_times.txt"].replace("T1,08:10:00,08:11:00", "T1,,")})
    tables, notices = read_feed(data, TODAY)
    assert tables is not None, notices.report()
    t1 = tables.stop_times[tables.stop_times["trip_id"] == "T1"]
    assert t1["arrival"].tolist() == [8 * 3600, 8 * 3600 + 600, 8 * 3600 + 1200]
