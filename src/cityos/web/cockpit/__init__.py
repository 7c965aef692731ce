"""The operations cockpit (一网统管): `/cockpit` map and KPIs, incidents, rules. Pages register on import."""

from __future__ import annotations

from cityos.web.cockpit import citymap, incidents, overview, rules  # noqa: F401
from cityos.web.cockpit.common import COCKPIT_ROLES
from cityos.web.shell import add_nav

add_nav("一张图 Map", "/cockpit", COCKPIT_ROLES, icon="map")
add_nav("事件 Incidents", "/cockpit/incidents", COCKPIT_ROLES, icon="report")
add_nav("规则 Rules", "/cockpit/rules", COCKPIT_ROLES, icon="rule")

citymap.install()
