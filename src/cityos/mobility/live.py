"""Real-time transit: vehicle positions in, GTFS-Realtime and arrivals out (one `LiveService` per app).

Positions arrive two ways:

- as IoT readings of `transit-vehicle` devices (MQTT, CoAP or HTTP; profile in cityos/iot/profiles.json):
  the IoT domain writes them to the device's `Vehicle` entity in the hub, and this service follows
  `hub.entity.changed` for such entities (domains talk through the hub, never each other's tables);
- as GTFS-Realtime VehiclePositions feeds polled from outside, configured per feed with
  CITYOS_MOBILITY_GTFSRT_SOURCES="feedId=url[,feedId=url…]" (every CITYOS_MOBILITY_GTFSRT_INTERVAL s,
  15 by default), through the platform's guarded HTTP client (cityos.core.outbound).

Both become `VehicleReport`s for the feed's `FeedTracker` (cityos.mobility.tracking), which checks them
and predicts arrivals. Out of it come the GTFS-RT TripUpdates and VehiclePositions feeds (protobuf or
JSON), real-time arrivals at a stop, on-time performance and crowding per line, and the day timetable
with predicted times that the planner routes on. Trackers live in memory, per process.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
from google.protobuf.message import DecodeError
from google.transit import gtfs_realtime_pb2

from cityos.core import clock
from cityos.core.errors import BadRequestData, ProblemError, ResourceNotFound
from cityos.core.events import Event
from cityos.core.outbound import Outbound, OutboundError, OutboundRefused
from cityos.hub.service import Change
from cityos.mobility.timetable import DayTimetable, Timetable, with_realtime
from cityos.mobility.tracking import STATUSES, FeedTracker, TripRun, VehicleReport, hold_rule, occupancy_status
from cityos.security.policy import Principal, Resource, authorize
from cityos.security.service import Forbidden

log = logging.getLogger("cityos.mobility.live")

FEED_HORIZON_S = 1800          # TripUpdates cover trips running now or leaving within this
ARRIVALS_HORIZON_S = 3600
MAX_FEED_TRIPS = 5000
POSITION_MAX_AGE_S = 600       # older positions are not published as current
ON_TIME_EARLY_S = -60          # on time: at most 1 min early and 5 min late (the usual bus definition)
ON_TIME_LATE_S = 300
CROWDED_SHARE = 0.85
GTFSRT_MAX_BYTES = 16 * 1024 * 1024
VEHICLE_TYPE = "Vehicle"
OCCUPANCY = gtfs_realtime_pb2.VehiclePosition.OccupancyStatus
STATUS = gtfs_realtime_pb2.VehiclePosition.VehicleStopStatus


def check_allowed(principal: Principal | None, action: str, tenant: str) -> None:
    decision = authorize(principal, action, Resource("mobility", tenant))
    if not decision:
        raise Forbidden(f"{action}: {decision.reason}")


class GtfsRtError(ProblemError):
    """A GTFS-Realtime feed from outside could not be fetched or is not a FeedMessage (502: upstream)."""

    status, error_type, title = 502, "https://cityos.example/errors/UpstreamFeedInvalid", "GTFS-Realtime feed invalid"


def reports_from_message(message: gtfs_realtime_pb2.FeedMessage) -> tuple[list[VehicleReport], int]:
    """The VehiclePositions of a feed message as reports, and how many entities had no trip or position."""
    out: list[VehicleReport] = []
    skipped = 0
    default_t = float(message.header.timestamp) if message.header.HasField("timestamp") else None
    for entity in message.entity:
        if not entity.HasField("vehicle"):
            continue
        v = entity.vehicle
        t = float(v.timestamp) if v.HasField("timestamp") else default_t
        if not v.HasField("trip") or not v.trip.trip_id or not v.HasField("position") or t is None:
            skipped += 1
            continue
        start_date = None
        if v.trip.start_date:
            try:
                start_date = dt.datetime.strptime(v.trip.start_date, "%Y%m%d").date()
            except ValueError:
                skipped += 1
                continue
        pos = v.position
        occupancy = OCCUPANCY.Name(v.occupancy_status) if v.HasField("occupancy_status") else None
        out.append(VehicleReport(
            vehicle_id=(v.vehicle.id if v.HasField("vehicle") and v.vehicle.id else entity.id)[:128],
            trip_id=v.trip.trip_id, lat=float(pos.latitude), lon=float(pos.longitude), timestamp=t,
            start_date=start_date, start_time=v.trip.start_time or None,
            speed_mps=float(pos.speed) if pos.HasField("speed") else None,
            bearing=float(pos.bearing) if pos.HasField("bearing") else None,
            stop_id=v.stop_id or None,
            status=STATUS.Name(v.current_status) if v.HasField("current_status") else None,
            occupancy=occupancy))
    return out, skipped


@dataclass
class _Tracked:
    version: tuple[int, str]   # the feed's version and import time
    tracker: FeedTracker


class LiveService:
    def __init__(self, mobility: Any, outbound: Outbound | None = None, expand: Any = None) -> None:
        self.mobility = mobility
        self.outbound = outbound or Outbound()
        self._trackers: dict[tuple[str, str], _Tracked] = {}
        self._queue: asyncio.Queue[tuple[str, str | None, VehicleReport]] = asyncio.Queue(maxsize=50_000)
        self._task: asyncio.Task[None] | None = None
        self._poller: asyncio.Task[None] | None = None
        self.dropped = 0
        self._iri: dict[str, str] = {}
        if expand is not None:
            for term in ("Vehicle", "latitude", "longitude", "speed", "heading", "gtfsFeedId", "gtfsTripId",
                         "gtfsStopId", "currentStatus", "passengerCount", "vehicleCapacity", "refDevice"):
                self._iri[term] = expand(term)

    # ------------------------------------------------------------------ trackers

    async def tracker(self, tenant: str, feed_id: str) -> FeedTracker:
        [(feed, timetable)] = await self.mobility.timetables(tenant, feed_id)
        key = (tenant, feed_id)
        found = self._trackers.get(key)
        version = (feed["version"], feed["importedAt"])
        # A re-imported feed (a new timetable object) starts afresh.
        if found is None or found.version != version or found.tracker.tt is not timetable:
            # Where trips hold (no early departure): CITYOS_MOBILITY_HOLD = buses (default) | all | none.
            holds = hold_rule(timetable, os.environ.get("CITYOS_MOBILITY_HOLD", "buses"))
            found = self._trackers[key] = _Tracked(version, FeedTracker(feed_id, timetable, holds=holds))
        return found.tracker

    async def ingest(self, tenant: str, feed_id: str, reports: list[VehicleReport],
                     now: float | None = None) -> dict[str, Any]:
        tracker = await self.tracker(tenant, feed_id)
        moment = clock.now().timestamp() if now is None else now
        refused: dict[str, int] = {}
        for report in sorted(reports, key=lambda r: r.timestamp):
            reason = tracker.observe(report, moment)
            if reason is not None:
                refused[reason] = refused.get(reason, 0) + 1
        return {"feedId": feed_id, "received": len(reports), "accepted": len(reports) - sum(refused.values()),
                "refused": refused}

    # ------------------------------------------------------------------ IoT readings via the hub

    def report_of(self, change: Change) -> tuple[str | None, VehicleReport] | None:
        """A transit vehicle's hub entity after a change, as (feed id, report); None for other entities."""
        after = change.after
        if after is None or not self._iri or self._iri["Vehicle"] not in after.types:
            return None
        attrs = after.attrs

        def value(term: str) -> Any:
            found = attrs.get(self._iri[term]) or []
            return found[0].get("value") if found else None

        trip, lat, lon = value("gtfsTripId"), value("latitude"), value("longitude")
        if not isinstance(trip, str) or not isinstance(lat, int | float) or not isinstance(lon, int | float):
            return None
        stamp = (attrs.get(self._iri["latitude"]) or [{}])[0].get("observedAt")
        try:
            observed = dt.datetime.fromisoformat(str(stamp).replace("Z", "+00:00")).timestamp()
        except ValueError:
            observed = clock.now().timestamp()
        speed, heading, passengers = value("speed"), value("heading"), value("passengerCount")
        capacity, status, stop = value("vehicleCapacity"), value("currentStatus"), value("gtfsStopId")
        # A door event names its stop; a plain GPS fix after it must not repeat the old one.
        status_fresh = (attrs.get(self._iri["currentStatus"]) or [{}])[0].get("observedAt") == stamp
        name = change.entity_id.rsplit(":", 1)[-1]
        feed = value("gtfsFeedId")
        report = VehicleReport(
            vehicle_id=name, trip_id=trip, lat=float(lat), lon=float(lon), timestamp=observed,
            speed_mps=float(speed) / 3.6 if isinstance(speed, int | float) else None,
            bearing=float(heading) if isinstance(heading, int | float) else None,
            stop_id=stop if isinstance(stop, str) and status_fresh else None,
            status=status if status in STATUSES and status_fresh else None,
            passengers=int(passengers) if isinstance(passengers, int | float) else None,
            capacity=int(capacity) if isinstance(capacity, int | float) else None)
        return (feed if isinstance(feed, str) else None), report

    async def on_entity_changed(self, event: Event) -> None:
        change = event.payload.get("change")
        if not isinstance(change, Change):
            return
        found = self.report_of(change)
        if found is None:
            return
        try:
            self._queue.put_nowait((str(event.payload.get("tenant", "")), found[0], found[1]))
        except asyncio.QueueFull:
            self.dropped += 1

    async def _drain(self) -> None:
        while True:
            tenant, feed_id, report = await self._queue.get()
            try:
                if feed_id is None:
                    feeds = await self.mobility.timetables(tenant)
                    feed_id = feeds[0][0]["feedId"] if len(feeds) == 1 else None
                if feed_id is not None:
                    await self.ingest(tenant, feed_id, [report])
            except (ResourceNotFound, BadRequestData, ValueError) as exc:
                log.info("vehicle %s: %s", report.vehicle_id, exc)
            except Exception:  # a broken reading must not stop the intake
                log.exception("vehicle %s: ingest failed", report.vehicle_id)
            finally:
                self._queue.task_done()

    async def settle(self) -> None:
        """Wait until the readings queued so far are in the trackers."""
        await self._queue.join()

    # ------------------------------------------------------------------ GTFS-RT from outside

    async def poll(self, tenant: str, feed_id: str, url: str) -> dict[str, Any]:
        """Fetch a GTFS-RT VehiclePositions feed (protobuf) and take its positions."""
        await self.mobility.timetables(tenant, feed_id)  # 404 for an unknown feed, before any fetch
        try:
            await self.outbound.check_url(url)
            response = await self.outbound.get(url, headers={"Accept": "application/x-protobuf"},
                                               max_bytes=GTFSRT_MAX_BYTES)
        except OutboundRefused as exc:
            raise BadRequestData(f"GTFS-RT source: {exc.reason}") from exc
        except OutboundError as exc:
            log.warning("GTFS-RT %s at %s: %s", feed_id, url, exc.reason)
            raise GtfsRtError(f"could not fetch the GTFS-RT feed of {feed_id}") from exc
        if response.status != 200:
            raise GtfsRtError(f"HTTP {response.status} from the GTFS-RT feed of {feed_id}")
        message = gtfs_realtime_pb2.FeedMessage()
        try:
            message.ParseFromString(response.content)
        except DecodeError as exc:
            raise GtfsRtError(f"the GTFS-RT feed of {feed_id} is not a protobuf FeedMessage") from exc
        if not message.header.gtfs_realtime_version:
            raise GtfsRtError(f"the GTFS-RT feed of {feed_id} has no header (gtfs_realtime_version)")
        reports, skipped = reports_from_message(message)
        summary = await self.ingest(tenant, feed_id, reports)
        if skipped:
            summary["refused"]["no_trip_or_position"] = skipped
        return summary

    @staticmethod
    def sources() -> list[tuple[str, str]]:
        raw = os.environ.get("CITYOS_MOBILITY_GTFSRT_SOURCES", "")
        out = []
        for item in raw.split(","):
            feed, _, url = item.strip().partition("=")
            if feed and url:
                out.append((feed.strip(), url.strip()))
        return out

    async def _poll_loop(self, sources: list[tuple[str, str]], every: float) -> None:
        while True:
            for feed_id, url in sources:
                try:
                    await self.poll("", feed_id, url)
                except (ProblemError, ResourceNotFound) as exc:
                    log.warning("GTFS-RT %s: %s", feed_id, getattr(exc, "detail", exc))
                except Exception:
                    log.exception("GTFS-RT %s: poll failed", feed_id)
            await asyncio.sleep(every)

    def start(self) -> None:
        self._task = asyncio.create_task(self._drain(), name="mobility-vehicles")
        sources = self.sources()
        if sources:
            every = float(os.environ.get("CITYOS_MOBILITY_GTFSRT_INTERVAL", "15"))
            self._poller = asyncio.create_task(self._poll_loop(sources, max(1.0, every)), name="mobility-gtfsrt")

    async def stop(self) -> None:
        for task in (self._task, self._poller):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    # ------------------------------------------------------------------ what the trackers tell

    def realtime_day(self, tracker: FeedTracker, day: DayTimetable, now: float) -> DayTimetable:
        """`day` with the predicted and observed times of every trip that has a vehicle."""
        rows = tracker.rows_of(day)
        base = tracker.day_start(day.date)
        times: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}
        for run in tracker.active_runs(now):
            offset = round((tracker.day_start(run.service_date) - base) / 86400) * 86400
            found = rows.get((run.trip, offset))
            if found is not None:
                times[found] = tracker.day_times(run, now, base)
        return with_realtime(day, times)

    async def trip_updates(self, principal: Principal | None, tenant: str, feed_id: str) -> Any:
        check_allowed(principal, "mobility.read", tenant)
        tracker = await self.tracker(tenant, feed_id)
        now = clock.now().timestamp()
        return await asyncio.to_thread(build_trip_updates, tracker, now)

    async def vehicle_positions(self, principal: Principal | None, tenant: str, feed_id: str) -> Any:
        check_allowed(principal, "mobility.read", tenant)
        tracker = await self.tracker(tenant, feed_id)
        return build_vehicle_positions(tracker, clock.now().timestamp())

    async def status(self, principal: Principal | None, tenant: str, feed_id: str) -> dict[str, Any]:
        check_allowed(principal, "mobility.read", tenant)
        return (await self.tracker(tenant, feed_id)).status()

    async def arrivals(self, principal: Principal | None, tenant: str, feed_id: str, stop_id: str,
                       limit: int) -> dict[str, Any]:
        check_allowed(principal, "mobility.read", tenant)
        tracker = await self.tracker(tenant, feed_id)
        if stop_id not in tracker.tt.stop_index:
            raise ResourceNotFound(f"no stop {stop_id!r} in feed {feed_id}")
        now = clock.now().timestamp()
        return await asyncio.to_thread(stop_arrivals, tracker, stop_id, now, limit)

    async def lines(self, principal: Principal | None, tenant: str, feed_id: str) -> list[dict[str, Any]]:
        check_allowed(principal, "mobility.read", tenant)
        tracker = await self.tracker(tenant, feed_id)
        return line_performance(tracker, clock.now().timestamp())

    def plan_view(self, tenant: str, feed: dict[str, Any], now: float) -> PlanView | None:
        """What the planner routes on for this feed (None while no vehicle of it was seen)."""
        found = self._trackers.get((tenant, feed["feedId"]))
        if found is None or found.version != (feed["version"], feed["importedAt"]) or not found.tracker.runs:
            return None
        return PlanView(self, found.tracker, now)


