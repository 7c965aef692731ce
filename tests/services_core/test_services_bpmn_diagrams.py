"""Every shipped BPMN file opens in bpmn.io / Camunda Modeler as drawn: complete diagram interchange.

The engine only needs the semantic part; a modeler needs the bpmndi part too. A flow node or
sequence flow without a shape or edge is silently dropped from the drawing (and lost on the next
save), so this checks, per file:

- ids are unique, and every reference (sourceRef/targetRef, incoming/outgoing, default,
  attachedToRef, processRef, flowNodeRef, bpmnElement) points at an element that exists;
- every flow node, sequence flow, lane and participant has exactly one BPMNShape/BPMNEdge, shapes
  with numeric dc:Bounds (positive size), edges with at least two numeric waypoints;
- edges join their source and target shapes (first/last waypoint on the shape's border box);
- a process with lanes puts every flow node in exactly one lane;
- the file passes the OMG BPMN 2.0 XSD (SpiffWorkflow's validator, the schema the modelers use).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from lxml import etree
from SpiffWorkflow.bpmn.parser.BpmnParser import BpmnValidator

from cityos.services.catalogue import CATALOGUE_DIR

BPMN = "http://www.omg.org/spec/BPMN/20100524/MODEL"
BPMNDI = "http://www.omg.org/spec/BPMN/20100524/DI"
DC = "http://www.omg.org/spec/DD/20100524/DC"
DI = "http://www.omg.org/spec/DD/20100524/DI"

FLOW_NODES = {
    "startEvent", "endEvent", "intermediateCatchEvent", "intermediateThrowEvent", "boundaryEvent",
    "task", "userTask", "serviceTask", "scriptTask", "businessRuleTask", "manualTask", "sendTask",
    "receiveTask", "callActivity", "subProcess", "transaction", "adHocSubProcess",
    "exclusiveGateway", "inclusiveGateway", "parallelGateway", "eventBasedGateway", "complexGateway",
}
FILES = sorted((CATALOGUE_DIR / "bpmn").glob("*.bpmn"))
TOLERANCE = 1.0  # px: a waypoint "on" a border


def local(node: etree._Element) -> str:
    return etree.QName(node).localname


def bounds(shape: etree._Element) -> tuple[float, float, float, float]:
    b = shape.find(f"{{{DC}}}Bounds")
    assert b is not None, f"shape {shape.get('id')} has no dc:Bounds"
    x, y, w, h = (float(b.get(k, "nan")) for k in ("x", "y", "width", "height"))
    assert all(v == v for v in (x, y, w, h)), f"shape {shape.get('id')}: non-numeric bounds"
    assert w > 0 and h > 0, f"shape {shape.get('id')}: empty bounds"
    return x, y, w, h


def on_box(point: tuple[float, float], box: tuple[float, float, float, float]) -> bool:
    x, y, w, h = box
    px, py = point
    return x - TOLERANCE <= px <= x + w + TOLERANCE and y - TOLERANCE <= py <= y + h + TOLERANCE


def test_there_are_shipped_processes() -> None:
    assert FILES, f"no .bpmn files under {CATALOGUE_DIR / 'bpmn'}"


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_bpmn_file_has_complete_diagram_interchange(path: Path) -> None:
    root = etree.parse(str(path), etree.XMLParser(resolve_entities=False, no_network=True)).getroot()
    by_id: dict[str, etree._Element] = {}
    for node in root.iter():
        if isinstance(node.tag, str) and node.get("id"):
            assert node.get("id") not in by_id, f"duplicate id {node.get('id')!r}"
            by_id[node.get("id")] = node

    def ref(value: str | None, what: str, kinds: set[str] | None = None) -> etree._Element:
        assert value, f"{what}: empty reference"
        target = by_id.get(value.strip())
        assert target is not None, f"{what}: reference to unknown id {value!r}"
        if kinds is not None:
            assert local(target) in kinds, f"{what}: {value!r} is a {local(target)}, expected one of {sorted(kinds)}"
        return target

    processes = root.findall(f"{{{BPMN}}}process")
    assert processes, "no bpmn:process"
    nodes = [n for p in processes for n in p.iter() if isinstance(n.tag, str) and local(n) in FLOW_NODES
             and n.getparent() is not None and local(n.getparent()) in ("process", "subProcess")]
    flows = [f for p in processes for f in p.iter(f"{{{BPMN}}}sequenceFlow")]
    lanes = [lane for p in processes for lane in p.iter(f"{{{BPMN}}}lane")]
    participants = list(root.iter(f"{{{BPMN}}}participant"))
    assert nodes and flows

    # semantic references
    for f in flows:
        source = ref(f.get("sourceRef"), f"sequenceFlow {f.get('id')} sourceRef", FLOW_NODES)
        target = ref(f.get("targetRef"), f"sequenceFlow {f.get('id')} targetRef", FLOW_NODES)
        outgoing = {o.text.strip() for o in source.findall(f"{{{BPMN}}}outgoing") if o.text}
        incoming = {i.text.strip() for i in target.findall(f"{{{BPMN}}}incoming") if i.text}
        assert f.get("id") in outgoing, f"{source.get('id')} does not list outgoing {f.get('id')}"
        assert f.get("id") in incoming, f"{target.get('id')} does not list incoming {f.get('id')}"
    flow_ids = {f.get("id") for f in flows}
    for n in nodes:
        for kind in ("incoming", "outgoing"):
            for item in n.findall(f"{{{BPMN}}}{kind}"):
                assert item.text and item.text.strip() in flow_ids, \
                    f"{n.get('id')} {kind} {item.text!r} is not a sequence flow"
        if n.get("default"):
            assert n.get("default") in {o.text.strip() for o in n.findall(f"{{{BPMN}}}outgoing") if o.text}, \
                f"{n.get('id')}: default flow {n.get('default')!r} is not one of its outgoing flows"
        if local(n) == "boundaryEvent":
            ref(n.get("attachedToRef"), f"boundaryEvent {n.get('id')} attachedToRef", FLOW_NODES)
    for p in participants:
        if p.get("processRef"):
            ref(p.get("processRef"), f"participant {p.get('id')} processRef", {"process"})

    # lanes: every flow node of a laned process in exactly one lane, every flowNodeRef a flow node
    for process in processes:
        laned = list(process.iter(f"{{{BPMN}}}lane"))
        if not laned:
            continue
        placed: dict[str, str] = {}
        for lane in laned:
            if lane.find(f"{{{BPMN}}}childLaneSet") is not None:
                continue
            for item in lane.findall(f"{{{BPMN}}}flowNodeRef"):
                target = ref(item.text, f"lane {lane.get('id')} flowNodeRef", FLOW_NODES)
                assert target.get("id") not in placed, \
                    f"{target.get('id')} is in lanes {placed[target.get('id')]} and {lane.get('id')}"
                placed[target.get("id")] = lane.get("id")
        own = [n.get("id") for n in nodes if n.getparent() is process]
        missing = sorted(set(own) - set(placed))
        assert not missing, f"process {process.get('id')}: flow nodes in no lane: {missing}"

    # diagram interchange
    diagrams = root.findall(f"{{{BPMNDI}}}BPMNDiagram")
    assert diagrams, "no bpmndi:BPMNDiagram"
    for plane in root.iter(f"{{{BPMNDI}}}BPMNPlane"):
        ref(plane.get("bpmnElement"), f"BPMNPlane {plane.get('id')}", {"process", "collaboration", "subProcess"})
    shapes: dict[str, etree._Element] = {}
    for shape in root.iter(f"{{{BPMNDI}}}BPMNShape"):
        target = ref(shape.get("bpmnElement"), f"BPMNShape {shape.get('id')}")
        assert target.get("id") not in shapes, f"{target.get('id')} has two shapes"
        bounds(shape)
        shapes[target.get("id")] = shape
    edges: dict[str, etree._Element] = {}
    for edge in root.iter(f"{{{BPMNDI}}}BPMNEdge"):
        target = ref(edge.get("bpmnElement"), f"BPMNEdge {edge.get('id')}")
        assert target.get("id") not in edges, f"{target.get('id')} has two edges"
        points = [(float(w.get("x", "nan")), float(w.get("y", "nan"))) for w in edge.findall(f"{{{DI}}}waypoint")]
        assert len(points) >= 2, f"edge {edge.get('id')}: fewer than two waypoints"
        assert all(x == x and y == y for x, y in points), f"edge {edge.get('id')}: non-numeric waypoint"
        edges[target.get("id")] = edge
        if local(target) == "sequenceFlow":
            source_shape, target_shape = shapes.get(target.get("sourceRef")), shapes.get(target.get("targetRef"))
            if source_shape is not None:
                assert on_box(points[0], bounds(source_shape)), \
                    f"edge {edge.get('id')} does not start on {target.get('sourceRef')}"
            if target_shape is not None:
                assert on_box(points[-1], bounds(target_shape)), \
                    f"edge {edge.get('id')} does not end on {target.get('targetRef')}"
    for element in [*nodes, *lanes, *participants]:
        assert element.get("id") in shapes, f"{local(element)} {element.get('id')} has no BPMNShape"
    for f in flows:
        assert f.get("id") in edges, f"sequenceFlow {f.get('id')} has no BPMNEdge"

    # the OMG schema (BPMN20.xsd with its DI, DC and semantic parts)
    BpmnValidator().validate(root, filename=path.name)
