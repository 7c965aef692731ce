"""The cockpit's traffic layer end to end: the city's road grid from the hub coloured by GB/T 33171
level, signals, an emergency run, a car park and a traffic incident on the map; the city TPI tile with
its 15-minute forecast; a click on a jammed segment shows its diversion. One page load."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from cockpit_harness import Server, screenshot
from cockpit_seed import Seeded
from test_web_cockpit_e2e import css, map_stats, sign_in, wait_for

from cityos.traffic.congestion.grid import city_sections

pytestmark = pytest.mark.slow

JAM = "road-ew-02-04"
# Speeds giving each GB/T level on a street (secondary) and an arterial.
SPEEDS = {"secondary": (50.0, 30.0, 20.0, 12.0, 6.0), "arterial": (50.0, 35.0, 25.0, 17.0, 8.0)}
LINKS = [{"in": "n_in", "out": "s_out"}, {"in": "s_in", "out": "n_out"}, {"in": "e_in", "out": "w_out"},
         {"in": "w_in", "out": "e_out"}]


def level_for(n: int, segment: str) -> int:
    """A spread of levels, mostly free-flowing, the test's segment severely jammed."""
    if segment == JAM:
        return 4
    return (0, 0, 0, 0, 1, 1, 2, 0, 3, 0, 4, 1)[n % 12]


def seed_traffic(server: Server) -> dict[str, Any]:
    sections = city_sections(42)
    by_id = {s.id: s for s in sections}
    with server.http(server.admin) as http:
        assert http.post("/api/traffic/congestion/segments/grid").status_code == 201
        start = dt.datetime.now(dt.UTC).replace(second=0, microsecond=0) - dt.timedelta(minutes=50)
        for k in range(10):
            at = (start + dt.timedelta(minutes=5 * k)).isoformat()
            readings = [{"segmentId": s.id, "speedKmh": SPEEDS[s.road_class][level_for(n, s.id)],
                         "flowVph": 800.0, "observedAt": at} for n, s in enumerate(sections)]
            made = http.post("/api/traffic/congestion/readings", json={"readings": readings})
            assert made.status_code == 200, made.text
        assert http.post("/api/traffic/congestion/forecast/train", json={"days": 1}).status_code == 200
        # Two signals at the jam's ends (their cabinets are devices with a place), an ambulance between them.
        for n, node in enumerate((by_id[JAM].line.coords[0], by_id[JAM].line.coords[-1])):
            device = http.post("/api/iot/devices", json={"name": f"tl-cabinet-{n}", "profile": "traffic-signal",
                                                         "lon": node[0], "lat": node[1]})
            assert device.status_code == 201, device.text
            signal = http.post("/api/traffic/signals", json={
                "id": f"tl-{n}", "name": f"路口 {n}", "device": f"tl-cabinet-{n}",
                "plan": {"phases": [{"state": "GGrr", "minGreen": 5, "maxGreen": 60, "fixedGreen": 30},
                                    {"state": "rrGG", "minGreen": 5, "maxGreen": 60, "fixedGreen": 30}],
                         "yellow": 3, "allRed": 2, "conflicts": [[0, 2], [0, 3], [1, 2], [1, 3]], "links": LINKS}})
            assert signal.status_code == 201, signal.text
        run = http.post("/api/traffic/preemptions", json={
            "vehicle": "120-急救-07", "incident": "1", "speed": 12.0,
            "signals": [{"signal": "tl-0", "phase": 1, "distance": 900}, {"signal": "tl-1", "phase": 1,
                                                                            "distance": 1500}]})
        assert run.status_code == 200, run.text
        middle = by_id[JAM].line.interpolate(0.5, normalized=True)
        park = http.post("/api/parking/carparks", json={"name": "万绿园停车场", "lat": middle.y + 0.004,
                                                        "lon": middle.x, "totalSpotNumber": 120})
        assert park.status_code == 201, park.text
        incident = http.post("/api/ops/incidents", json={
            "category": "traffic.accident", "title": "追尾事故 Rear-end collision",
            "location": {"type": "Point", "coordinates": [middle.x, middle.y]}})
        assert incident.status_code == 201, incident.text
    candidates = [by_id[JAM].line.interpolate(f / 20, normalized=True) for f in range(2, 19)]
    return {"sections": len(sections), "line": [[p.x, p.y] for p in candidates]}


