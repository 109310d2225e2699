"""Errors the Pipes plumbing reports in the function's HTTP response."""

from __future__ import annotations


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