class PlanView:
    """The planner's side of real time (cityos.mobility.planner.Realtime) for one feed at one moment."""

    def __init__(self, live: LiveService, tracker: FeedTracker, now: float) -> None:
        self.live = live
        self.tracker = tracker
        self.now = now

    def day(self, day: DayTimetable) -> DayTimetable:
        return self.live.realtime_day(self.tracker, day, self.now)

    def leg(self, trip_key: str, service_date: dt.date) -> dict[str, Any] | None:
        run = self.tracker.runs.get((trip_key, service_date))
        if run is None or not run.started:
            return None
        return {"vehicleId": run.vehicle_id, "occupancyStatus": run.occupancy_status,
                "passengers": run.passengers, "capacity": run.capacity}


# ---------------------------------------------------------------------- feeds and views (pure)


def _header(message: gtfs_realtime_pb2.FeedMessage, tracker: FeedTracker, now: float, kind: str) -> None:
    message.header.gtfs_realtime_version = "2.0"
    message.header.incrementality = gtfs_realtime_pb2.FeedHeader.FULL_DATASET
    message.header.timestamp = int(now)
    message.header.feed_version = f"{tracker.feed_id}:{kind}"


def _upcoming(tracker: FeedTracker, now: float, horizon: float) -> list[TripRun]:
    """Runs of trips under way or leaving within `horizon`: those with a vehicle, and the timetable's
    others (their predictions come from the learned run and dwell times)."""
    tt: Timetable = tracker.tt
    local_date = tracker.service_date_of(now)
    out: list[TripRun] = []
    seen: set[tuple[str, dt.date]] = set()
    for run in tracker.active_runs(now):
        if run.next_pos < len(run.stops):
            out.append(run)
            seen.add((run.key, run.service_date))
    for date in (local_date - dt.timedelta(days=1), local_date):
        if tt.first_date is not None and tt.last_date is not None and not (
                tt.first_date <= date <= tt.last_date):
            continue
        base = tracker.day_start(date)
        seconds = now - base
        for dp in tt.day(date).patterns:
            running = np.flatnonzero((dp.offsets == 0) & (dp.dep[:, 0] <= seconds + horizon)
                                     & (dp.arr[:, -1] >= seconds - 300))
            for row in running.tolist():
                key = tt.trip_ids[int(dp.trips[row])]
                if (key, date) in seen:
                    continue
                candidate = tracker.run_of(key, date, keep=False)
                if candidate is not None and (candidate.sched_dep[0] >= now or len(out) < MAX_FEED_TRIPS):
                    out.append(candidate)
                    seen.add((key, date))
    return out[:MAX_FEED_TRIPS]


