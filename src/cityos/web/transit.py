"""智慧出行 pages, every figure through the mobility API (public data: no sign-in needed for the portal).

- `/transit` (portal): a trip planner over the city's base map (the cockpit's offline MapLibre map):
  from / to stops, a time, itineraries with their legs, real-time delays and crowding; the chosen
  itinerary is drawn on the map. Below, the next departures at a stop with predicted times.
- `/cockpit/transit` (cockpit): buses on the map coloured by delay, and per line the on-time share, mean
  delay, vehicles running and crowded vehicles.

Times are shown in the city's zone (CITYOS_TIMEZONE).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from fastapi.responses import RedirectResponse
from nicegui import ui

from cityos.core import clock, messages
from cityos.web.auth import COCKPIT_ROLES, Session, require_login
from cityos.web.cockpit.citymap import CityMap
from cityos.web.portal.common import call, frame, problem_text
from cityos.web.shell import frame as dark_frame
from cityos.web.shell import panel
from cityos.web.tiles import city_frame

OCCUPANCY = {"EMPTY": ("空车 Empty", "#16a34a"), "MANY_SEATS_AVAILABLE": ("座位充足 Many seats", "#16a34a"),
             "FEW_SEATS_AVAILABLE": ("座位较少 Few seats", "#ca8a04"),
             "STANDING_ROOM_ONLY": ("仅站位 Standing room", "#ea580c"),
             "CRUSHED_STANDING_ROOM_ONLY": ("拥挤 Crowded", "#dc2626"), "FULL": ("满载 Full", "#991b1b"),
             "NOT_ACCEPTING_PASSENGERS": ("不载客 Not boarding", "#6b7280")}
MODES = {"BUS": ("公交 Bus", "directions_bus"), "SUBWAY": ("地铁 Metro", "subway"), "WALK": ("步行 Walk",
         "directions_walk"), "BICYCLE": ("骑行 Bike", "pedal_bike"), "RAIL": ("铁路 Rail", "train"),
         "TRAM": ("有轨电车 Tram", "tram")}
WALK_COLOUR = "#64748b"
REFRESH_S = 5.0


def hhmm(value: Any) -> str:
    return messages.local_time(value, "%H:%M", zone=False)


def delay_text(seconds: int | None) -> tuple[str, str]:
    """('晚点 4 分 Late 4 min', colour) for a delay in seconds."""
    if seconds is None:
        return "计划 Scheduled", "#64748b"
    minutes = round(seconds / 60)
    if minutes >= 1:
        return f"晚点 {minutes} 分 Late {minutes} min", "#dc2626" if minutes >= 5 else "#ea580c"
    if minutes <= -1:
        return f"早到 {-minutes} 分 Early {-minutes} min", "#2563eb"
    return "准点 On time", "#16a34a"


def delay_colour(seconds: int | None) -> str:
    if seconds is None:
        return "#94a3b8"
    if seconds > 300:
        return "#ef4444"
    if seconds > 120:
        return "#f59e0b"
    if seconds < -60:
        return "#3b82f6"
    return "#22c55e"


def badge(text: str, colour: str, classes: str = "") -> None:
    ui.label(text).classes(f"text-xs px-2 py-0.5 rounded text-white {classes}").style(f"background:{colour}")


async def first_feed(feed: str | None) -> dict[str, Any] | None:
    reply = await call("GET", "/api/mobility/feeds")
    feeds = reply.body if reply.ok and isinstance(reply.body, list) else []
    chosen = [f for f in feeds if f["feedId"] == feed] if feed else feeds
    return chosen[0] if chosen else None


def itinerary_layers(itinerary: dict[str, Any]) -> dict[str, Any]:
    """An itinerary as the map's transit layers: its legs (routes in their colour, walks grey) and stops."""
    features, stops = [], []
    west = south = 999.0
    east = north = -999.0
    for leg in itinerary["legs"]:
        colour = f"#{leg['routeColor']}" if leg.get("routeColor") else ("#0891b2" if leg["transitLeg"] else WALK_COLOUR)
        coords = leg["legGeometry"]["coordinates"]
        features.append({"type": "Feature", "geometry": {"type": "LineString", "coordinates": coords},
                         "properties": {"colour": colour, "width": 6 if leg["transitLeg"] else 3}})
        for lon, lat in coords:
            west, east, south, north = min(west, lon), max(east, lon), min(south, lat), max(north, lat)
        if leg["transitLeg"]:
            for place in (leg["from"], leg["to"]):
                stops.append([place["lat"], place["lon"], place["name"], colour])
    return {"transitLines": {"type": "FeatureCollection", "features": features}, "transitStops": stops,
            "fit": [west, south, east, north] if features else []}


