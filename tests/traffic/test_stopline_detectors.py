"""Stop-line detectors (停车线检测器) and measured queues through the platform's control loop, on both backends.

A plan may name, per incoming lane, a stop-line detector over the lane's last tens of metres (`plan.stopline`):
its vehicles are the approach's `stopline`, the gap-out count of the `cityos` controller, where the lane's own
detector (which may watch a whole 1-4 km link) otherwise stands for it. A detector that reports the queue it
measures (`queueLength`, metres, as radar and video detectors do) gives the standing vehicles from it.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from cityos.traffic.control_loop import ControlLoop, approach_readings, detector_entity, detector_reading
from cityos.traffic.controllers.adaptive import CityOSAdaptive
from cityos.traffic.detectors import QueueWait
from cityos.traffic.signals import ApproachReading, LaneReading, View
from detector_readings import STOPLINE, TWO_PHASES, reading_attrs, write_reading

T0 = dt.datetime(2026, 12, 6, 8, 0, tzinfo=dt.UTC)



def test_a_measured_queue_gives_the_standing_vehicles() -> None:
    # 50 % of a 60 m zone is 6 cars; moving at 12 km/h on average, so the speed rule would count none standing,
    # but the detector measures a 30 m queue: 4 cars of 5 m with 2.5 m between them.
    queued = detector_reading(reading_attrs(occupancy=(50.0, "P1"), averageVehicleSpeed=(12.0, "KMH"),
                                       queueLength=(30.0, "MTR")), length=60.0)
    assert queued is not None and queued.reading.vehicles == pytest.approx(6.0)
    assert queued.reading.halting == pytest.approx(4.0)
    in_km = detector_reading(reading_attrs(occupancy=(50.0, "P1"), averageVehicleSpeed=(12.0, "KMH"),
                                      queueLength=(0.03, "KMT")), length=60.0)
    assert in_km is not None and in_km.reading.halting == pytest.approx(4.0)
    # A queue longer than the zone holds cars is capped at the cars on it (halting never exceeds vehicles).
    long = detector_reading(reading_attrs(occupancy=(50.0, "P1"), averageVehicleSpeed=(1.0, "KMH"),
                                     queueLength=(400.0, "MTR")), length=60.0)
    assert long is not None and long.reading.halting == pytest.approx(long.reading.vehicles)
    # No queue, an impossible one or one in a unit not understood: the speed rule (all standing under 5 km/h).
    for extra in ({}, {"queueLength": (-3.0, "MTR")}, {"queueLength": ("long", "MTR")},
                  {"queueLength": (30.0, "FOT")}):
        crawl = detector_reading(reading_attrs(occupancy=(50.0, "P1"), averageVehicleSpeed=(3.0, "KMH"), **extra),
                                 length=60.0)
        assert crawl is not None and crawl.reading.halting == pytest.approx(6.0), extra
    # A queue measured an hour before the occupancy (its last reading refused, or no longer measured) is not
    # today's queue: moving at 40 km/h, nobody stands.
    old = reading_attrs(occupancy=(50.0, "P1"), averageVehicleSpeed=(40.0, "KMH"))
    old.update(reading_attrs(queueLength=(60.0, "MTR"), at="2026-12-05T09:00:00Z"))
    moving = detector_reading(old, length=60.0)
    assert moving is not None and moving.reading.halting == 0.0


def test_the_stop_line_detector_is_the_approachs_gap_count() -> None:
    # A 2 km link: its own detector sees vehicles far up the lane; the stop-line detector sees none near the
    # stop line, the advance detector a few coming.
    own = {"e_in": LaneReading(vehicles=9.0, halting=0.0, waiting=12.0), "w_in": LaneReading(vehicles=3.0)}
    stopline = {"e_in": LaneReading(vehicles=0.0, length=60.0)}
    advance = {"e_in": LaneReading(vehicles=2.0, halting=1.0, length=250.0)}
    found = approach_readings(("e_in", "w_in"), own, advance, stopline)
    assert found["e_in"] == ApproachReading(stopline=0.0, vehicles=9.0, halting=1.0, waiting=12.0, arriving=2.0)
    assert found["w_in"] == ApproachReading(stopline=3.0, vehicles=3.0, halting=0.0, waiting=0.0, arriving=None)
    # A queue standing on the stop-line detector counts as the approach's halting whatever the others say.
    standing = approach_readings(("e_in",), own, {}, {"e_in": LaneReading(vehicles=8.0, halting=8.0)})["e_in"]
    assert standing.stopline == 8.0 and standing.halting == 8.0 and standing.near == 9.0
    # Without the lane's own reading there is no approach, whatever its zones read.
    assert approach_readings(("e_in",), {}, advance, stopline) == {}


def test_a_standing_queues_waiting_is_estimated_from_its_counts() -> None:
    wait = QueueWait()
    assert wait.update(100.0, 4.0) == 0.0  # first seen: nothing known of its past
    assert wait.update(110.0, 4.0) == pytest.approx(40.0)  # four cars stood ten seconds
    assert wait.update(115.0, 6.0) == pytest.approx(60.0)  # two joined: they have waited nothing yet
    # Three of six left: they take half of the total with them; the three left stood five more seconds.
    assert wait.update(120.0, 3.0) == pytest.approx(60.0 * 0.5 + 3 * 5.0)
    assert wait.update(119.0, 0.0) == pytest.approx(45.0)  # a reading from the past changes nothing
    assert wait.update(120.0, 9.0) == pytest.approx(45.0) and wait.halting == 3.0
    assert wait.update(125.0, 0.0) == 0.0  # the queue cleared
    assert wait.update(130.0, 2.0) == 0.0 and wait.update(131.0, 2.0) == pytest.approx(2.0)
    # A gap longer than `gap_s` (readings stale, a green wave): what stands now starts counting again.
    assert wait.update(131.0 + wait.gap_s + 1, 2.0) == 0.0
    assert wait.update(133.0 + wait.gap_s + 1, 2.0) == pytest.approx(4.0)


async def test_an_empty_stop_line_ends_a_green_the_lane_detector_would_hold(client: Any, app: Any,
                                                                        moving_clock: list[dt.datetime]) -> None:
    """East-west has green. Its lane detectors see a few cars far up the lanes, its stop-line detectors see
    nobody; north-south has a short standing queue. The signal whose plan names the stop-line detectors gaps
    out to north-south; the same signal without them keeps east-west (its lane detectors look discharging)."""
    made = await client.post("/api/traffic/signals", json={"id": "gapped", "controller": "cityos",
                                                           "plan": {**TWO_PHASES, "stopline": STOPLINE}})
    assert made.status_code == 201, made.text
    assert made.json()["plan"]["stopline"] == STOPLINE
    assert (await client.post("/api/traffic/signals", json={"id": "plain", "controller": "cityos",
                                                            "plan": TWO_PHASES})).status_code == 201
    loop = ControlLoop(app.state.traffic, app.state.hub.service, app.state.iot.tenant, lambda: None, None,
                       interval=1.0, stale_after=5.0)

    async def lanes(at: dt.datetime, readings: dict[str, tuple[float, float]]) -> None:
        for detector, (occupancy, speed) in readings.items():
            await write_reading(client, detector, at, occupancy, speed)

    # A queue east-west (no stop-line readings yet: both signals decide on their lanes' detectors alike).
    moving_clock[0] += dt.timedelta(seconds=6)
    await lanes(moving_clock[0], {"n_in": (0.0, 40.0), "s_in": (0.0, 40.0), "e_in": (60.0, 2.0), "w_in": (50.0, 2.0)})
    await loop.round()
    for signal in ("gapped", "plain"):
        assert (await client.get(f"/api/traffic/signals/{signal}")).json()["phase"] == 1
    assert loop.stats.zones_missing == 2 and loop.stats.stopline_used == 0

    moving_clock[0] += dt.timedelta(seconds=12)  # yellow, all-red and east-west's minimum green served
    await lanes(moving_clock[0], {"n_in": (20.0, 2.0), "s_in": (20.0, 2.0), "e_in": (10.0, 40.0),
                                  "w_in": (10.0, 40.0), "e-in-stopline": (0.0, 50.0), "w-in-stopline": (0.0, 50.0)})
    await loop.round()
    gapped = (await client.get("/api/traffic/signals/gapped")).json()
    plain = (await client.get("/api/traffic/signals/plain")).json()
    assert gapped["phase"] == 0 and gapped["fallback"] is False  # gap-out: nobody left at the stop line
    assert plain["phase"] == 1 and plain["fallback"] is False  # still "discharging" on its lane detectors
    assert loop.stats.stopline_used == 2
    await loop.stop()


async def test_the_hub_keeps_a_detectors_queue_from_its_device(client: Any, app: Any) -> None:
    """A radar detector's `queue` reading reaches the hub as `queueLength` in metres (the traffic-flow profile)."""
    made = await client.post("/api/iot/devices", json={"name": "radar-1", "profile": "traffic-flow"})
    assert made.status_code == 201, made.text
    token = made.json()["token"]
    sent = await client.post(f"/api/v1/{token}/telemetry",
                             json={"occupancy": 40.0, "speed": 8.0, "queue": 45.5, "intensity": 3})
    assert sent.status_code == 200, sent.text
    entity = (await client.get(f"/ngsi-ld/v1/entities/{detector_entity('radar-1')}")).json()
    assert entity["queueLength"]["value"] == 45.5 and entity["queueLength"]["unitCode"] == "MTR"
    found = (await app.state.hub.service.retrieve_many(app.state.iot.tenant, [detector_entity("radar-1")]))
    reading = detector_reading(found[detector_entity("radar-1")].attrs, length=60.0)
    # 40 % of 60 m is ~5 cars; the 45.5 m queue (6 cars at 7.5 m) is capped at the cars on the zone.
    assert reading is not None and reading.reading.halting == pytest.approx(reading.reading.vehicles)
    for bad in ({"queue": -1}, {"queue": "long"}, {"queue": 99999}):  # out of the profile's range or type
        answer = await client.post(f"/api/v1/{token}/telemetry", json={"occupancy": 40.0, "speed": 30.0, **bad})
        # The device hears which value was refused; the rest of the reading is kept.
        refused = [r["detail"].split()[0].split("=")[0] for r in answer.json()["rejected"]]
        assert answer.status_code == 200 and refused == ["queue"], answer.text
        after = (await client.get(f"/ngsi-ld/v1/entities/{detector_entity('radar-1')}")).json()
        assert after["queueLength"]["value"] == 45.5, (bad, answer.text)
        # The queue left from the earlier reading is not this one's: moving at 30 km/h, nobody stands.
        found = await app.state.hub.service.retrieve_many(app.state.iot.tenant, [detector_entity("radar-1")])
        now = detector_reading(found[detector_entity("radar-1")].attrs, length=60.0)
        assert now is not None and now.reading.halting == 0.0, bad