def build_trip_updates(tracker: FeedTracker, now: float) -> gtfs_realtime_pb2.FeedMessage:
    """GTFS-RT TripUpdates: predicted arrival and departure at the stops ahead, with delays."""
    message = gtfs_realtime_pb2.FeedMessage()
    _header(message, tracker, now, "predictions")
    tt = tracker.tt
    for run in _upcoming(tracker, now, FEED_HORIZON_S):
        if not run.started and run.sched_dep[0] < now:
            # Should have left and no vehicle reports it: the timetable is all there is (delay 0).
            predicted = [(k, float(run.sched_arr[k]), float(run.sched_dep[k]))
                         for k in np.flatnonzero(run.sched_arr >= now).tolist()]
        else:
            predicted = tracker.predict(run, now)
        if not predicted:
            continue
        entity = message.entity.add()
        entity.id = f"{tracker.feed_id}:{run.key}:{run.service_date.strftime('%Y%m%d')}"
        update = entity.trip_update
        _describe_trip(update.trip, run, tt)
        update.trip.schedule_relationship = gtfs_realtime_pb2.TripDescriptor.SCHEDULED
        if run.vehicle_id:
            update.vehicle.id = run.vehicle_id
        update.timestamp = int(run.last_t or now)
        occupancy = run.occupancy_status
        for k, arrive, leave in predicted:
            stu = update.stop_time_update.add()
            stu.stop_id = tt.stop_ids[int(run.stops[k])]
            stu.arrival.time = round(arrive)
            stu.arrival.delay = round(arrive - run.sched_arr[k])
            stu.departure.time = round(leave)
            stu.departure.delay = round(leave - run.sched_dep[k])
            if occupancy is not None and k == predicted[0][0]:
                stu.departure_occupancy_status = OCCUPANCY.Value(occupancy)
            stu.schedule_relationship = gtfs_realtime_pb2.TripUpdate.StopTimeUpdate.SCHEDULED
        update.delay = update.stop_time_update[0].arrival.delay
    return message