# ---------------------------------------------------------------------------------- portal


@ui.page("/transit", title="智慧出行 Trip planner · CityOS")
async def transit_page(feed: str | None = None, origin: str | None = None, destination: str | None = None,
                       stop: str | None = None) -> None:
    """`origin`, `destination` and `stop` preselect stops by id (a link from elsewhere plans at once)."""
    session = Session.current()
    if session.token:
        await session.me()
    with frame(session if session.user else None, "智慧出行 Trip planner", active="/transit", citizen=False):
        chosen = await first_feed(feed)
        if chosen is None:
            ui.label("尚无公交数据 No transit feed imported yet").classes("text-grey-8 t-no-feed")
            return
        feed_id = chosen["feedId"]
        listed = await call("GET", f"/api/mobility/feeds/{quote(feed_id)}/stops?limit=5000")
        stops = [s for s in (listed.body["items"] if listed.ok else [])
                 if s["locationType"] in (0, 1) and not s["parentStation"]]
        stops.sort(key=lambda s: s["name"])
        options = {f"{s['lat']},{s['lon']}|{s['stopId']}": s["name"] for s in stops}
        keys = list(options)
        by_id = {k.split("|")[1]: k for k in keys}
        with ui.row().classes("w-full gap-3 no-wrap items-stretch"):
            with ui.column().classes("flex-[2] min-w-[420px] gap-3"):
                with ui.card().classes("w-full t-plan-form"):
                    ui.label("路线规划 Plan a trip").classes("text-lg font-semibold")
                    start = ui.select(options, label="出发 From", with_input=True,
                                      value=by_id.get(origin or "") or (keys[0] if keys else None)) \
                        .classes("w-full t-from")
                    end = ui.select(options, label="到达 To", with_input=True,
                                    value=by_id.get(destination or "") or (keys[-1] if keys else None)) \
                        .classes("w-full t-to")
                    now_local = clock.now().astimezone(messages.city_zone())
                    when = ui.input("出发时间 Depart at (HH:MM)", value=now_local.strftime("%H:%M")) \
                        .classes("w-40 t-time")
                    plan_button = ui.button("规划 Plan", icon="route").classes("t-plan")
                results = ui.column().classes("w-full gap-2 t-itineraries")
            with ui.column().classes("flex-[3] gap-3"):
                with ui.card().classes("w-full p-1").style("height: 460px"):
                    bounds, labels = city_frame()
                    city = CityMap(bounds, labels, "w-full h-full t-map")
                with ui.card().classes("w-full t-arrivals-card"):
                    ui.label("实时到站 Real-time departures").classes("text-lg font-semibold")
                    stop_select = ui.select({k.split("|")[1]: v for k, v in options.items()}, label="站点 Stop",
                                            with_input=True,
                                            value=stop if stop in by_id else (keys[0].split("|")[1] if keys else None)
                                            ).classes("w-full t-stop")
                    arrivals_box = ui.column().classes("w-full gap-1 t-arrivals")

    state: dict[str, Any] = {"layers": {}}

    async def plan() -> None:
        results.clear()
        if not start.value or not end.value:
            return
        params = {"fromPlace": start.value.split("|")[0], "toPlace": end.value.split("|")[0],
                  "time": when.value or "", "feedId": feed_id, "modes": "TRANSIT,WALK"}
        reply = await call("GET", "/api/mobility/plan?" + "&".join(f"{k}={quote(str(v))}" for k, v in params.items()))
        with results:
            if not reply.ok:
                ui.label(f"无法规划 Cannot plan: {problem_text(reply.body, reply.status)}") \
                    .classes("text-red-700 t-plan-error")
                return
            itineraries = reply.body["plan"]["itineraries"]
            if not itineraries:
                ui.label("未找到公交方案 No transit connection; try another time").classes("text-grey-8 t-no-route")
                return
            for n, itinerary in enumerate(itineraries[:5]):
                itinerary_card(n, itinerary)
        if itineraries:
            await show(itineraries[0])

    async def show(itinerary: dict[str, Any]) -> None:
        state["layers"] = itinerary_layers(itinerary)
        await city.update(state["layers"])

    def itinerary_card(n: int, itinerary: dict[str, Any]) -> None:
        minutes = round(itinerary["duration"] / 60)
        card = ui.card().classes(f"w-full cursor-pointer t-itinerary t-itinerary-{n}")
        card.on("click", lambda it=itinerary: show(it))
        with card:
            with ui.row().classes("items-center gap-2"):
                ui.label(f"{hhmm(itinerary['startTime'])} → {hhmm(itinerary['endTime'])}") \
                    .classes("text-lg font-semibold")
                ui.label(f"{minutes} 分钟 min · 换乘 {itinerary['transfers']} 次 transfers").classes("text-grey-8")
                if any(leg.get("realTime") for leg in itinerary["legs"]):
                    badge("实时 Real time", "#0891b2", "t-realtime")
            for leg in itinerary["legs"]:
                leg_row(leg)

    def leg_row(leg: dict[str, Any]) -> None:
        label, icon = MODES.get(leg["mode"], (leg["mode"], "commute"))
        if not leg["transitLeg"] and leg["distance"] < 1:
            return  # the stop is the place itself: no walk to show
        with ui.row().classes("items-center gap-x-2 gap-y-1 text-sm t-leg"):
            ui.icon(icon).classes("text-cyan-700")
            ui.label(hhmm(leg["startTime"])).classes("font-mono")
            if leg["transitLeg"]:
                colour = f"#{leg['routeColor']}" if leg.get("routeColor") else "#0891b2"
                badge(f"{leg['route']}", colour)
                ui.label(f"{leg['from']['name']} → {leg['to']['name']}").classes("whitespace-normal")
                ui.label(f"({len(leg['intermediateStops']) + 1} 站 stops)").classes("text-grey-7")
                if leg.get("realTime"):
                    text, colour = delay_text(leg.get("departureDelay"))
                    badge(text, colour, "t-delay")
                occupancy = OCCUPANCY.get(leg.get("occupancyStatus") or "")
                if occupancy:
                    badge(occupancy[0], occupancy[1], "t-crowding")
            else:
                ui.label(f"{label} {round(leg['distance'])} 米 m · {round(leg['duration'] / 60)} 分 min") \
                    .classes("text-grey-8")

    async def arrivals() -> None:
        stop = stop_select.value
        arrivals_box.clear()
        if not stop:
            return
        reply = await call("GET", f"/api/mobility/realtime/{quote(feed_id)}/arrivals?stopId={quote(stop)}&limit=8")
        with arrivals_box:
            if not reply.ok:
                ui.label(problem_text(reply.body, reply.status)).classes("text-red-700")
                return
            rows = reply.body["arrivals"]
            if not rows:
                ui.label("一小时内无车 No departure within the hour").classes("text-grey-8 t-no-arrivals")
            for row in rows:
                with ui.row().classes("items-center gap-2 no-wrap text-sm t-arrival"):
                    colour = f"#{row['routeColor']}" if row.get("routeColor") else "#0891b2"
                    badge(str(row["route"]), colour)
                    ui.label(f"开往 to {row['headsign'] or ''}").classes("truncate")
                    ui.space()
                    ui.label(f"{row['minutes']} 分 min").classes("font-semibold")
                    ui.label(hhmm(row["predictedDeparture"])).classes("font-mono")
                    if row["realTime"]:
                        text, tone = delay_text(row["delay"])
                        badge(text, tone, "t-delay")
                    occupancy = OCCUPANCY.get(row.get("occupancyStatus") or "")
                    if occupancy:
                        badge(occupancy[0], occupancy[1], "t-crowding")

    plan_button.on_click(plan)
    stop_select.on_value_change(arrivals)

    async def tick() -> None:
        await city.update(state["layers"] or {"transitLines": {"type": "FeatureCollection", "features": []}})

    ui.timer(1.0, tick)
    ui.timer(30.0, arrivals)
    await arrivals()
    if origin and destination:
        await plan()


