"""The errors a domain service raises when access is refused or the service is busy, and
`require_allowed`, the policy check that raises them (401 anonymous, 403 signed in, 503 busy).

Domain packages import these from here or, as before, from `cityos.security.service`.
"""

from __future__ import annotations

from cityos.core.errors import ProblemError
from cityos.security.policy import Principal, Resource, authorize


class Forbidden(ProblemError):
    status, error_type, title = 403, "https://cityos.dev/errors/Forbidden", "Forbidden"


class Unauthorized(ProblemError):
    status, error_type, title = 401, "https://cityos.dev/errors/Unauthorized", "Authentication required"

    def __init__(self, detail: str = "this operation needs a bearer token") -> None:
        super().__init__(detail, headers={"WWW-Authenticate": 'Bearer realm="cityos"'})


def require_allowed(principal: Principal | None, action: str, resource: Resource) -> None:
    """`authorize` for a domain service: 401 for an anonymous caller, 403 for a signed-in one."""
    decision = authorize(principal, action, resource)
    if not decision:
        raise Unauthorized() if principal is None else Forbidden(f"{action}: {decision.reason}")


class ServiceUnavailable(ProblemError):
    status, error_type, title = 503, "https://cityos.dev/errors/ServiceUnavailable", "Service busy"