def _describe_trip(trip: Any, run: TripRun, tt: Timetable) -> None:
    """A GTFS-RT TripDescriptor of `run`: its key is `trip_id` or `trip_id@start_time` (frequency trips)."""
    trip_id, _, start = run.key.partition("@")
    trip.trip_id = trip_id
    if start:
        trip.start_time = start
    trip.route_id = tt.route_ids[run.route]
    trip.start_date = run.service_date.strftime("%Y%m%d")


def build_vehicle_positions(tracker: FeedTracker, now: float) -> gtfs_realtime_pb2.FeedMessage:
    message = gtfs_realtime_pb2.FeedMessage()
    _header(message, tracker, now, "positions")
    tt = tracker.tt
    for run in tracker.active_runs(now):
        if run.last_t is None or now - run.last_t > POSITION_MAX_AGE_S or run.next_pos >= len(run.stops):
            continue
        entity = message.entity.add()
        entity.id = f"{tracker.feed_id}:{run.vehicle_id or run.key}"
        v = entity.vehicle
        _describe_trip(v.trip, run, tt)
        if run.vehicle_id:
            v.vehicle.id = run.vehicle_id
        v.position.latitude = run.last_lat
        v.position.longitude = run.last_lon
        if run.speed_mps is not None:
            v.position.speed = run.speed_mps
        if run.bearing is not None:
            v.position.bearing = run.bearing
        pos = run.stopped_at if run.stopped_at is not None else run.next_pos
        v.stop_id = tt.stop_ids[int(run.stops[pos])]
        v.current_status = STATUS.STOPPED_AT if run.stopped_at is not None else STATUS.IN_TRANSIT_TO
        v.timestamp = int(run.last_t)
        occupancy = run.occupancy_status
        if occupancy is not None:
            v.occupancy_status = OCCUPANCY.Value(occupancy)
        if run.passengers is not None and run.capacity:
            v.occupancy_percentage = round(100 * run.passengers / run.capacity)
    return message


