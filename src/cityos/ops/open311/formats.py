"""GeoReport v2 renderings: JSON and XML (UTF-8, with the XML declaration), and the error format.

Errors: JSON ``[{"code": 404, "description": "..."}]``; XML
``<errors><error><code>404</code><description>...</description></error></errors>``.
"""

from __future__ import annotations

from typing import Any
from xml.etree import ElementTree as ET

import orjson
from fastapi.responses import Response

FORMATS = ("json", "xml")
JSON_TYPE = "application/json; charset=utf-8"
XML_TYPE = "text/xml; charset=utf-8"
# The element each list's items get in XML.
SINGULAR = {"attributes": "attribute", "values": "value", "endpoints": "endpoint", "formats": "format",
            "services": "service", "service_requests": "request", "errors": "error"}


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _fill(element: ET.Element, value: Any) -> None:
    if value is None:
        return
    if isinstance(value, dict):
        for key, child in value.items():
            _fill(ET.SubElement(element, key), child)
        return
    if isinstance(value, list):
        tag = SINGULAR.get(element.tag, "item")
        for child in value:
            _fill(ET.SubElement(element, tag), child)
        return
    element.text = _text(value)


def to_xml(root: str, value: Any) -> bytes:
    element = ET.Element(root)
    _fill(element, value)
    body: bytes = ET.tostring(element, encoding="utf-8", xml_declaration=True)
    return body


def render(fmt: str, root: str, value: Any, status: int = 200) -> Response:
    """`value` rendered as JSON as is, or as XML under `root` (lists: one child element per item)."""
    if fmt == "xml":
        return Response(to_xml(root, value), status_code=status, media_type=XML_TYPE)
    return Response(orjson.dumps(value), status_code=status, media_type=JSON_TYPE)


def error(fmt: str, status: int, description: str) -> Response:
    return render(fmt if fmt in FORMATS else "json", "errors", [{"code": status, "description": description}],
                  status)
