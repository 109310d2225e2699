"""Dagster Pipes plumbing for an HTTP Cloud Function (no business logic here)."""

from gcf_pipes.bootstrap import PipesBootstrap, parse_bootstrap
from gcf_pipes.cancel import (
    Cancellation,
    CancellationPolicy,
    DeadlineExceeded,
    RequestCancelled,
    cancelled,
    current_cancellation,
    raise_if_cancelled,
)
from gcf_pipes.context import install_logging_bridge, open_request_pipes
from gcf_pipes.errors import PipesMessageDeliveryError, RequestError
from gcf_pipes.http import handle_pipes_request
from gcf_pipes.logs import install_structured_logging
from gcf_pipes.redact import Redactor
from gcf_pipes.writer import (
    PipesCloudStorageMessageWriter,
    PipesCloudStorageMessageWriterChannel,
    WriterSettings,
    chunk_key,
)

__all__ = [
    "Cancellation",
    "CancellationPolicy",
    "DeadlineExceeded",
    "PipesBootstrap",
    "PipesCloudStorageMessageWriter",
    "PipesCloudStorageMessageWriterChannel",
    "PipesMessageDeliveryError",
    "Redactor",
    "RequestCancelled",
    "RequestError",
    "WriterSettings",
    "cancelled",
    "chunk_key",
    "current_cancellation",
    "handle_pipes_request",
    "install_logging_bridge",
    "install_structured_logging",
    "open_request_pipes",
    "parse_bootstrap",
    "raise_if_cancelled",
]