def _iso(tracker: FeedTracker, epoch: float) -> str:
    return dt.datetime.fromtimestamp(round(epoch), tracker.zone).isoformat()


def stop_arrivals(tracker: FeedTracker, stop_id: str, now: float, limit: int) -> dict[str, Any]:
    """The next departures at a stop (or the platforms of a station) with predicted times."""
    tt = tracker.tt
    stop = tt.stop_index[stop_id]
    wanted = {stop} | {int(s) for s in np.flatnonzero(tt.parent == stop)}
    rows = []
    for run in _upcoming(tracker, now, ARRIVALS_HORIZON_S):
        positions = [k for k, s in enumerate(run.stops.tolist()) if s in wanted]
        if not positions:
            continue
        predicted = {k: (a, d) for k, a, d in tracker.predict(run, now)} \
            if run.started or run.sched_dep[0] >= now - 60 else {}
        for k in positions:
            if k == len(run.stops) - 1:
                continue  # the trip ends here: nobody boards
            realtime = k in predicted
            leave = predicted[k][1] if realtime else float(run.sched_dep[k])
            if not now - 30 <= leave <= now + ARRIVALS_HORIZON_S or (not realtime and run.started):
                continue
            route = tt.route_info[run.route]
            rows.append({
                "tripId": run.key, "routeId": route["id"], "route": route["shortName"] or route["longName"],
                "routeType": route["type"], "routeColor": route["color"],
                "headsign": tt.trip_headsign[run.trip] or None, "stopId": tt.stop_ids[int(run.stops[k])],
                "scheduledDeparture": _iso(tracker, float(run.sched_dep[k])),
                "predictedDeparture": _iso(tracker, leave), "delay": round(leave - run.sched_dep[k]),
                "realTime": run.started, "vehicleId": run.vehicle_id, "occupancyStatus": run.occupancy_status,
                "minutes": max(0, int((leave - now) // 60)), "_at": leave})
    rows.sort(key=lambda r: r["_at"])
    for r in rows:
        del r["_at"]
    return {"feedId": tracker.feed_id, "stopId": stop_id, "stopName": tt.stop_names[stop],
            "lat": float(tt.lat[stop]), "lon": float(tt.lon[stop]), "now": _iso(tracker, now),
            "arrivals": rows[:limit]}


def line_performance(tracker: FeedTracker, now: float) -> list[dict[str, Any]]:
    """Per route: on-time share of the departures observed in the last 2 hours, mean delay, vehicles
    running, their mean load and how many are crowded."""
    tt = tracker.tt
    per: dict[int, dict[str, Any]] = {}
    for run in tracker.active_runs(now):
        line = per.setdefault(run.route, {"delays": [], "vehicles": [], "loads": [], "crowded": 0})
        for k, t in run.departures.items():
            if now - 7200 <= t <= now and k < len(run.stops) - 1:
                line["delays"].append(t - float(run.sched_dep[k]))
        if run.next_pos < len(run.stops) and run.last_t is not None and now - run.last_t <= POSITION_MAX_AGE_S:
            share = run.passengers / run.capacity if run.passengers is not None and run.capacity else None
            line["vehicles"].append({"vehicleId": run.vehicle_id, "tripId": run.key, "lat": run.last_lat,
                                     "lon": run.last_lon, "bearing": run.bearing,
                                     "delay": _current_delay(tracker, run, now),
                                     "occupancyStatus": run.occupancy_status,
                                     "load": None if share is None else round(share, 2)})
            if share is not None:
                line["loads"].append(share)
                line["crowded"] += share >= CROWDED_SHARE
    out = []
    for route, line in sorted(per.items()):
        info = tt.route_info[route]
        delays = np.array(line["delays"], dtype=float)
        on_time = ((delays >= ON_TIME_EARLY_S) & (delays <= ON_TIME_LATE_S)) if len(delays) else delays
        mean_load = float(np.mean(line["loads"])) if line["loads"] else None
        out.append({"routeId": info["id"], "route": info["shortName"] or info["longName"],
                    "routeLongName": info["longName"], "routeType": info["type"], "routeColor": info["color"],
                    "departuresObserved": len(delays),
                    "onTimeShare": round(float(on_time.mean()), 3) if len(delays) else None,
                    "meanDelayS": round(float(delays.mean()), 1) if len(delays) else None,
                    "vehicles": line["vehicles"], "meanLoad": None if mean_load is None else round(mean_load, 2),
                    "crowdedVehicles": line["crowded"],
                    "occupancyStatus": occupancy_status(round(100 * mean_load), 100) if mean_load is not None
                    else None})
    return out


def _current_delay(tracker: FeedTracker, run: TripRun, now: float) -> int | None:
    predicted = tracker.predict(run, now)
    if not predicted:
        return None
    k, arrive, _leave = predicted[0]
    return round(arrive - run.sched_arr[k])
