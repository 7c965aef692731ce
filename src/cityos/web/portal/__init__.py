"""一网通办 One-stop services in the web UI.

- `/portal`: citizens and companies: search, guides, apply, track, supplement, rate, wallet;
- `/workbench`: officials' task inbox (department scope) with approve / reject / supplement;
- `/portal/bundle/{code}`, `/portal/bundles/{caseId}`: 一件事一次办 one-thing bundles;
- `/supervision`: overdue work and rating dashboards;
- `/verify`: public e-licence verification (QR link target);
- `/portal/parking`, `/portal/parking/reserve`, `/portal/parking/mine`: 智慧停车 find, reserve, my bills;
- `/portal/register`, `/portal/reset-password`, `/portal/report` (随手拍), `/portal/reports`: citizens' own.

Importing this package registers the pages (`@ui.page`) and their navigation entries.
"""

from __future__ import annotations

from cityos.web.portal import bundle, citizen, parking, portal, supervision, verify, workbench
from cityos.web.portal.common import register_nav

register_nav()

__all__ = ["bundle", "citizen", "parking", "portal", "supervision", "verify", "workbench"]
