"""The "city operations on one map" (城市运行一张图): Leaflet with no tile server.

NiceGUI's Leaflet adds an OpenStreetMap tile layer by default; it is removed, so the map makes no
external calls and shows the city's own geometry on a dark background: district polygons filled by
AQI category, devices coloured by state, alarms (pulsing rings) and incidents (pins).

Drawing thousands of devices as one NiceGUI layer each would cost a websocket message per layer,
so a small script (`cityosMap.render`) draws each layer group from one JSON message, and only the
layers whose data changed are sent again. SVG elements carry CSS classes (`cityos-district`,
`cityos-device-<state>`, `cityos-alarm`, `cityos-incident`) that browser tests look for.
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson
from nicegui import ui

_JS = r"""
window.cityosMap = window.cityosMap || {
  groups: {},
  esc(s) {
    return String(s ?? '').replace(/[&<>"']/g, c => ({'&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;',
                                                      "'": '&#39;'}[c]));
  },
  render(id, data) {
    const esc = this.esc;
    const el = getElement(id);
    if (!el || !el.map || !window.L) return false;
    const map = el.map;
    const groups = this.groups[id] = this.groups[id] || {};
    const replace = (name, layer) => {
      if (groups[name]) map.removeLayer(groups[name]);
      groups[name] = layer;
      layer.addTo(map);
    };
    if (data.districts) {
      const layer = L.geoJSON(data.districts, {
        style: f => ({color: '#38bdf8', weight: 1.5, opacity: 0.9, fillColor: f.properties.fill,
                      fillOpacity: 0.38, className: 'cityos-district cityos-district-' + f.properties.key}),
        onEachFeature: (f, l) => {
          l.bindTooltip(esc(f.properties.label), {permanent: true, direction: 'center',
                                            className: 'cityos-district-label'});
          l.bindPopup(esc(f.properties.popup));
        },
      });
      replace('districts', layer);
      layer.bringToBack();
      if (!groups._fitted && data.districts.features.length) {
        map.fitBounds(layer.getBounds(), {padding: [12, 12]});
        groups._fitted = true;
      }
    }
    if (data.devices) {
      const colours = data.deviceColours;
      replace('devices', L.layerGroup(data.devices.map(([lat, lon, state, label]) =>
        L.circleMarker([lat, lon], {radius: state === 'alarm' ? 6 : 3.5, weight: state === 'alarm' ? 2 : 1,
                                    color: colours[state] || '#94a3b8', fillColor: colours[state] || '#94a3b8',
                                    fillOpacity: 0.9, className: 'cityos-device cityos-device-' + state})
          .bindTooltip(esc(label)))));
      if (!groups._fitted && data.devices.length) {
        map.fitBounds(L.latLngBounds(data.devices.map(d => [d[0], d[1]])), {padding: [24, 24], maxZoom: 15});
        groups._fitted = true;
      }
    }
    if (data.alarms) {
      replace('alarms', L.layerGroup(data.alarms.map(([lat, lon, colour, label]) =>
        L.circleMarker([lat, lon], {radius: 13, weight: 3, color: colour, fill: false,
                                    className: 'cityos-alarm'}).bindTooltip(esc(label)))));
    }
    if (data.incidents) {
      const seen = {};
      replace('incidents', L.layerGroup(data.incidents.map(([lat, lon, colour, label, iid]) => {
        // Pins at one spot fan out sideways, so each stays visible and clickable.
        const spot = lat.toFixed(4) + ',' + lon.toFixed(4);
        const n = seen[spot] = (seen[spot] ?? -1) + 1;
        const dx = n === 0 ? 0 : (n % 2 ? 1 : -1) * Math.ceil(n / 2) * 24;
        const icon = L.divIcon({className: 'cityos-incident-icon', iconSize: [26, 26], iconAnchor: [13 - dx, 26],
          html: `<div class="cityos-incident-pin cityos-incident" data-id="${esc(iid)}" ` +
                `style="background:${esc(colour)}"><span>!</span></div>`});
        return L.marker([lat, lon], {icon, zIndexOffset: 1000, title: label})
          .bindTooltip(esc(label)).on('click', () => { window.location.href = '/cockpit/incidents/' +
                                                   encodeURIComponent(iid); });
      })));
    }
    return true;
  },
};
"""


def install() -> None:
    """Put the renderer in every page's head (once per process; a script added to a live page would not run)."""
    global _installed
    if not _installed:
        ui.add_head_html(f"<script>{_JS}</script>", shared=True)
        _installed = True


_installed = False


class CityMap:
    """A Leaflet map without tiles, redrawn from plain data by `update`."""

    def __init__(self, classes: str = "w-full h-full") -> None:
        install()
        # Centre of the simulated city until the districts arrive (fitBounds takes over then).
        self.leaflet = ui.leaflet(center=(20.02, 110.33), zoom=12,
                                  options={"attributionControl": False, "zoomSnap": 0.25, "minZoom": 3})
        self.leaflet.layers.clear()  # no tile server: nothing leaves the building
        self.leaflet.classes(f"cityos-map {classes}")
        self._sent: dict[str, str] = {}

    async def update(self, layers: dict[str, Any]) -> None:
        """Send the layers whose data changed since the last call."""
        try:
            await self.leaflet.initialized()
        except Exception:
            return
        payload: dict[str, Any] = {}
        for name, data in layers.items():
            digest = hashlib.sha256(orjson.dumps(data, option=orjson.OPT_SORT_KEYS)).hexdigest()
            if self._sent.get(name) != digest:
                payload[name] = data
                if name != "deviceColours":
                    self._sent[name] = digest
        if set(payload) - {"deviceColours"}:
            script = f"cityosMap.render({self.leaflet.id}, {orjson.dumps(payload).decode()})"
            result = await self.leaflet.client.run_javascript(script, timeout=5.0)
            if result is not True:  # map not ready in the browser yet: send everything next time
                self._sent.clear()
