"""Dagster Pipes plumbing for an HTTP Cloud Function (no business logic here).

``handle_pipes_request`` is loaded on first use: it brings flask, which a Cloud Run Jobs task
(``open_request_pipes`` without HTTP) does not need and should not pay for at start.
"""

import importlib
from typing import TYPE_CHECKING, Any

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
from gcf_pipes.logs import install_structured_logging
from gcf_pipes.redact import Redactor
from gcf_pipes.writer import (
    PipesCloudStorageMessageWriter,
    PipesCloudStorageMessageWriterChannel,
    WriterSettings,
    chunk_key,
)

if TYPE_CHECKING:
    from gcf_pipes.http import handle_pipes_request

_LAZY = {"handle_pipes_request": "gcf_pipes.http"}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value  # looked up once
    return value


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
