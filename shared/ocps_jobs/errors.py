"""One exception root that carries an error code and an HTTP status for every failure."""

from __future__ import annotations

__all__ = [
    "AuthenticationRequiredError",
    "BackendUnavailableError",
    "InvalidRequestError",
    "JobNotFoundError",
    "MethodNotAllowedError",
    "OCPSError",
    "PayloadTooLargeError",
    "PhaseConflictError",
    "RangeNotSatisfiableError",
    "ResultNotFoundError",
    "RouteNotFoundError",
    "SettingsError",
    "UnsupportedMediaTypeError",
]


class OCPSError(Exception):
    """Root of every error the service reports to a client."""

    code: str = "internal_error"
    status: int = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidRequestError(OCPSError):
    """The request is malformed or its values are out of range."""

    code = "invalid_request"
    status = 400


class JobNotFoundError(OCPSError):
    """No job with this id is visible to the caller."""

    code = "job_not_found"
    status = 404


class ResultNotFoundError(OCPSError):
    """No result with this id belongs to a job the caller may see."""

    code = "result_not_found"
    status = 404


class RouteNotFoundError(OCPSError):
    """No resource at this path."""

    code = "not_found"
    status = 404


class AuthenticationRequiredError(OCPSError):
    """No valid credentials: a bearer token or the trusted identity header."""

    code = "authentication_required"
    status = 401


class MethodNotAllowedError(OCPSError):
    """The path exists but not with this method."""

    code = "method_not_allowed"
    status = 405

    def __init__(self, message: str, allowed: list[str]) -> None:
        super().__init__(message)
        self.allowed = allowed


class PhaseConflictError(OCPSError):
    """The request is illegal in the job's current phase."""

    code = "phase_conflict"
    status = 409


class PayloadTooLargeError(OCPSError):
    """The body, or the job metadata it would create, is over a documented limit."""

    code = "payload_too_large"
    status = 413


class UnsupportedMediaTypeError(OCPSError):
    """The body is in a format the endpoint does not read."""

    code = "unsupported_media_type"
    status = 415


class RangeNotSatisfiableError(OCPSError):
    """The requested byte range lies outside the file."""

    code = "range_not_satisfiable"
    status = 416

    def __init__(self, message: str, size: int) -> None:
        super().__init__(message)
        self.size = size


class BackendUnavailableError(OCPSError):
    """Kubernetes or the object store did not answer; the request may be retried."""

    code = "service_unavailable"
    status = 503


class SettingsError(OCPSError):
    """An ``OCPS_*`` setting the service cannot run with.

    Every request is then a 503 naming it: the operator's to fix, and a readiness probe
    keeps the instance out of service meanwhile.
    """

    code = "misconfigured"
    status = 503
