"""Video and radar zone detectors as IoT devices (profile `traffic-zone`): a list-valued key whose items are
objects with typed, bounded fields. A zone device reporting over MQTT or the HTTP device API reaches the
accident watch's stalled-vehicle test and opens the lane's incident; every malformed reading is a dead letter
with its reason, and nothing of it is stored."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

import orjson
import pytest
from aiocoap import Code
from iot_helpers import history_count, ms
from mqtt_support import Publisher, needs_mqtt, new_prefix, start_worker, stop_worker, wait_for

from auth_tokens import Auth
from cityos.core import clock
from cityos.iot.messages import check_value
from cityos.iot.models import _spec, load_profiles
from cityos.traffic import stalls
from coap_support import coap_device_api

PLACE = [110.331, 20.021]


def zone_device(name: str) -> dict[str, Any]:
    return {"name": name, "profile": "traffic-zone", "lon": PLACE[0], "lat": PLACE[1], "department": "transport"}


def observed(name: str) -> str:
    return f"urn:ngsi-ld:TrafficFlowObserved:{name}"


def stalled_readings(segment: str, lane: str, start: datetime) -> list[dict[str, Any]]:
    """A red light's queue at the stop line (no accident), then a vehicle standing 640 m before the line with
    nothing ahead of it, for two readings: the stalled-vehicle test's confirmation."""
    queue = [{"distanceToStopLine": 1.5 + 7.5 * k, "stoppedFor": 40.0} for k in range(8)]
    stalled = [[{"distanceToStopLine": 640.0, "stoppedFor": stood},
                {"distanceToStopLine": 648.0, "stoppedFor": stood - 25}] for stood in (100.0, 130.0)]
    return [{"ts": ms(start + timedelta(seconds=30 * k)),
             "values": {"segment": segment, "lane": lane, "stoppedVehicles": stopped}}
            for k, stopped in enumerate([queue, *stalled])]


async def accidents(client: Any, auth: Auth, entity_id: str) -> list[dict[str, Any]]:
    listed = await client.get("/api/ops/incidents", headers=auth.headers("operator"))
    assert listed.status_code == 200, listed.text
    return [i for i in listed.json()["items"] if i["category"] == "traffic.accident" and i["entityId"] == entity_id]


async def one_incident(client: Any, auth: Auth, entity_id: str) -> dict[str, Any]:
    """The device's accident incident, once the bus has delivered the reading to the watch."""
    assert await wait_for(lambda: _some(client, auth, entity_id), seconds=60)
    found = await accidents(client, auth, entity_id)
    assert len(found) == 1, found
    return found[0]


async def _some(client: Any, auth: Auth, entity_id: str) -> bool:
    return bool(await accidents(client, auth, entity_id))


def check_incident(incident: dict[str, Any], zone: str) -> None:
    assert (incident["category"], incident["department"], incident["source"]) == \
        ("traffic.accident", "transport", "alarm")
    assert zone in incident["description"] and "640 m" in incident["description"], incident["description"]
    assert incident["location"] == {"type": "Point", "coordinates": PLACE}


async def test_a_zone_device_over_http_opens_the_lanes_incident(client: Any, app: Any, auth: Auth) -> None:
    made = await client.post("/api/iot/devices", json=zone_device("zone-http-1"))
    assert made.status_code == 201, made.text
    token = made.json()["token"]
    watch = app.state.accident_watch
    before = watch.detections
    # The segment as a bare id, as a camera configured with its road section would send it.
    for message in stalled_readings("haixiu-zone-h", "2", clock.now() - timedelta(minutes=5)):
        sent = await client.post(f"/api/v1/{token}/telemetry", json=message)
        assert sent.status_code == 200 and sent.json()["readings"] == 3, sent.text
    incident = await one_incident(client, auth, observed("zone-http-1"))
    check_incident(incident, "haixiu-zone-h#2")
    assert watch.detections == before + 1
    body = (await client.get(f"/ngsi-ld/v1/entities/{observed('zone-http-1')}")).json()
    assert body["refRoadSegment"]["type"] == "Relationship"
    assert body["refRoadSegment"]["object"] == "urn:ngsi-ld:RoadSegment:haixiu-zone-h"
    assert body["laneId"]["value"] == "2"
    assert body["stoppedVehicles"]["value"][0] == {"distanceToStopLine": 640.0, "stoppedFor": 130.0}
    assert await history_count(app, observed("zone-http-1"), "stoppedVehicles") == 3
    # Towed away: an empty reading ends the episode (the session's watch is shared with the traffic tests).
    cleared = await client.post(f"/api/v1/{token}/telemetry", json={"stoppedVehicles": []})
    assert cleared.status_code == 200, cleared.text
    assert await wait_for(lambda: _calm(app, "haixiu-zone-h#2"))


