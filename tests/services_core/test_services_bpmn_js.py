"""Every shipped BPMN file opens in bpmn.io: the real bpmn-js viewer, in a real headless Chromium.

tests/services_core/test_services_bpmn_diagrams.py checks the files against the OMG XSD and the
diagram interchange by hand; this test has the actual library used by bpmn.io and Camunda Modeler
import them. The viewer bundle is vendored (tests/services_core/vendor/bpmn-js-<version>/, see its
README) so no npm is needed at test time. Per BPMN file under src/cityos/services:

- `viewer.importXML(xml)` resolves (no error) and reports no warnings (unresolved references,
  unknown elements/attributes, DI pointing at nothing, ... are warnings in bpmn-js, not errors);
- every flow node, sequence flow, lane and participant of the XML (parsed here with xml.etree) is
  in the viewer's elementRegistry, with the same BPMN type, and has drawn SVG graphics with a
  non-empty box (an element without DI is silently not drawn: that is what this catches);
- the canvas viewbox (the drawn diagram's extent) is non-empty;
- a screenshot per process goes to /tmp/cityos-screens/bpmn-<name>.png for a human to look at.

Negative tests feed deliberately broken files through the same checks to show they can fail.
Skips only when /usr/bin/chromium or /usr/bin/chromedriver is missing (like the web tests).
"""

from __future__ import annotations

import http.server
import re
import socket
import threading
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

from cityos.services.catalogue import CATALOGUE_DIR

BPMN_JS_VERSION = "18.31.1"
VENDOR = Path(__file__).parent / "vendor" / f"bpmn-js-{BPMN_JS_VERSION}"
BUNDLE = "bpmn-viewer.production.min.js"
CSS = "diagram-js.css"
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
SCREENS = Path("/tmp/cityos-screens")

BPMN = "http://www.omg.org/spec/BPMN/20100524/MODEL"
# Subclasses of bpmn:FlowNode (BPMN 2.0 spec, as in bpmn-moddle's schema), plus the other drawn kinds checked.
FLOW_NODES = {
    "startEvent", "endEvent", "intermediateCatchEvent", "intermediateThrowEvent", "boundaryEvent",
    "implicitThrowEvent", "task", "userTask", "serviceTask", "scriptTask", "businessRuleTask", "manualTask",
    "sendTask", "receiveTask", "callActivity", "subProcess", "transaction", "adHocSubProcess",
    "exclusiveGateway", "inclusiveGateway", "parallelGateway", "eventBasedGateway", "complexGateway",
}
DRAWN = FLOW_NODES | {"sequenceFlow", "lane", "participant"}
FILES = sorted(CATALOGUE_DIR.parent.rglob("*.bpmn"))