def test_web_cockpit_traffic_layer(server: Server, browser: Any, seeded: Seeded) -> None:
    seed = seed_traffic(server)
    secret = server.create_user("op-traffic", "operator")
    browser.delete_all_cookies()  # an earlier test's user may still be signed in
    sign_in(browser, server, "op-traffic", secret)
    stats = wait_for(lambda: (s := map_stats(browser)).get("counts", {}).get("segments") == seed["sections"]
                     and s["counts"].get("emergency") == 1 and s["counts"].get("parking") == 1
                     and s["counts"].get("trafficIncidents") == 1 and s["counts"].get("signals") == 2 and s,
                     timeout=60, what="the traffic layer drawn")
    assert {"0", "4"} <= set(stats["levels"])  # free-flowing and severely jammed segments, coloured apart
    assert stats["layers"]["ov-traffic-line"] == "visible" and stats["visible"]["traffic"]
    tile = wait_for(lambda: [e.text for e in css(browser, ".cityos-kpi-traffic") if "+15 min" in e.text],
                    what="the city TPI tile with its forecast")[0]
    assert "交通指数 City TPI" in tile and "15分钟后" in tile
    assert css(browser, ".cityos-tpi-trend svg polyline")  # the last hour's trend
    legend = css(browser, ".cityos-tpi-legend")[0].text
    for level in ("畅通", "基本畅通", "轻度拥堵", "中度拥堵", "严重拥堵"):
        assert level in legend
    screenshot(browser, "20-cockpit-traffic-layer")

    # Click the jammed segment where the map draws it and nothing covers it (pins and clusters of other
    # tests' incidents and devices are HTML over the canvas): its forecast and a way round.
    line = seed["line"]
    centre = line[len(line) // 2]
    browser.execute_script("const m = cityosMap.maps[Object.keys(cityosMap.maps).pop()].map;"
                           f"m.jumpTo({{center: [{centre[0]}, {centre[1]}], zoom: 14.5}});")
    wait_for(lambda: browser.execute_script(
        "const m = cityosMap.maps[Object.keys(cityosMap.maps).pop()].map; return m.loaded() && !m.isMoving();"),
        what="the map settled")
    point = wait_for(lambda: browser.execute_script(
        "const m = cityosMap.maps[Object.keys(cityosMap.maps).pop()].map; const c = m.getCanvas();"
        "const r = c.getBoundingClientRect();"
        "for (const [lon, lat] of arguments[0]) { const p = m.project([lon, lat]);"
        "  if (p.x < 40 || p.y < 40 || p.x > r.width - 40 || p.y > r.height - 40) continue;"
        "  if (document.elementFromPoint(r.left + p.x, r.top + p.y) === c &&"
        "      m.queryRenderedFeatures(p, {layers: ['ov-traffic-line']}).some(f => f.properties.id === arguments[1]))"
        "    return [r.left + p.x, r.top + p.y]; }"
        "return null;", line, JAM), what="a clear point on the jammed segment")
    # The mouse events a click makes, at that point of the canvas (MapLibre turns them into its click).
    browser.execute_script(
        "const c = document.querySelector('.cityos-map canvas');"
        "for (const type of ['mousedown', 'mouseup', 'click']) c.dispatchEvent(new MouseEvent(type,"
        "  {bubbles: true, cancelable: true, clientX: arguments[0], clientY: arguments[1], button: 0}));",
        point[0], point[1])
    screenshot(browser, "21-cockpit-traffic-clicked")
    routes = wait_for(lambda: [e.text for e in css(browser, ".cityos-diversion-route")], what="the diversion advice")
    assert routes[0].startswith("绕行") and "分钟 min" in routes[0]
    panel = css(browser, ".cityos-diversion")[0].text
    assert "严重拥堵" in panel and "模型 model ridge" in panel and "CST" in panel
    wait_for(lambda: map_stats(browser)["counts"].get("diversion", 0) >= 1, what="the diversion drawn")
    assert map_stats(browser)["selected"] is None  # the click was the segment's, not its district's
    screenshot(browser, "21-cockpit-traffic-diversion")
