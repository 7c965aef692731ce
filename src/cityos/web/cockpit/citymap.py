"""The "city operations on one map" (城市运行一张图): MapLibre GL JS over the city's own vector tiles.

The base map comes from `/tiles/city/{z}/{x}/{y}.pbf` (`cityos.web.tiles`, built from the city model,
offline), or from the deployment's own source (CITYOS_MAP_TILES_URL: an XYZ raster template such as
天地图; CITYOS_MAP_STYLE_URL: a whole MapLibre style). MapLibre GL JS is served from the `maplibre`
wheel at /vendor/maplibre (no CDN).

Labels are HTML, not map glyphs: a glyph server (PBF font ranges) is one more thing to ship and keep
offline, while HTML labels use the browser's local fonts, Chinese included (fonts-wqy-microhei on the
Debian images). District labels carry the live AQI; road, river and sea labels come from the city model.

Operational layers are GeoJSON sources redrawn from one JSON message (`cityosMap.render`), only the
ones whose data changed. Devices and incidents are clustered by MapLibre; the cluster bubbles and the
incident pins are HTML markers (counts need text; pins are clickable), with CSS classes browser tests
look for (`cityos-incident[data-id]`, `cityos-cluster`, `cityos-district-label`).

Layer groups (`GROUPS` here and `groups` in the script) switch on and off together. A later layer
(traffic, parking) adds: a `GROUPS` entry, its GL layers in `cityosMap.addOverlays`, a key in the data
passed to `update`, and a `groups` entry naming its layers.
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson
from nicegui import ui
from shapely.geometry import shape

from cityos.web.tiles import map_source

# Layer groups the operator switches: key, label. The order is the switch panel's.
GROUPS: tuple[tuple[str, str], ...] = (
    ("districts", "区域 AQI Districts by AQI"),
    ("devices", "设备状态 Devices by state"),
    ("incidents", "事件 SLA Incidents by SLA"),
    ("alarms", "告警 Alarms"),
    ("traffic", "路况 信号 紧急通行 Traffic"),
    ("parking", "停车场空位 Car parks"),
    ("labels", "道路水系名称 Road & river names"),
)

_JS = r"""
window.cityosMap = window.cityosMap || {
  maps: {},
  groups: {
    districts: {layers: ['ov-district-fill', 'ov-district-line', 'ov-district-selected'],
                markers: 'cityos-district-label'},
    devices: {layers: ['ov-device-point'], markers: 'cityos-device-cluster'},
    incidents: {layers: ['ov-incident-anchor'], markers: 'cityos-incident-marker'},
    alarms: {layers: ['ov-alarm-ring'], markers: null},
    labels: {layers: [], markers: 'cityos-base-label'},
    areas: {layers: ['ov-area-fill', 'ov-area-line'], markers: null},
    places: {layers: ['ov-place-point'], markers: 'cityos-map-note'},
    transit: {layers: ['ov-transit-line', 'ov-transit-stop', 'ov-bus-point'], markers: null},
    traffic: {layers: ['ov-traffic-casing', 'ov-traffic-line', 'ov-emergency-line', 'ov-diversion-line',
                       'ov-traffic-signal', 'ov-traffic-incident'], markers: null},
    parking: {layers: ['ov-parking-point'], markers: null},
  },
  esc(s) {
    return String(s ?? '').replace(/[&<>"']/g, c => ({'&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;',
                                                      "'": '&#39;'}[c]));
  },
  baseStyle(cfg) {
    if (cfg.source.mode === 'style') return cfg.source.url;
    const style = {version: 8, sources: {}, layers: [
      {id: 'background', type: 'background', paint: {'background-color': '#0b1424'}}]};
    if (cfg.source.mode === 'raster') {
      style.sources.base = {type: 'raster', tiles: [cfg.source.url], tileSize: 256,
                            attribution: cfg.source.attribution || ''};
      style.layers.push({id: 'base-raster', type: 'raster', source: 'base'});
      return style;
    }
    style.sources.city = {type: 'vector', tiles: [location.origin + cfg.source.url], minzoom: 8, maxzoom: 15,
                          bounds: cfg.bounds};
    const L = (id, type, layer, paint, extra) => Object.assign({id, type, source: 'city', 'source-layer': layer,
                                                                 paint}, extra || {});
    const zw = (a, b) => ['interpolate', ['exponential', 1.6], ['zoom'], 9, a, 16, b];
    style.layers.push(
      L('land', 'fill', 'land', {'fill-color': '#142338'}),
      L('park', 'fill', 'park', {'fill-color': '#17402f', 'fill-opacity': 0.9}),
      L('water', 'fill', 'water', {'fill-color': '#0c3d63'}),
      L('building', 'fill', 'building', {'fill-color': '#2b4363',
        'fill-opacity': ['interpolate', ['linear'], ['zoom'], 11, 0.55, 14, 0.9],
        'fill-outline-color': '#3a5a80'}),
      L('river', 'line', 'river', {'line-color': '#1d78b5', 'line-width': zw(1.5, 10)}),
      L('coastline', 'line', 'coastline', {'line-color': '#38bdf8', 'line-width': 1.2, 'line-opacity': 0.7}),
      L('road-street', 'line', 'road', {'line-color': '#3e5573', 'line-width': zw(0.8, 8)},
        {filter: ['==', ['get', 'class'], 'street'], layout: {'line-cap': 'round', 'line-join': 'round'}}),
      L('road-arterial-casing', 'line', 'road', {'line-color': '#0b1424', 'line-width': zw(3, 16)},
        {filter: ['==', ['get', 'class'], 'arterial'], layout: {'line-cap': 'round', 'line-join': 'round'}}),
      L('road-arterial', 'line', 'road', {'line-color': '#b7894a', 'line-width': zw(1.8, 12)},
        {filter: ['==', ['get', 'class'], 'arterial'], layout: {'line-cap': 'round', 'line-join': 'round'}}),
      L('district-boundary', 'line', 'district', {'line-color': '#7dd3fc', 'line-width': 1, 'line-opacity': 0.5,
                                                'line-dasharray': [3, 2]}),
      L('poi', 'circle', 'poi', {'circle-radius': 3.5, 'circle-stroke-width': 1, 'circle-stroke-color': '#0b1424',
        'circle-color': ['match', ['get', 'kind'], 'hospital', '#f472b6', 'school', '#a78bfa',
                         'carPark', '#60a5fa', 'eldercare', '#fbbf24', '#94a3b8']}, {minzoom: 12.5}),
    );
    return style;
  },
  ensure(id, cfg) {
    const el = document.getElementById('c' + id);
    if (!el || !window.maplibregl) return false;
    let st = this.maps[id];
    if (!st || st.el !== el) {
      const view = cfg.centre ? {center: cfg.centre, zoom: 14} : {bounds: cfg.bounds, fitBoundsOptions: {padding: 16}};
      const map = new maplibregl.Map({container: el, style: this.baseStyle(cfg), ...view,
        attributionControl: false, maxZoom: 18, minZoom: 8,
        localIdeographFontFamily: '"WenQuanYi Micro Hei", "Noto Sans CJK SC", "PingFang SC", sans-serif'});
      map.addControl(new maplibregl.NavigationControl({showCompass: false}), 'top-right');
      map.addControl(new maplibregl.ScaleControl({maxWidth: 140, unit: 'metric'}), 'bottom-right');
      st = this.maps[id] = {map, el, markers: {}, visible: {}, selected: null, labels: cfg.labels || [],
                            ready: false};
      map.on('load', () => { this.addOverlays(id); st.ready = true; });
      map.on('render', () => this.syncMarkers(id));
      map.on('zoomend', () => this.syncLabels(id));
    }
    return st.ready;
  },
  addOverlays(id) {
    const st = this.maps[id], map = st.map;
    const empty = {type: 'FeatureCollection', features: []};
    map.addSource('ov-districts', {type: 'geojson', data: empty, promoteId: 'key'});
    map.addSource('ov-devices', {type: 'geojson', data: empty, cluster: true, clusterRadius: 44,
      clusterMaxZoom: 15, clusterProperties: {alarm: ['+', ['case', ['==', ['get', 'state'], 'alarm'], 1, 0]],
                                             offline: ['+', ['case', ['==', ['get', 'state'], 'offline'], 1, 0]]}});
    map.addSource('ov-alarms', {type: 'geojson', data: empty});
    map.addSource('ov-incidents', {type: 'geojson', data: empty, cluster: true, clusterRadius: 36,
                                   clusterMaxZoom: 16});
    // Generic overlays for other pages (the 15-minute living circle): coloured areas, points and notes.
    map.addSource('ov-areas', {type: 'geojson', data: empty});
    map.addSource('ov-places', {type: 'geojson', data: empty});
    map.addLayer({id: 'ov-area-fill', type: 'fill', source: 'ov-areas',
                  paint: {'fill-color': ['get', 'fill'], 'fill-opacity': 0.3}});
    map.addLayer({id: 'ov-area-line', type: 'line', source: 'ov-areas',
                  paint: {'line-color': ['get', 'fill'], 'line-width': 1.5}});
    map.addLayer({id: 'ov-place-point', type: 'circle', source: 'ov-places',
                  paint: {'circle-radius': ['coalesce', ['get', 'radius'], 5], 'circle-color': ['get', 'colour'],
                          'circle-stroke-color': '#f8fafc', 'circle-stroke-width': 1.2}});
    map.addLayer({id: 'ov-district-fill', type: 'fill', source: 'ov-districts',
                  paint: {'fill-color': ['get', 'fill'], 'fill-opacity': 0.2}});
    map.addLayer({id: 'ov-district-line', type: 'line', source: 'ov-districts',
                  paint: {'line-color': '#38bdf8', 'line-width': 1.4, 'line-opacity': 0.85}});
    map.addLayer({id: 'ov-district-selected', type: 'line', source: 'ov-districts', filter: ['==', 'key', ''],
                  paint: {'line-color': '#f8fafc', 'line-width': 3.5}});
    // Traffic (cityos.web.cockpit.traffic): segments by GB/T 33171 level over the base roads, under the points.
    for (const src of ['ov-traffic-segments', 'ov-emergency', 'ov-diversion', 'ov-traffic-signals',
                       'ov-traffic-incidents', 'ov-parking']) map.addSource(src, {type: 'geojson', data: empty});
    const tw = (a, b) => ['interpolate', ['exponential', 1.6], ['zoom'], 10, a, 16, b];
    map.addLayer({id: 'ov-traffic-casing', type: 'line', source: 'ov-traffic-segments',
                  layout: {'line-cap': 'round', 'line-join': 'round'},
                  paint: {'line-color': '#020617', 'line-width': tw(4, 14), 'line-opacity': 0.8}});
    map.addLayer({id: 'ov-traffic-line', type: 'line', source: 'ov-traffic-segments',
                  layout: {'line-cap': 'round', 'line-join': 'round'},
                  paint: {'line-color': ['get', 'colour'], 'line-width': tw(2.4, 9)}});
    map.addLayer({id: 'ov-emergency-line', type: 'line', source: 'ov-emergency', layout: {'line-cap': 'round'},
                  paint: {'line-color': '#e879f9', 'line-width': tw(4, 10), 'line-dasharray': [1.5, 1]}});
    map.addLayer({id: 'ov-diversion-line', type: 'line', source: 'ov-diversion', layout: {'line-cap': 'round'},
                  paint: {'line-color': '#22d3ee', 'line-width': tw(4, 11), 'line-dasharray': [2, 1]}});
    map.addLayer({id: 'ov-traffic-signal', type: 'circle', source: 'ov-traffic-signals',
                  paint: {'circle-radius': 4.5, 'circle-color': ['get', 'colour'], 'circle-stroke-color': '#f8fafc',
                          'circle-stroke-width': 1.2}});
    map.addLayer({id: 'ov-traffic-incident', type: 'circle', source: 'ov-traffic-incidents',
                  paint: {'circle-radius': 13, 'circle-color': 'rgba(245,158,11,0.25)', 'circle-stroke-width': 3,
                          'circle-stroke-color': ['get', 'colour']}});
    map.addLayer({id: 'ov-parking-point', type: 'circle', source: 'ov-parking',
                  paint: {'circle-radius': 6, 'circle-color': ['get', 'colour'], 'circle-stroke-color': '#0b1424',
                          'circle-stroke-width': 2}});
    map.on('click', 'ov-traffic-line', e => {
      const f = e.features && e.features[0];
      if (f) emitEvent('cityos_segment', {id: f.properties.id, map: id});
    });
    map.on('mouseenter', 'ov-traffic-line', () => { map.getCanvas().style.cursor = 'pointer'; });
    map.on('mouseleave', 'ov-traffic-line', () => { map.getCanvas().style.cursor = ''; });
    map.addLayer({id: 'ov-device-point', type: 'circle', source: 'ov-devices', filter: ['!', ['has', 'point_count']],
                  paint: {'circle-radius': ['case', ['==', ['get', 'state'], 'alarm'], 6, 4],
                          'circle-color': ['get', 'colour'], 'circle-stroke-color': '#0b1424',
                          'circle-stroke-width': 1}});
    // The incident pins are HTML markers; MapLibre loads a source's tiles only for a layer that uses it.
    map.addLayer({id: 'ov-incident-anchor', type: 'circle', source: 'ov-incidents',
                  paint: {'circle-radius': 1, 'circle-opacity': 0, 'circle-stroke-opacity': 0}});
    // Public transport (cityos.web.transit): an itinerary's legs or lines, their stops, buses by delay.
    map.addSource('ov-transit-lines', {type: 'geojson', data: empty});
    map.addSource('ov-transit-stops', {type: 'geojson', data: empty});
    map.addSource('ov-buses', {type: 'geojson', data: empty});
    map.addLayer({id: 'ov-transit-line', type: 'line', source: 'ov-transit-lines',
                  layout: {'line-cap': 'round', 'line-join': 'round'},
                  paint: {'line-color': ['get', 'colour'], 'line-width': ['get', 'width']}});
    map.addLayer({id: 'ov-transit-stop', type: 'circle', source: 'ov-transit-stops',
                  paint: {'circle-radius': 5, 'circle-color': '#f8fafc', 'circle-stroke-color': ['get', 'colour'],
                          'circle-stroke-width': 2.5}});
    map.addLayer({id: 'ov-bus-point', type: 'circle', source: 'ov-buses',
                  paint: {'circle-radius': 7, 'circle-color': ['get', 'colour'], 'circle-stroke-color': '#f8fafc',
                          'circle-stroke-width': 1.5}});
    map.addLayer({id: 'ov-alarm-ring', type: 'circle', source: 'ov-alarms',
                  paint: {'circle-radius': 14, 'circle-color': 'rgba(0,0,0,0)', 'circle-stroke-width': 3,
                          'circle-stroke-color': ['get', 'colour']}});
    map.on('click', 'ov-district-fill', e => {
      const f = e.features && e.features[0];
      // A click on a road segment is the segment's, not its district's.
      const onRoad = map.getLayer('ov-traffic-line') && st.visible.traffic !== false &&
        map.queryRenderedFeatures(e.point, {layers: ['ov-traffic-line']}).length > 0;
      if (f && !onRoad) emitEvent('cityos_district', {key: f.properties.key, map: id});
    });
    map.on('mouseenter', 'ov-district-fill', () => { map.getCanvas().style.cursor = 'pointer'; });
    map.on('mouseleave', 'ov-district-fill', () => { map.getCanvas().style.cursor = ''; });
    const popup = new maplibregl.Popup({closeButton: false, closeOnClick: false, className: 'cityos-popup'});
    for (const layer of ['ov-device-point', 'ov-alarm-ring', 'ov-place-point', 'ov-bus-point', 'ov-transit-stop',
                         'ov-traffic-line', 'ov-traffic-signal', 'ov-traffic-incident', 'ov-parking-point',
                         'ov-emergency-line', 'ov-diversion-line']) {
      map.on('mousemove', layer, e => popup.setLngLat(e.lngLat)
        .setHTML(this.esc(e.features[0].properties.label)).addTo(map));
      map.on('mouseleave', layer, () => popup.remove());
    }
    this.syncLabels(id);
  },
  render(id, data) {
    const st = this.maps[id];
    if (!st || !st.ready) return false;
    const map = st.map, esc = this.esc;
    const points = (rows, props) => ({type: 'FeatureCollection', features: rows.map(r => ({type: 'Feature',
      geometry: {type: 'Point', coordinates: [r[1], r[0]]}, properties: props(r)}))});
    if (data.districts) {
      map.getSource('ov-districts').setData(data.districts);
      st.districtLabels = data.districts.features.map(f => f.properties);
      this.syncLabels(id);
    }
    if (data.devices) {
      const colours = data.deviceColours || {};
      st.deviceStates = data.devices.map(r => r[2]);
      map.getSource('ov-devices').setData(points(data.devices, r => ({state: r[2], label: r[3],
                                                                      colour: colours[r[2]] || '#94a3b8'})));
    }
    if (data.alarms) map.getSource('ov-alarms').setData(points(data.alarms, r => ({colour: r[2], label: r[3]})));
    if (data.incidents) {
      map.getSource('ov-incidents').setData(points(data.incidents, r => ({colour: r[2], label: r[3], iid: r[4],
                                                                          sla: r[5] || ''})));
    }
    if (data.areas) map.getSource('ov-areas').setData(data.areas);
    if (data.places) {
      map.getSource('ov-places').setData(points(data.places, r => ({colour: r[2], label: r[3], radius: r[4] || 5})));
    }
    if (data.notes) {  // HTML labels: [lat, lon, tone, text]
      for (const [key, m] of Object.entries(st.markers)) {
        if (key.startsWith('nt')) { m.remove(); delete st.markers[key]; }
      }
      data.notes.forEach((r, i) => this.marker(st, 'nt' + i, () => {
        const el = document.createElement('div');
        el.className = `cityos-map-note cityos-map-note-${esc(r[2])}`;
        el.textContent = r[3];
        return el;
      }, [r[1], r[0]]));
    }
    if (data.transitLines) map.getSource('ov-transit-lines').setData(data.transitLines);
    if (data.transitStops) {
      map.getSource('ov-transit-stops').setData(points(data.transitStops, r => ({label: r[2],
                                                                                  colour: r[3] || '#0891b2'})));
    }
    if (data.segments) map.getSource('ov-traffic-segments').setData(data.segments);
    if (data.emergency) map.getSource('ov-emergency').setData(data.emergency);
    if (data.diversion) map.getSource('ov-diversion').setData(data.diversion);
    if (data.signals) {
      map.getSource('ov-traffic-signals').setData(points(data.signals, r => ({colour: r[2], label: r[3]})));
    }
    if (data.trafficIncidents) {
      map.getSource('ov-traffic-incidents').setData(points(data.trafficIncidents, r => ({colour: r[2],
                                                                                          label: r[3]})));
    }
    if (data.parking) map.getSource('ov-parking').setData(points(data.parking, r => ({colour: r[2], label: r[3]})));
    if (data.buses) map.getSource('ov-buses').setData(points(data.buses, r => ({colour: r[2], label: r[3]})));
    if (data.fit && data.fit.length === 4) map.fitBounds([[data.fit[0], data.fit[1]], [data.fit[2], data.fit[3]]],
                                                         {padding: 40, maxZoom: 15, duration: 0});
    st.counts = Object.assign(st.counts || {}, Object.fromEntries(
      ['districts', 'devices', 'alarms', 'incidents', 'places', 'notes', 'transitStops', 'buses', 'segments',
       'emergency', 'diversion', 'signals', 'trafficIncidents', 'parking'].filter(k => data[k])
        .map(k => [k, data[k].features ? data[k].features.length : data[k].length])));
    if (data.segments) {
      st.levels = {};
      for (const f of data.segments.features) st.levels[f.properties.level] = (st.levels[f.properties.level] || 0) + 1;
    }
    if (data.transitLines) st.counts.transitLines = data.transitLines.features.length;
    return true;
  },
  marker(st, key, make, lngLat) {
    let m = st.markers[key];
    if (!m) {
      m = st.markers[key] = new maplibregl.Marker({element: make(), anchor: 'center'}).setLngLat(lngLat)
        .addTo(st.map);
    } else {
      m.setLngLat(lngLat);
    }
    m._seen = true;
    return m;
  },
  syncMarkers(id) {
    const st = this.maps[id];
    if (!st || !st.ready || st.syncing) return;
    st.syncing = true;
    try {
      const map = st.map, esc = this.esc;
      for (const m of Object.values(st.markers)) m._seen = false;
      if (st.visible.devices !== false) {
        for (const f of map.querySourceFeatures('ov-devices', {filter: ['has', 'point_count']})) {
          const p = f.properties, key = 'dc' + p.cluster_id;
          this.marker(st, key, () => {
            const el = document.createElement('div');
            const tone = p.alarm > 0 ? 'alarm' : p.offline > p.point_count / 2 ? 'offline' : 'normal';
            el.className = `cityos-cluster cityos-device-cluster cityos-cluster-${tone}`;
            el.innerHTML = `<span>${p.point_count_abbreviated}</span>`;
            el.title = `${p.point_count} 台设备 devices` + (p.alarm ? ` · ${p.alarm} 告警 in alarm` : '');
            el.addEventListener('click', ev => { ev.stopPropagation();
              map.getSource('ov-devices').getClusterExpansionZoom(p.cluster_id)
                .then(z => map.easeTo({center: f.geometry.coordinates, zoom: z})); });
            return el;
          }, f.geometry.coordinates);
        }
      }
      if (st.visible.incidents !== false) {
        for (const f of map.querySourceFeatures('ov-incidents')) {
          const p = f.properties;
          if (p.point_count) {
            this.marker(st, 'ic' + p.cluster_id, () => {
              const el = document.createElement('div');
              el.className = 'cityos-cluster cityos-incident-cluster cityos-incident-marker';
              el.innerHTML = `<span>${p.point_count_abbreviated}</span>`;
              el.title = `${p.point_count} 件事件 incidents`;
              el.addEventListener('click', ev => { ev.stopPropagation();
                map.getSource('ov-incidents').getClusterExpansionZoom(p.cluster_id)
                  .then(z => map.easeTo({center: f.geometry.coordinates, zoom: z})); });
              return el;
            }, f.geometry.coordinates);
          } else {
            this.marker(st, 'in' + p.iid, () => {
              const el = document.createElement('div');
              el.className = 'cityos-incident-marker';
              el.innerHTML = `<div class="cityos-incident-pin cityos-incident cityos-sla-${esc(p.sla)}" ` +
                `data-id="${esc(p.iid)}" style="background:${esc(p.colour)}" title="${esc(p.label)}">` +
                `<span>!</span></div>`;
              el.addEventListener('click', ev => { ev.stopPropagation();
                window.location.href = '/cockpit/incidents/' + encodeURIComponent(p.iid); });
              return el;
            }, f.geometry.coordinates);
          }
        }
      }
      for (const [key, m] of Object.entries(st.markers)) {
        if (!m._seen && (key.startsWith('dc') || key.startsWith('ic') || key.startsWith('in'))) {
          m.remove();
          delete st.markers[key];
        }
      }
    } finally {
      st.syncing = false;
    }
  },
  syncLabels(id) {
    const st = this.maps[id];
    if (!st || !st.ready) return;
    const zoom = st.map.getZoom(), esc = this.esc;
    for (const [key, m] of Object.entries(st.markers)) {
      if (key.startsWith('lb') || key.startsWith('dl')) { m.remove(); delete st.markers[key]; }
    }
    if (st.visible.labels !== false) {
      st.labels.forEach((l, i) => {
        if (zoom < l.minZoom) return;
        this.marker(st, 'lb' + i, () => {
          const el = document.createElement('div');
          el.className = `cityos-base-label cityos-base-label-${l.kind}`;
          el.innerHTML = `${esc(l.zh)}<small>${esc(l.en)}</small>`;
          return el;
        }, [l.lon, l.lat]);
      });
    }
    if (st.visible.districts !== false) {
      (st.districtLabels || []).forEach(p => {
        this.marker(st, 'dl' + p.key, () => {
          const el = document.createElement('div');
          el.className = 'cityos-district-label' + (st.selected === p.key ? ' cityos-district-label-selected' : '');
          el.dataset.key = p.key;
          el.innerHTML = `${esc(p.name)}${p.aqi == null ? '' : ` <b style="background:${esc(p.fill)}">` +
                         `AQI ${Math.round(p.aqi)}</b>`}`;
          el.addEventListener('click', ev => { ev.stopPropagation();
            emitEvent('cityos_district', {key: p.key, map: id}); });
          return el;
        }, [p.labelLon, p.labelLat]);
      });
    }
  },
  setGroup(id, group, on) {
    const st = this.maps[id];
    if (!st || !st.ready) return false;
    st.visible[group] = on;
    for (const layer of this.groups[group].layers) {
      if (st.map.getLayer(layer)) st.map.setLayoutProperty(layer, 'visibility', on ? 'visible' : 'none');
    }
    if (!on) {
      const cls = this.groups[group].markers;
      for (const [key, m] of Object.entries(st.markers)) {
        if (cls && m.getElement().classList.contains(cls)) { m.remove(); delete st.markers[key]; }
      }
    }
    this.syncLabels(id);
    this.syncMarkers(id);
    return true;
  },
  select(id, key) {
    const st = this.maps[id];
    if (!st || !st.ready) return false;
    st.selected = key || null;
    st.map.setFilter('ov-district-selected', ['==', 'key', key || '']);
    this.syncLabels(id);
    return true;
  },
  // For tests and diagnostics: what the map holds and shows.
  stats(id) {
    const st = this.maps[id];
    if (!st) return null;
    const map = st.map;
    return {ready: st.ready, counts: st.counts || {}, selected: st.selected, zoom: map.getZoom(),
            deviceStates: st.deviceStates || [], levels: st.levels || {},
            tilesLoaded: map.areTilesLoaded(), visible: Object.fromEntries(Object.keys(this.groups).map(g =>
              [g, st.visible[g] !== false])),
            layers: Object.fromEntries(map.getStyle().layers.map(l => [l.id,
              (map.getLayoutProperty(l.id, 'visibility') || 'visible')]))};
  },
};
"""

_CSS = r"""
.cityos-map .maplibregl-ctrl-scale { background: rgba(6,13,27,.8); color: #cbd5e1; border-color: #94a3b8; }
.cityos-district-label { color: #e2e8f0; font-size: 13px; font-weight: 600; white-space: nowrap; cursor: pointer;
  text-shadow: 0 0 3px #020617, 0 0 6px #020617; }
.cityos-district-label b { color: #111; font-size: 11px; padding: 0 4px; border-radius: 3px; margin-left: 2px;
  text-shadow: none; }
.cityos-district-label-selected { color: #fff; text-decoration: underline; }
.cityos-base-label { color: #cbd5e1; font-size: 11px; white-space: nowrap; pointer-events: none; opacity: .9;
  text-shadow: 0 0 3px #020617, 0 0 5px #020617; text-align: center; line-height: 1.1; }
.cityos-base-label small { display: block; font-size: 9px; color: #94a3b8; }
.cityos-base-label-river { color: #7dd3fc; font-style: italic; }
.cityos-base-label-sea { color: #7dd3fc; font-size: 15px; letter-spacing: 4px; }
.cityos-cluster { display: flex; align-items: center; justify-content: center; border-radius: 50%; cursor: pointer;
  font: 600 12px sans-serif; color: #fff; border: 2px solid rgba(255,255,255,.85); }
.cityos-device-cluster { width: 30px; height: 30px; }
.cityos-cluster-normal { background: rgba(34,197,94,.8); }
.cityos-cluster-offline { background: rgba(100,116,139,.85); }
.cityos-cluster-alarm { background: rgba(239,68,68,.9); box-shadow: 0 0 0 4px rgba(239,68,68,.35); }
.cityos-incident-cluster { width: 34px; height: 34px; background: #ea580c; border-radius: 50% 50% 50% 0; }
.cityos-incident-pin { width: 24px; height: 24px; border-radius: 50% 50% 50% 0; transform: rotate(-45deg);
  border: 2px solid #fff; display: flex; align-items: center; justify-content: center; cursor: pointer; }
.cityos-incident-pin span { transform: rotate(45deg); color: #fff; font-weight: 700; }
.cityos-map .cityos-district-label { z-index: 1; }
.cityos-map .cityos-device-cluster { z-index: 2; }
.cityos-map .cityos-incident-marker { z-index: 3; }  /* pins stay clickable over labels and clusters */
.cityos-map-note { font: 600 12px sans-serif; color: #fff; padding: 2px 6px; border-radius: 4px; white-space: nowrap;
  box-shadow: 0 1px 3px rgba(0,0,0,.5); pointer-events: none; }
.cityos-map-note-ok { background: rgba(22,163,74,.92); }
.cityos-map-note-gap { background: rgba(220,38,38,.92); }
.cityos-popup .maplibregl-popup-content { background: #0f172a; color: #e2e8f0; font-size: 12px; padding: 4px 8px; }
"""


def install() -> None:
    """Put MapLibre and the renderer in every page's head (once per process)."""
    global _installed
    if not _installed:
        ui.add_head_html('<link rel="stylesheet" href="/vendor/maplibre/maplibre-gl.css">'
                         '<script src="/vendor/maplibre/maplibre-gl.js"></script>'
                         f"<script>{_JS}</script><style>{_CSS}</style>", shared=True)
        _installed = True


_installed = False


def district_feature(district: dict[str, Any], fill: str, aqi: float | None = None,
                     category: str = "") -> dict[str, Any]:
    """A district (from `data.districts`) as the map's GeoJSON feature, its label placed inside it."""
    point = shape(district["geometry"]).representative_point()  # a centroid may fall outside a concave one
    return {"type": "Feature", "geometry": district["geometry"],
            "properties": {"key": district["key"], "fill": fill, "name": district["name"], "aqi": aqi,
                           "category": category, "labelLon": round(point.x, 6), "labelLat": round(point.y, 6)}}


class CityMap:
    """A MapLibre map of the city, redrawn from plain data by `update`."""

    def __init__(self, bounds: tuple[float, float, float, float], labels: list[dict[str, Any]],
                 classes: str = "w-full h-full", centre: tuple[float, float] | None = None) -> None:
        install()
        self.element = ui.element("div").classes(f"cityos-map {classes}")
        source = map_source()
        self.config: dict[str, Any] = {"source": source, "bounds": list(bounds),
                                       "labels": labels if source["mode"] == "builtin" else []}
        if centre is not None:  # (lat, lon): a close-up instead of the whole city
            self.config["centre"] = [centre[1], centre[0]]
        self._sent: dict[str, str] = {}

    @property
    def id(self) -> int:
        return self.element.id

    async def _js(self, script: str) -> Any:
        try:
            return await self.element.client.run_javascript(script, timeout=5.0)
        except Exception:  # page closed, client gone, or the browser was busy: the next tick tries again
            return None

    async def update(self, layers: dict[str, Any]) -> None:
        """Send the layers whose data changed since the last call (everything while the map is not ready)."""
        ready = await self._js(f"cityosMap.ensure({self.id}, {orjson.dumps(self.config).decode()})")
        if ready is not True:
            self._sent.clear()
            return
        payload: dict[str, Any] = {}
        for name, data in layers.items():
            digest = hashlib.sha256(orjson.dumps(data, option=orjson.OPT_SORT_KEYS)).hexdigest()
            if self._sent.get(name) != digest:
                payload[name] = data
                if name != "deviceColours":
                    self._sent[name] = digest
        if set(payload) - {"deviceColours"}:
            result = await self._js(f"cityosMap.render({self.id}, {orjson.dumps(payload).decode()})")
            if result is not True:
                self._sent.clear()

    async def set_group(self, group: str, on: bool) -> None:
        await self._js(f"cityosMap.setGroup({self.id}, {orjson.dumps(group).decode()}, {str(on).lower()})")

    async def select(self, key: str | None) -> None:
        await self._js(f"cityosMap.select({self.id}, {orjson.dumps(key or '').decode()})")