PAGE = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>bpmn-js {BPMN_JS_VERSION}</title>
<link rel="stylesheet" href="/{CSS}">
<style>html, body, #canvas {{ margin: 0; width: 100%; height: 100%; background: #fff; }}</style>
</head><body><div id="canvas"></div><script src="/{BUNDLE}"></script></body></html>
"""

# arguments: xml, [[id, "bpmn:Type"], ...], done-callback. Replies with a plain JSON-able object.
IMPORT_JS = """
const [xml, expected, done] = arguments;
(async () => {
  if (window.viewer) { window.viewer.destroy(); }
  const viewer = window.viewer = new BpmnJS({ container: '#canvas' });
  let result;
  try {
    result = await viewer.importXML(xml);
  } catch (err) {
    done({ ok: false, error: String(err && err.message || err),
           warnings: (err && err.warnings || []).map((w) => String(w.message)) });
    return;
  }
  const canvas = viewer.get('canvas');
  const registry = viewer.get('elementRegistry');
  canvas.zoom('fit-viewport', 'auto');
  const problems = [];
  for (const [id, type] of expected) {
    const element = registry.get(id);
    if (!element) { problems.push(`${id} (${type}): not in the elementRegistry (not drawn)`); continue; }
    const actual = element.businessObject && element.businessObject.$type;
    if (actual !== type) { problems.push(`${id}: drawn as ${actual}, expected ${type}`); }
    const gfx = registry.getGraphics(id);
    const box = gfx && gfx.getBBox();
    if (!box || !(box.width > 0 || box.height > 0)) { problems.push(`${id} (${type}): no visible graphics`); }
  }
  const vb = canvas.viewbox();
  const all = registry.getAll();
  done({
    ok: true,
    warnings: result.warnings.map((w) => String(w.message)),
    problems,
    viewbox: { x: vb.x, y: vb.y, width: vb.width, height: vb.height, scale: vb.scale,
               inner: { x: vb.inner.x, y: vb.inner.y, width: vb.inner.width, height: vb.inner.height } },
    shapes: all.filter((e) => !e.waypoints && e.type !== 'label' && e !== canvas.getRootElement()).length,
    connections: all.filter((e) => !!e.waypoints).length,
    labels: all.filter((e) => e.type === 'label').length,
  });
})();
"""


def drawn_elements(xml: str) -> list[tuple[str, str]]:
    """[(id, "bpmn:UserTask"), ...] for every flow node, sequence flow, lane and participant."""
    found = []
    for node in ET.fromstring(xml.encode()).iter():
        if not isinstance(node.tag, str) or not node.tag.startswith(f"{{{BPMN}}}"):
            continue
        kind = node.tag.split("}", 1)[1]
        if kind in DRAWN and node.get("id"):
            found.append((node.get("id", ""), f"bpmn:{kind[0].upper()}{kind[1:]}"))
    return found


def open_in_bpmn_js(driver: Any, xml: str) -> tuple[dict[str, Any], list[str]]:
    """Import `xml` into a fresh bpmn-js viewer; the viewer's report and the list of problems found."""
    expected = drawn_elements(xml)
    report: dict[str, Any] = driver.execute_async_script(IMPORT_JS, xml, [list(e) for e in expected])
    if not report["ok"]:
        return report, [f"import failed: {report['error']}", *(f"warning: {w}" for w in report["warnings"])]
    problems = [f"warning: {w}" for w in report["warnings"]] + list(report["problems"])
    inner = report["viewbox"]["inner"]
    if not (inner["width"] > 0 and inner["height"] > 0):
        problems.append(f"empty canvas: viewbox {report['viewbox']}")
    return report, problems


class _Handler(http.server.BaseHTTPRequestHandler):
    files: ClassVar[dict[str, tuple[bytes | None, str]]] = {"/": (PAGE.encode(), "text/html; charset=utf-8"),
             f"/{BUNDLE}": (None, "text/javascript; charset=utf-8"),
             f"/{CSS}": (None, "text/css; charset=utf-8")}

    def do_GET(self) -> None:
        body, kind = self.files.get(self.path, (b"", ""))
        if not kind:
            self.send_error(404)
            return
        if body is None:
            body = (VENDOR / self.path.lstrip("/")).read_bytes()
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass


@pytest.fixture(scope="module")
def page_url() -> Iterator[str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), _Handler)
    thread = threading.Thread(target=server.serve_forever, name="bpmn-js-page", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def viewer(page_url: str) -> Iterator[Any]:
    if not CHROMIUM.exists() or not CHROMEDRIVER.exists():
        pytest.skip("the bpmn-js test needs /usr/bin/chromium and /usr/bin/chromedriver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1600,1000", "--force-device-scale-factor=1"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(30)
    driver.set_script_timeout(20)
    try:
        driver.get(page_url)
        loaded = driver.execute_script("return typeof BpmnJS === 'function' && document.styleSheets.length")
        assert loaded, "the vendored bpmn-js bundle (or its CSS) did not load"
        yield driver
    finally:
        driver.quit()


def diagram_size(xml: str) -> tuple[int, int]:
    """Width and height of the drawing from its dc:Bounds (to size the screenshot at about 1:1)."""
    right = bottom = 0.0
    for match in re.finditer(r'<dc:Bounds x="([-\d.]+)" y="([-\d.]+)" width="([\d.]+)" height="([\d.]+)"', xml):
        x, y, w, h = (float(v) for v in match.groups())
        right, bottom = max(right, x + w), max(bottom, y + h)
    return int(right), int(bottom)


def test_the_vendored_bundle_is_the_pinned_release() -> None:
    head = (VENDOR / BUNDLE).read_text(encoding="utf-8")[:200]
    assert f"bpmn-js - bpmn-viewer v{BPMN_JS_VERSION}" in head, head
    assert (VENDOR / "LICENSE").is_file() and (VENDOR / "README.md").is_file()
    assert FILES, f"no .bpmn files under {CATALOGUE_DIR.parent}"


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_bpmn_file_opens_in_bpmn_js(viewer: Any, path: Path) -> None:
    xml = path.read_text(encoding="utf-8")
    width, height = diagram_size(xml)
    viewer.set_window_size(min(max(width + 80, 1000), 2400), min(max(height + 80, 700), 2800))
    report, problems = open_in_bpmn_js(viewer, xml)
    SCREENS.mkdir(parents=True, exist_ok=True)
    viewer.save_screenshot(str(SCREENS / f"bpmn-{path.stem}.png"))
    assert not problems, f"{path.name} in bpmn-js {BPMN_JS_VERSION}:\n" + "\n".join(problems)
    expected = drawn_elements(xml)
    flows = sum(1 for _, kind in expected if kind == "bpmn:SequenceFlow")
    assert report["connections"] == flows, report
    assert report["shapes"] == len(expected) - flows, report
    print(f"{path.name}: {report['shapes']} shapes, {report['connections']} connections, "
          f"{report['labels']} labels, viewbox inner {report['viewbox']['inner']}")


MINIMAL = """<?xml version="1.0" encoding="UTF-8"?>
<bpmn:definitions xmlns:bpmn="http://www.omg.org/spec/BPMN/20100524/MODEL"
    xmlns:bpmndi="http://www.omg.org/spec/BPMN/20100524/DI" xmlns:dc="http://www.omg.org/spec/DD/20100524/DC"
    xmlns:di="http://www.omg.org/spec/DD/20100524/DI" id="defs" targetNamespace="https://cityos.example/test">
  <bpmn:process id="p" isExecutable="true">
    <bpmn:startEvent id="start"><bpmn:outgoing>flow_1</bpmn:outgoing></bpmn:startEvent>
    <bpmn:userTask id="task" name="Review"><bpmn:incoming>flow_1</bpmn:incoming></bpmn:userTask>
    <bpmn:sequenceFlow id="flow_1" sourceRef="start" targetRef="task" />
  </bpmn:process>
  <bpmndi:BPMNDiagram id="d">
    <bpmndi:BPMNPlane id="plane" bpmnElement="p">
      <bpmndi:BPMNShape id="start_di" bpmnElement="start"><dc:Bounds x="100" y="100" width="36" height="36" />
      </bpmndi:BPMNShape>
      <bpmndi:BPMNShape id="task_di" bpmnElement="task"><dc:Bounds x="200" y="78" width="100" height="80" />
      </bpmndi:BPMNShape>
      <bpmndi:BPMNEdge id="flow_1_di" bpmnElement="flow_1">
        <di:waypoint x="136" y="118" /><di:waypoint x="200" y="118" />
      </bpmndi:BPMNEdge>
    </bpmndi:BPMNPlane>
  </bpmndi:BPMNDiagram>
</bpmn:definitions>
"""

BROKEN = {
    # A sequence flow pointing at a node that does not exist: bpmn-js reports an unresolved reference.
    "flow-to-missing-node": (MINIMAL.replace('targetRef="task"', 'targetRef="no_such_task"'),
                             "unresolved reference <no_such_task>"),
    # A shape for nothing: bpmn-js warns that the DI references no element.
    "shape-for-missing-element": (MINIMAL.replace('bpmnElement="task"', 'bpmnElement="ghost"'), "ghost"),
    # A node without DI: bpmn-js says nothing, it is just not drawn; the elementRegistry check catches it.
    "node-without-shape": (re.sub(r'<bpmndi:BPMNShape id="task_di".*?</bpmndi:BPMNShape>', "", MINIMAL, flags=re.S),
                           "task (bpmn:UserTask): not in the elementRegistry"),
    # Not BPMN at all: the import itself fails.
    "not-bpmn": ("<definitions><oops/></definitions>", "import failed"),
}


def test_a_valid_minimal_diagram_passes(viewer: Any) -> None:
    report, problems = open_in_bpmn_js(viewer, MINIMAL)
    assert not problems, problems
    assert (report["shapes"], report["connections"]) == (2, 1), report


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_a_broken_diagram_is_reported(viewer: Any, case: str) -> None:
    xml, expected = BROKEN[case]
    _report, problems = open_in_bpmn_js(viewer, xml)
    assert any(expected in p for p in problems), f"{case}: expected a problem mentioning {expected!r}, got {problems}"
