"""Rules over live hub data and the alarms they raise (一网统管).

Modules: ``spec`` (the rule document: JSON Schema, JSON/YAML parsing, semantic checks), ``engine``
(three-valued evaluation of changes and timers; pure) with ``nodes`` (the condition tree),
``compiler`` (compiled rules) and ``index`` (the type × attribute index), ``models`` (tables),
``service`` (versioned rules, alarms, window state, the timer, Alert entities), ``api`` (router and
start-up), ``defaults.yaml`` (the shipped city rules).

Rule document (JSON or YAML; ``GET /api/ops/rules/schema`` serves the JSON Schema)
-------------------------------------------------------------------------------

.. code-block:: yaml

    id: air-pm25-sustained        # optional on create; [A-Za-z0-9][A-Za-z0-9_.-]{0,127}
    name: PM2.5 above 115 µg/m³ for 10 minutes          # required
    description: ...                                     # optional
    entityTypes: [AirQualityObserved]                    # required, 1-20 short names or IRIs
    idPattern: "urn:ngsi-ld:AirQualityObserved:aq-.*"    # optional; the WHOLE entity id must match
    condition: {...}                                     # required, see below
    severity: major                                      # critical | major | minor | warning
    category: environment                                # optional: the Alert's SDM category
    subCategory: airPollution                            # optional: the Alert's subCategory
    incident: {category: environment.air, level: general}  # optional; level: general | large | major
                                                         #   | especially_major. Alarms of a rule with
                                                         #   an incident spec carry it (incidents open one)
    department: environment                              # optional: the owning department
    enabled: true                                        # optional, default true

Attribute and type names are NGSI-LD short names expanded with the core @context (what the IoT
profiles write, e.g. ``pm25``, ``height``, ``LAeq``) or full IRIs. Unknown members anywhere → 400.

A condition is an object with exactly ONE of these members:

- ``threshold: {attr, op, value}``: op ``>``, ``>=``, ``<``, ``<=`` (number), ``==``, ``!=`` (one
  scalar), ``in``, ``notIn`` (a list).
- ``rate: {attr, op, value, per}``: change between the previous and this reading (by observedAt)
  scaled to ``per`` (a duration; default 60 s), compared with op (``>``, ``>=``, ``<``, ``<=``).
- ``sustained: {for, condition}`` or the short form ``sustained: {attr, op, value, for}``: the inner
  condition has held for at least ``for``.
- ``noData: {for, attr?}``: no update of ``attr`` (any attribute if omitted) for ``for``; fired by
  the timer. The timer starts at the entity's first update after the rule is enabled.
- ``geofence: {attr?, inside | outside}``: the entity's GeoProperty (``location`` by default) is
  inside (covered by) / outside (not intersecting) a GeoJSON Polygon or MultiPolygon (WGS 84).
- ``all: [conditions]`` (AND), ``any: [conditions]`` (OR); nesting up to 8 levels, 64 nodes.
- ``rule: <id>``: another rule's condition (its current version). Unknown ids and cycles → 400; a
  referenced rule cannot be deleted (409).
- ``device: offline | lowBattery | spike | frozen``: a device rule, fed by the IoT events
  ``iot.device.offline``/``iot.device.online``, ``iot.device.alarm`` (lowBattery),
  ``iot.data.quality`` (spike, frozen); ``entityTypes: [Device]``; it cannot be combined.

Durations are seconds (a number) or ISO 8601 (``PT10M``, ``P1DT2H``), more than 0 and at most 30 days.

Evaluation is three-valued: true raises an alarm (or repeats it), false clears it, unknown (the
attribute missing or of the wrong type) changes nothing.

Alarms
------
Lifecycle ``active → acknowledged → cleared`` (or ``active → cleared``); one open alarm per (rule,
entity) (a unique index), repeats raise ``count`` and update ``value``/``lastSeen``. Auto-clear when
the condition is false again (device rules: ``iot.device.online``; battery above 20 % on the
Device entity's ``batteryLevel``); spike/frozen alarms are cleared by hand. A manual clear while the
condition still holds is followed by a new alarm at the next true evaluation. Deleting or disabling
a rule, or deleting the entity, clears its alarms.

Each alarm is the Smart Data Models ``Alert`` entity ``urn:ngsi-ld:Alert:alarm-<id>`` in the alarm's
tenant with: ``category``, ``subCategory``, ``severity`` (SDM scale: critical→critical, major→high,
minor→medium, warning→low), ``alarmSeverity`` (ours), ``alertSource`` (Relationship to the entity),
``dateIssued``, ``validFrom``, ``validTo`` (when cleared), ``description``, ``name`` (the rule's),
``location`` (the entity's), ``alarmStatus``, ``ruleId``, ``district``, ``department``,
``acknowledgedAt``/``acknowledgedBy``, ``incidentCategory``/``incidentLevel``. The Alert is
rewritten on raise, acknowledge and clear (not on repeats).

Bus events: ``ops.alarm.raised``, ``ops.alarm.updated`` (repeat or acknowledge),
``ops.alarm.cleared``, each ``{"tenant": str, "alarm": <the alarm as GET /api/ops/alarms/{id} shows it>}``.
"""