# ---------------------------------------------------------------------------------- cockpit


@ui.page("/cockpit/transit", title="公交运行 Transit operations · CityOS")
async def cockpit_transit_page(feed: str | None = None) -> RedirectResponse | None:
    session = await require_login(COCKPIT_ROLES)
    if not isinstance(session, Session):
        return session
    with dark_frame(session, "公交运行 Transit operations", active="/cockpit/transit"):
        chosen = await first_feed(feed)
        if chosen is None:
            ui.label("尚无公交数据 No transit feed imported yet").classes("text-slate-300 t-no-feed")
            return None
        feed_id = chosen["feedId"]
        with ui.row().classes("w-full gap-3 no-wrap items-stretch").style("height: calc(100vh - 120px)"):
            with panel(classes="flex-[3] h-full p-1 relative"):
                bounds, labels = city_frame()
                city = CityMap(bounds, labels, "w-full h-full t-map")
                with ui.element("div").classes("absolute bottom-3 left-3 z-[1000] cityos-panel p-2 text-xs") \
                        .style("background: rgba(6,13,27,.85) !important"):
                    ui.label("公交车 Buses by delay").classes("cityos-panel-title text-xs")
                    for colour, text in (("#22c55e", "准点 On time (≤ 2 min)"), ("#f59e0b", "晚点 2–5 min late"),
                                         ("#ef4444", "晚点 > 5 min late"), ("#3b82f6", "早到 Early")):
                        with ui.row().classes("items-center gap-1 no-wrap"):
                            ui.element("span").style(f"display:inline-block;width:10px;height:10px;"
                                                     f"border-radius:50%;background:{colour}")
                            ui.label(text).classes("text-slate-300")
            with ui.column().classes("flex-1 min-w-[420px] max-w-[560px] h-full gap-3 no-wrap"):
                with panel("线路准点率 On-time performance by line", classes="w-full flex-1 overflow-auto t-lines"):
                    lines_box = ui.column().classes("w-full gap-1")
                with panel("拥挤线路 Crowded lines", classes="w-full overflow-auto t-crowded"):
                    crowded_box = ui.column().classes("w-full gap-1")
                summary = ui.label("").classes("text-slate-400 text-xs t-summary")

    async def refresh() -> None:
        reply = await call("GET", f"/api/mobility/realtime/{quote(feed_id)}/lines")
        if not reply.ok:
            summary.text = problem_text(reply.body, reply.status)
            return
        lines = reply.body
        buses = [[v["lat"], v["lon"], delay_colour(v["delay"]),
                  f"{line['route']} · {v['vehicleId']} · {delay_text(v['delay'])[0]}"
                  + (f" · {OCCUPANCY[v['occupancyStatus']][0]}" if v.get("occupancyStatus") in OCCUPANCY else "")]
                 for line in lines for v in line["vehicles"]]
        await city.update({"buses": buses})
        lines_box.clear()
        with lines_box:
            header = ("线路 Line", "车辆 Buses", "准点率 On time", "平均晚点 Mean delay")
            with ui.row().classes("w-full text-xs text-slate-400 no-wrap"):
                for text in header:
                    ui.label(text).classes("flex-1")
            for line in lines:
                share = line["onTimeShare"]
                with ui.row().classes("w-full text-sm text-slate-200 no-wrap t-line"):
                    ui.label(str(line["route"])).classes("flex-1 font-semibold")
                    ui.label(str(len(line["vehicles"]))).classes("flex-1")
                    ui.label("—" if share is None else f"{share * 100:.0f}%").classes(
                        "flex-1 " + ("text-green-400" if share is not None and share >= 0.8 else "text-amber-300"))
                    delay = line["meanDelayS"]
                    ui.label("—" if delay is None else f"{delay / 60:+.1f} 分 min").classes("flex-1")
        crowded = sorted((line for line in lines if line["meanLoad"] is not None),
                         key=lambda line: -line["meanLoad"])[:6]
        crowded_box.clear()
        with crowded_box:
            if not crowded:
                ui.label("暂无客流数据 No passenger counts yet").classes("text-slate-400 text-sm")
            for line in crowded:
                occupancy = OCCUPANCY.get(line["occupancyStatus"] or "", ("—", "#64748b"))
                with ui.row().classes("w-full items-center gap-2 text-sm text-slate-200 no-wrap t-crowded-line"):
                    ui.label(str(line["route"])).classes("font-semibold w-12")
                    load = line["meanLoad"]
                    tone = "red" if load >= 0.85 else "orange" if load >= 0.6 else "green"
                    ui.linear_progress(value=min(1.0, load), show_value=False).props(f"color={tone}").classes("flex-1")
                    ui.label(f"{line['meanLoad'] * 100:.0f}%").classes("w-10")
                    badge(occupancy[0], occupancy[1])
                    ui.label(f"拥挤车辆 crowded {line['crowdedVehicles']}").classes("text-xs text-slate-400")
        running = sum(len(line["vehicles"]) for line in lines)
        summary.text = (f"运行车辆 Buses running: {running} · 更新 Updated "
                        f"{messages.local_time(clock.now(), '%H:%M:%S')}")

    ui.timer(REFRESH_S, refresh)
    await refresh()
    return None


def register_nav() -> None:
    from cityos.web.shell import add_nav

    add_nav("出行 Transit", "/transit", icon="directions_bus")
    add_nav("公交运行 Transit ops", "/cockpit/transit", COCKPIT_ROLES, icon="departure_board")


register_nav()
