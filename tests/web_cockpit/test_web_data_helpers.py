"""The data pages' pure helpers: the search filter query, the map's layers from rows, the chart, the
lineage graph's layout."""

from __future__ import annotations

from cityos.web.datapages.office import lineage_options, source_scores
from cityos.web.datapages.opendata import chart_options, filter_query, map_layers


def test_filter_query_keeps_values_inside_their_quotes() -> None:
    fq = filter_query({"org": "environment", "tag": 'x" OR name:"secret', "group": ""})
    assert fq == 'organization:"environment" tags:"x OR name:secret"'


def test_map_layers_points_and_polygons() -> None:
    square = {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 1], [0, 0]]]}
    rows = [{"_id": 1, "id": "urn:ngsi-ld:X:a", "location": {"type": "Point", "coordinates": [110.1, 20.2]}},
            {"_id": 2, "name": "Yehai", "location": square},
            {"_id": 3, "location": {"type": "Point", "coordinates": ["x", 1]}},  # malformed: skipped
            {"_id": 4, "location": "***"}]  # masked: skipped
    layers = map_layers(rows)
    assert layers["devices"] == [[20.2, 110.1, "data", "a"]]
    assert [f["properties"]["name"] for f in layers["districts"]["features"]] == ["Yehai"]
    assert map_layers([{"_id": 1, "n": 2}]) == {}


def test_chart_options_history_and_current_state() -> None:
    history = chart_options([{"attribute": "pm25", "observedAt": "2026-12-01T01:00:00Z", "value": 30},
                             {"attribute": "pm25", "observedAt": "2026-12-01T00:00:00Z", "value": 20}],
                            [], history=True)
    assert history is not None and history["series"][0]["data"][0] == ["2026-12-01T00:00:00Z", 20]
    fields = [{"id": "_id", "type": "int"}, {"id": "name", "type": "text"}, {"id": "population", "type": "numeric"}]
    bars = chart_options([{"_id": 1, "name": "Yehai", "population": 5}], fields, history=False)
    assert bars is not None and bars["series"][0]["data"] == [5] and bars["xAxis"]["data"] == ["Yehai"]
    assert chart_options([{"_id": 1, "name": "a"}], fields[:2], history=False) is None


def test_lineage_layout_and_source_scores() -> None:
    edge = {"job": "cityos.data.register", "runId": "r1", "at": "2026-12-01T00:00:00Z"}
    graph = {"node": "catalogue:v", "upstream": [{**edge, "from": "upload:civil", "to": "catalogue:v"}],
             "downstream": [{**edge, "job": "cityos.data.quality", "from": "catalogue:v", "to": "quality:v"}]}
    nodes = {n["name"]: n for n in lineage_options(graph)["series"][0]["data"]}
    assert nodes["upload:civil"]["x"] < nodes["catalogue:v"]["x"] < nodes["quality:v"]["x"]
    assert source_scores([{"provider": "a", "qualityScore": 100.0}, {"provider": "a", "qualityScore": 90.0},
                          {"provider": "b", "qualityScore": None}]) == {"a": 95.0}
