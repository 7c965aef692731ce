"""Incidents: intake (alarms, Open311, hotline, manual), routing, merging, lifecycle, SLA clocks, hub view.

No HTTP here. Authorisation with the real resource happens in the API (it has the request);
the service records who did what (timeline + audit) and publishes every change:

- on the bus: ``ops.incident.changed`` {"tenant", "incident": <view>} after every committed change,
  ``ops.incident.sla`` {"tenant", "incident", "clock", "state": "yellow"} and
  ``ops.incident.escalated`` {"tenant", "incident", "clock", "from", "to"} from the sweep;
- in the hub: every incident as an ``Incident`` entity (``urn:ngsi-ld:Incident:<id>``) without
  personal data, written by an outbox publisher (`sync_hub`). Closed incidents stay in the hub
  with status ``closed`` (the temporal history and the KPIs need them); a report merged into
  another incident is removed from the hub while merged (its incident stands for it) and comes
  back when it is split out again.

SLA: the response clock runs from reported until accepted; the resolution clock from reported
(or the last reopen) until resolved. `tick(now)` turns a clock yellow at 80 % of its span and,
at the deadline, marks it breached and escalates the incident one level. Clocks use
`cityos.core.clock.now()`.

`IncidentService` is composed of one part per responsibility, each in its own module and each building
on the ones listed after it: the lifecycle and SLA sweep, intake, views (reads, the hub view, Open311
rows), SLA policies, places (districts, rivers, departments), and the core (records and plumbing).
"""

from __future__ import annotations

from cityos.ops.incidents.core import IncidentCore
from cityos.ops.incidents.intake import IncidentIntake
from cityos.ops.incidents.lifecycle import IncidentLifecycle
from cityos.ops.incidents.places import IncidentPlaces
from cityos.ops.incidents.policies import IncidentPolicies
from cityos.ops.incidents.views import IncidentViews


class IncidentService(IncidentLifecycle, IncidentIntake, IncidentViews, IncidentPolicies, IncidentPlaces,
                      IncidentCore):
    """Incidents: intake, routing, merging, lifecycle, SLA clocks, hub view (see the module docstring)."""
