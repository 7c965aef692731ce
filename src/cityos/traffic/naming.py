"""Platform names for things a road network names: signal ids for SUMO traffic lights, device names for the
detectors and cabinets the field derives from lane and traffic-light ids.

A lane's own detector is the `traffic-flow` device `lane_detector(lane)`, whose hub entity is
`urn:ngsi-ld:TrafficFlowObserved:<lane_detector(lane)>`: the field publishes under that name, the benches and the
demo register it, and the control loop and pre-emption's clear-ahead lead read it for the lanes a plan's links name
(the plan keeps the lane ids, as the network has them).

SUMO ids may hold any character (real-city networks: lanes like `-201201945#0.78_1`, joined clusters of 166
characters), while an IoT device name is `^[A-Za-z0-9][A-Za-z0-9_.\\-]{0,63}$` and a signal id
`^[A-Za-z0-9][A-Za-z0-9_.:\\-]{0,127}$`. An id that already makes a valid name keeps it unchanged (every name
derived so far stays what it was). Any other becomes a readable form (disallowed characters as `_`, no leading
punctuation, cut to fit) followed by `-` and the first `DIGEST_CHARS` hex digits of the id's SHA-256: the same
id always gives the same name, and two ids share one only if their digests' first 40 bits do.
"""

from __future__ import annotations

import hashlib
import re

from cityos.traffic.models import DETECTOR_NAME, SIGNAL_ID

DIGEST_CHARS = 10  # 40 bits: a collision between two of a city's ids is a 1-in-10^12-odd chance per pair
DEVICE_NAME_MAX = 64
SIGNAL_ID_MAX = 128
_NOT_IN_DEVICE_NAME = re.compile(r"[^A-Za-z0-9_.\-]")
_NOT_IN_SIGNAL_ID = re.compile(r"[^A-Za-z0-9_.:\-]")
_LEADING_PUNCTUATION = re.compile(r"^[^A-Za-z0-9]+")


def _fitted(source: str, suffix: str, valid: re.Pattern[str], disallowed: re.Pattern[str], limit: int) -> str:
    if valid.match(source + suffix):
        return source + suffix
    readable = _LEADING_PUNCTUATION.sub("", disallowed.sub("_", source))
    digest = hashlib.sha256(source.encode()).hexdigest()[:DIGEST_CHARS]
    room = limit - len(suffix) - len(digest) - 1
    readable = readable[:max(0, room)]
    return f"{readable}-{digest}{suffix}" if readable else f"{digest}{suffix}"


def device_name(source: str, suffix: str = "") -> str:
    """The IoT device name for the thing `source` (a SUMO lane or traffic-light id) names, `suffix` (e.g.
    `-advance`) ending it: `source + suffix` where that is a device name, else a readable form with a digest."""
    return _fitted(source, suffix, DETECTOR_NAME, _NOT_IN_DEVICE_NAME, DEVICE_NAME_MAX)


def signal_id(tls: str) -> str:
    """The platform's signal id for SUMO traffic light `tls`: `tls` itself where it is a signal id, else a readable
    form with a digest (the signal's name and the field keep the SUMO id)."""
    return _fitted(tls, "", SIGNAL_ID, _NOT_IN_SIGNAL_ID, SIGNAL_ID_MAX)


def lane_detector(lane: str) -> str:
    """The device name of lane `lane`'s own `traffic-flow` detector: the lane id where it is a device name (every
    lane of the city grid), else a readable form with a digest (RESCO Ingolstadt 21's `-201201945#0.78_1`)."""
    return device_name(lane)