@needs_mqtt
async def test_a_zone_device_over_mqtt_opens_the_lanes_incident(client: Any, app: Any, auth: Auth) -> None:
    created = await app.state.iot.provision_many([zone_device("zone-mqtt-1")])
    assert not created.errors
    topics = new_prefix()
    worker = await start_worker(app, topics)
    publisher = Publisher()
    try:
        # The segment as its full URN this time: both forms name the same section.
        start = clock.now() - timedelta(minutes=5)
        # One reading an interval, as the camera sends them: readings of one entity that arrive in one ingest
        # batch are one change of the entity, and the watch sees its newest (a backfill is no live reading).
        for k, message in enumerate(stalled_readings("urn:ngsi-ld:RoadSegment:haixiu-zone-m", "1", start)):
            publisher.publish(f"{topics}/zone-mqtt-1/telemetry", message).wait_for_publish(5)
            assert await wait_for(lambda k=k: _stored(app, "zone-mqtt-1", k + 1))
        incident = await one_incident(client, auth, observed("zone-mqtt-1"))
        check_incident(incident, "haixiu-zone-m#1")
        # A malformed reading over MQTT is a dead letter of its own and feeds nothing.
        bad = {"ts": ms(start + timedelta(seconds=120)),
               "values": {"stoppedVehicles": [{"distanceToStopLine": -1, "stoppedFor": 5}]}}
        publisher.publish(f"{topics}/zone-mqtt-1/telemetry", bad).wait_for_publish(5)
        assert await wait_for(lambda: _letters_exist(client))
        letters = (await client.get("/api/iot/dead-letters")).json()["items"]
        assert [(d["reason"], d["source"], d["device"]) for d in letters] == [("out_of_range", "mqtt", "zone-mqtt-1")]
        assert "stoppedVehicles[0].distanceToStopLine" in letters[0]["detail"]
        assert await history_count(app, observed("zone-mqtt-1"), "stoppedVehicles") == 3
        publisher.publish(f"{topics}/zone-mqtt-1/telemetry", {"stoppedVehicles": []}).wait_for_publish(5)
        assert await wait_for(lambda: _calm(app, "haixiu-zone-m#1"))
    finally:
        publisher.close()
        await stop_worker(worker)


async def _calm(app: Any, zone: str) -> bool:
    """Whether the zone's stalled-vehicle episode is over (or never began)."""
    return not [key for key in app.state.accident_watch.stalls.active() if key.endswith(zone)]


async def _stored(app: Any, name: str, count: int) -> bool:
    return await history_count(app, observed(name), "stoppedVehicles") >= count


async def _letters_exist(client: Any) -> bool:
    return bool((await client.get("/api/iot/dead-letters")).json()["items"])


@pytest.fixture
async def coap(app: Any) -> AsyncIterator[Any]:
    """The app's CoAP device API on a free UDP port: `await coap(path, payload)` POSTs over real UDP."""
    async with coap_device_api(app.state.iot) as call:
        yield lambda path, payload: call(Code.POST, path, payload)


async def test_a_zone_device_over_coap_is_taken_and_its_bad_list_refused(client: Any, app: Any, coap: Any) -> None:
    made = await client.post("/api/iot/devices", json=zone_device("zone-coap-1"))
    token = made.json()["token"]
    good = {"segment": "haixiu-zone-c", "lane": "1", "stoppedVehicles": [{"distanceToStopLine": 12.5, "stoppedFor": 3}]}
    answer = await coap(f"/api/v1/{token}/telemetry", orjson.dumps(good))
    assert answer.code == Code.CHANGED, answer.payload
    assert orjson.loads(answer.payload)["readings"] == 3
    bad = {"stoppedVehicles": [{"distanceToStopLine": 12.5}]}
    answer = await coap(f"/api/v1/{token}/telemetry", orjson.dumps(bad))
    assert answer.code == Code.BAD_REQUEST
    assert [r["reason"] for r in orjson.loads(answer.payload)["rejected"]] == ["missing_field"]
    letters = (await client.get("/api/iot/dead-letters")).json()["items"]
    assert [(d["reason"], d["source"]) for d in letters] == [("missing_field", "coap")]
    assert await history_count(app, observed("zone-coap-1"), "stoppedVehicles") == 1
    assert await wait_for(lambda: _zone_seen(app, "haixiu-zone-c#1"))


