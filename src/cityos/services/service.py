"""一网通办 logic: catalogue, uploads, applications, workflow steps, tasks, bundles, supervision, metrics.

No HTTP here. Access checks that need the real resource go through the `Check` callback the API
passes in (it is `security.api.enforce` bound to the request, so refusals are audited).

Every workflow step is: load the application and its serialized workflow, run the step in
SpiffWorkflow, reconcile the task rows with the workflow's ready user tasks, and write it all in one
transaction guarded by the workflow's version (optimistic lock: a concurrent step → 409).

`ServiceDesk` is composed of one part per responsibility, each in its own module and each building on
the ones listed after it: bundles (一件事), submission, progression (task actions, 补正, timers),
uploads and materials, views (reads, inbox, supervision, metrics), the catalogue, and the desk's core
(state and plumbing).
"""

from __future__ import annotations

from cityos.services.bundles import BundlesDesk
from cityos.services.catalogue_admin import CatalogueDesk
from cityos.services.desk import DeskCore
from cityos.services.progression import ProgressionDesk
from cityos.services.submission import SubmissionDesk
from cityos.services.uploads import UploadsDesk
from cityos.services.views import ViewsDesk


class ServiceDesk(BundlesDesk, SubmissionDesk, ProgressionDesk, UploadsDesk, ViewsDesk, CatalogueDesk, DeskCore):
    """The one-stop service desk. One per process; state lives in the database."""
