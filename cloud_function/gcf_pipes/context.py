"""A fresh Pipes context per HTTP request, and per-request forwarding of Python logging.

``open_dagster_pipes()`` keeps a process-wide singleton that stays closed after the first
request (dagster issue 22094), and redirecting stdout/stderr is process-wide too. A function
instance serves many requests, concurrently when ``THREADS`` > 1, so each request gets its own
``PipesContext`` and log records reach the context of the request that emitted them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from dagster_pipes import (
    DAGSTER_PIPES_CONTEXT_ENV_VAR,
    DAGSTER_PIPES_MESSAGES_ENV_VAR,
    PipesContext,
    PipesDefaultContextLoader,
    PipesMappingParamsLoader,
)

from gcf_pipes.writer import PipesCloudStorageMessageWriter

PIPES_PARAM_KEYS = (DAGSTER_PIPES_CONTEXT_ENV_VAR, DAGSTER_PIPES_MESSAGES_ENV_VAR)

# Loggers whose records never go to Dagster: transport chatter (and the writer's own HTTP calls).
_NOT_FORWARDED = ("urllib3", "google", "gunicorn", "werkzeug", "dagster-pipes")

_current_context: ContextVar[PipesContext | None] = ContextVar("pipes_context", default=None)


class PipesLoggingBridge(logging.Handler):
    """Forwards log records to the Pipes context of the request that emitted them."""

    def emit(self, record: logging.LogRecord) -> None:
        context = _current_context.get()
        if context is None or context.is_closed or record.name.startswith(_NOT_FORWARDED):
            return
        try:
            context.log.log(record.levelno, record.getMessage())
        except Exception:  # noqa: BLE001 - logging must never break the request
            self.handleError(record)


_bridge = PipesLoggingBridge(level=logging.INFO)


def install_logging_bridge(logger: logging.Logger | None = None) -> None:
    """Attach the bridge (once) so business-logic ``logging`` calls reach Dagster."""
    target = logger or logging.getLogger()
    if _bridge not in target.handlers:
        target.addHandler(_bridge)
    if target.level == logging.NOTSET or target.level > logging.INFO:
        target.setLevel(logging.INFO)


def split_pipes_params(body: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Separate the Pipes bootstrap params from the user's event in a request body."""
    params = {key: body[key] for key in PIPES_PARAM_KEYS if key in body}
    event = {key: value for key, value in body.items() if key not in PIPES_PARAM_KEYS}
    return params, event


@contextmanager
def open_request_pipes(
    pipes_params: Mapping[str, Any], writer: PipesCloudStorageMessageWriter
) -> Iterator[PipesContext]:
    """Open a Pipes context for one request; closing it flushes every message to GCS.

    The context is closed with the exception (if any) raised inside the block, so Dagster
    receives the remote error in the ``closed`` message.
    """
    context = PipesContext(
        params_loader=PipesMappingParamsLoader(pipes_params),
        context_loader=PipesDefaultContextLoader(),
        message_writer=writer,
    )
    token = _current_context.set(context)
    try:
        with context:
            yield context
    finally:
        _current_context.reset(token)