def vehicles(count: int, distance: Any = 50.0, stood: Any = 10.0) -> list[dict[str, Any]]:
    return [{"distanceToStopLine": distance, "stoppedFor": stood} for _ in range(count)]


BAD_READINGS: list[tuple[str, Any, str, str]] = [
    # (what, stoppedVehicles, reason, a part of the detail)
    ("not a list", "640 m", "wrong_type", "stoppedVehicles must be a list"),
    ("an object, not a list", {"distanceToStopLine": 5, "stoppedFor": 1}, "wrong_type", "must be a list"),
    ("an item that is no object", [[640.0, 100.0]], "wrong_type", "stoppedVehicles[0] must be an object"),
    ("a null item", [*vehicles(1), None], "wrong_type", "stoppedVehicles[1] must be an object"),
    ("a missing field", [{"distanceToStopLine": 5.0}], "missing_field", "stoppedVehicles[0] lacks stoppedFor"),
    ("an unknown field", [{"distanceToStopLine": 5.0, "stoppedFor": 1, "plate": "琼A"}], "unknown_key", "'plate'"),
    ("a text distance", vehicles(1, distance="far"), "wrong_type", "distanceToStopLine must be a finite number"),
    ("a boolean time", vehicles(1, stood=True), "wrong_type", "stoppedFor must be a finite number"),
    ("a null time", vehicles(1, stood=None), "wrong_type", "stoppedFor must be a finite number"),
    ("a negative distance", [*vehicles(2), *vehicles(1, distance=-3)], "out_of_range",
     "stoppedVehicles[2].distanceToStopLine=-3 is outside [0, 20000]"),
    ("a negative time", vehicles(1, stood=-0.5), "out_of_range", "stoppedFor=-0.5 is outside [0, 86400]"),
    ("a distance too large", vehicles(1, distance=20_000.5), "out_of_range", "distanceToStopLine=20000.5"),
    ("a time too large", vehicles(1, stood=86_401), "out_of_range", "stoppedFor=86401"),
    ("too long a list", vehicles(stalls.MAX_STOPPED + 1), "out_of_range",
     f"has {stalls.MAX_STOPPED + 1} items, at most {stalls.MAX_STOPPED}"),
]


