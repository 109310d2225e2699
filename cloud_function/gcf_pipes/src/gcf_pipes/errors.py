"""Errors the Pipes plumbing reports in the function's HTTP response."""

from __future__ import annotations

from google.api_core import exceptions as gexc
from requests import exceptions as rexc

# Worth another try: the store was busy or the connection was lost (the writer's uploads, the
# cancel marker's look before a commit).
TRANSIENT_GCS_ERRORS: tuple[type[BaseException], ...] = (
    gexc.TooManyRequests,
    gexc.InternalServerError,
    gexc.BadGateway,
    gexc.ServiceUnavailable,
    gexc.GatewayTimeout,
    rexc.ConnectionError,
    rexc.Timeout,
)


class RequestError(Exception):
    """An error the caller caused: reported with ``status`` and the offending ``field``."""

    status = 400

    def __init__(self, message: str, *, field: str | None = None, status: int | None = None):
        super().__init__(message)
        self.message = message
        self.field = field
        if status is not None:
            self.status = status


class PipesMessageDeliveryError(RuntimeError):
    """Pipes messages could not be delivered to GCS (reported as HTTP 502)."""
