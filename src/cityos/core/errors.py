"""ProblemDetails errors (RFC 7807) with the NGSI-LD error type URIs (ETSI GS CIM 009 §5.5.2)."""

from __future__ import annotations

from typing import Any

NGSI_ERRORS = "https://uri.etsi.org/ngsi-ld/errors/"


class ProblemError(Exception):
    """An error a caller can act on. Every API turns it into a ProblemDetails body."""

    status: int = 400
    error_type: str = "BadRequestData"
    title: str = "Bad request data"

    def __init__(self, detail: str, *, headers: dict[str, str] | None = None, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers = headers or {}
        self.extra = extra

    @property
    def type_uri(self) -> str:
        return self.error_type if self.error_type.startswith("http") else NGSI_ERRORS + self.error_type

    def to_problem(self) -> dict[str, Any]:
        body: dict[str, Any] = {"type": self.type_uri, "title": self.title, "status": self.status,
                                "detail": self.detail}
        body.update(self.extra)
        return body


class BadRequestData(ProblemError):
    status, error_type, title = 400, "BadRequestData", "Bad request data"


class InvalidRequest(ProblemError):
    status, error_type, title = 400, "InvalidRequest", "Invalid request"


class ResourceNotFound(ProblemError):
    status, error_type, title = 404, "ResourceNotFound", "Resource not found"


class NonexistentTenant(ProblemError):
    status, error_type, title = 404, "NonexistentTenant", "Tenant does not exist"


class AlreadyExists(ProblemError):
    status, error_type, title = 409, "AlreadyExists", "Already exists"


class OperationNotSupported(ProblemError):
    status, error_type, title = 422, "OperationNotSupported", "Operation not supported"


class TooManyResults(ProblemError):
    status, error_type, title = 403, "TooManyResults", "Too many results"


class TooLarge(ProblemError):
    status, error_type, title = 413, "BadRequestData", "Request entity too large"


class UnsupportedMediaType(ProblemError):
    status, error_type, title = 415, "InvalidRequest", "Unsupported media type"


class NotAcceptable(ProblemError):
    status, error_type, title = 406, "InvalidRequest", "Not acceptable"


class LdContextNotAvailable(ProblemError):
    status, error_type, title = 503, "LdContextNotAvailable", "@context not available"


class InternalError(ProblemError):
    status, error_type, title = 500, "InternalError", "Internal error"


class Conflict(ProblemError):
    status, error_type, title = 409, "Conflict", "Conflict"