E_ADVANCE = {"lane": "e_in", "detector": "e-in-advance", "distance": 250}


@pytest.mark.parametrize("zones", [
    {"advance": [{**E_ADVANCE, "detector": "e-x"}],                              # one device, both zones
     "stopline": [{"lane": "e_in", "detector": "e-x", "distance": 60}]},
    {"stopline": [{"lane": "e_in", "detector": "n_in", "distance": 60}]},         # another lane's detector
    {"stopline": [{"lane": "e_in", "detector": "w_out", "distance": 60}]},        # an outgoing lane's detector
    {"stopline": [{"lane": "e_in", "detector": "s", "distance": 60},              # one device for two lanes
                  {"lane": "w_in", "detector": "s", "distance": 60}]},
    {"advance": [{**E_ADVANCE, "distance": 40}],                                  # reaching no further up than
     "stopline": [{"lane": "e_in", "detector": "e-in-stopline", "distance": 60}]},  # the stop-line zone
])
async def test_zone_detectors_that_overlap_are_refused(client: Any, zones: dict[str, Any]) -> None:
    response = await client.post("/api/traffic/signals", json={"id": "overlap", "plan": {**TWO_PHASES, **zones}})
    assert response.status_code == 400, response.text
    assert (await client.get("/api/traffic/signals/overlap")).status_code == 404
    both = await client.post("/api/traffic/signals", json={"id": "both", "plan": {
        **TWO_PHASES, "advance": [E_ADVANCE], "stopline": STOPLINE}})
    assert both.status_code == 201, both.text