async def test_every_malformed_zone_reading_is_a_dead_letter_and_stores_nothing(client: Any, app: Any) -> None:
    made = await client.post("/api/iot/devices", json=zone_device("zone-bad-1"))
    token = made.json()["token"]
    url = f"/api/v1/{token}/telemetry"
    watch = app.state.accident_watch
    start = clock.now() - timedelta(minutes=20)
    for k, (what, stopped, reason, detail) in enumerate(BAD_READINGS):
        message = {"ts": ms(start + timedelta(seconds=30 * k)), "values": {"stoppedVehicles": stopped}}
        sent = await client.post(url, json=message)
        assert sent.status_code == 400, (what, sent.text)
        rejected = sent.json()["rejected"]
        assert [r["reason"] for r in rejected] == [reason], (what, rejected)
        assert detail in rejected[0]["detail"], (what, rejected[0]["detail"])
    # NaN and infinities are no JSON: the whole message is refused before the profile is looked at.
    for literal in (b"NaN", b"Infinity", b"1e400"):
        raw = b'{"stoppedVehicles": [{"distanceToStopLine": ' + literal + b', "stoppedFor": 5}]}'
        sent = await client.post(url, content=raw, headers={"Content-Type": "application/json"})
        assert sent.status_code == 400 and "malformed_json" in sent.text, sent.text
    # The lane's name must be text and the section a RoadSegment's id: a number, another type's URN, or no id.
    relations = [({"lane": 2}, "lane must be a string"), ({"segment": 12}, "segment must be the id of a RoadSegment"),
                 ({"segment": "urn:ngsi-ld:Building:b-1"}, "RoadSegment"), ({"segment": ""}, "RoadSegment"),
                 ({"segment": "a road/with slash"}, "RoadSegment")]
    for values, detail in relations:
        sent = await client.post(url, json=values)
        assert sent.status_code == 400 and detail in sent.text, sent.text
    # A unit suffix makes no sense on a list: its fields carry their own units.
    sent = await client.post(url, json={"stoppedVehicles@MTR": vehicles(1)})
    assert sent.status_code == 400 and "incompatible_unit" in sent.text, sent.text

    letters = (await client.get("/api/iot/dead-letters", params={"limit": 100})).json()["items"]
    expected = [reason for _, _, reason, _ in BAD_READINGS] + ["malformed_json"] * 3 \
        + ["wrong_type"] * len(relations) + ["incompatible_unit"]
    assert [d["reason"] for d in letters] == expected
    assert all(d["device"] == "zone-bad-1" and d["source"] == "http" for d in letters)
    # Nothing of any of them was stored, and the accident watch never saw the device.
    body = (await client.get(f"/ngsi-ld/v1/entities/{observed('zone-bad-1')}")).json()
    assert not {"stoppedVehicles", "refRoadSegment", "laneId"} & set(body), body
    assert await history_count(app, observed("zone-bad-1"), "stoppedVehicles") == 0
    assert not [zone for zone in watch.stalls.zones if zone.endswith("zone-bad-1")]
    device = (await client.get("/api/iot/devices/zone-bad-1")).json()
    assert device["status"] == "inactive"  # not one reading taken

    # A mixed message keeps its good keys (as for every profile) and dead-letters the bad list alone.
    mixed = await client.post(url, json={"segment": "haixiu-zone-b", "lane": "1",
                                         "stoppedVehicles": vehicles(1, distance=-1)})
    assert mixed.status_code == 200 and mixed.json()["readings"] == 2, mixed.text
    last = (await client.get("/api/iot/dead-letters", params={"limit": 100})).json()["items"][-1]
    assert last["reason"] == "out_of_range" and list(last["payload"]["values"]) == ["stoppedVehicles"]
    assert await history_count(app, observed("zone-bad-1"), "stoppedVehicles") == 0
    # The longest list the profile takes is taken whole.
    longest = await client.post(url, json={"stoppedVehicles": vehicles(stalls.MAX_STOPPED), "lane": "1",
                                           "segment": "haixiu-zone-b"})
    assert longest.status_code == 200 and longest.json()["readings"] == 3, longest.text
    body = (await client.get(f"/ngsi-ld/v1/entities/{observed('zone-bad-1')}")).json()
    assert len(body["stoppedVehicles"]["value"]) == stalls.MAX_STOPPED
    assert await wait_for(lambda: _zone_seen(app, "haixiu-zone-b#1"))


async def _zone_seen(app: Any, zone: str) -> bool:
    return any(key.endswith(zone) for key in app.state.accident_watch.stalls.zones)


def test_the_zone_profile_matches_the_stall_detectors_bounds() -> None:
    spec = load_profiles()["traffic-zone"].keys["stoppedVehicles"]
    fields = {field.key: field for field in spec.items}
    assert spec.max_items == stalls.MAX_STOPPED
    assert (fields["distanceToStopLine"].min, fields["distanceToStopLine"].max) == (0, stalls.MAX_DISTANCE_M)
    assert (fields["stoppedFor"].min, fields["stoppedFor"].max) == (0, stalls.MAX_STOOD_S)


def test_non_finite_item_values_are_refused() -> None:
    # JSON cannot carry them (the HTTP test above), but a replayed or in-process payload is a Python object.
    spec = load_profiles()["traffic-zone"].keys["stoppedVehicles"]
    for bad in (math.nan, math.inf, -math.inf):
        problem = check_value(spec, vehicles(1, distance=bad))
        assert problem is not None and problem[0] == "wrong_type" and "finite" in problem[1]


@pytest.mark.parametrize(("raw", "message"), [
    ({"type": "list", "items": {"d": {}}}, "maxItems"),
    ({"type": "list", "maxItems": 5}, "items"),
    ({"type": "list", "maxItems": 5, "items": {"inner": {"type": "list", "maxItems": 1, "items": {"d": {}}}}},
     "'list' is not one of number, boolean, string"),
    ({"type": "relationship"}, "objectType"),
    ({"type": "lists"}, "is not one of"),
])
def test_a_malformed_list_declaration_is_refused_when_profiles_load(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _spec("key", raw)