async def test_the_controller_weighs_how_long_a_queue_has_stood(client: Any, app: Any,
                                                               moving_clock: list[dt.datetime],
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Readings carry no waiting time: the loop estimates it from the standing counts, round by round, and
    starts again after the readings went stale."""
    waited: list[float] = []
    decide = CityOSAdaptive.decide

    def seen(self: CityOSAdaptive, view: View) -> int:
        waited.append(view.approaches["n_in"].waiting)
        return decide(self, view)

    monkeypatch.setattr(CityOSAdaptive, "decide", seen)
    plan = {**TWO_PHASES, "phases": [{**p, "minGreen": 5, "maxGreen": 120} for p in TWO_PHASES["phases"]]}
    assert (await client.post("/api/traffic/signals", json={"id": "w", "controller": "cityos",
                                                            "plan": plan})).status_code == 201
    loop = ControlLoop(app.state.traffic, app.state.hub.service, app.state.iot.tenant, lambda: None, None,
                       interval=1.0, stale_after=5.0)

    async def round_after(seconds: float) -> None:
        moving_clock[0] += dt.timedelta(seconds=seconds)
        for lane, (occupancy, speed) in {"n_in": (20.0, 2.0), "s_in": (0.0, 40.0), "e_in": (0.0, 40.0),
                                         "w_in": (0.0, 40.0)}.items():
            await write_reading(client, lane, moving_clock[0], occupancy, speed)
        await loop.round()

    await round_after(1)  # north-south has green: four cars stand on n_in (20 % of 100 m), just seen
    assert waited == []  # within the minimum green the controller is not asked
    await round_after(4)
    await round_after(4)
    assert waited == [pytest.approx(16.0), pytest.approx(32.0)]  # four cars, four seconds, twice
    await round_after(60)  # nothing read for a minute: the estimate starts again
    assert waited[-1] == 0.0
    await loop.stop()
