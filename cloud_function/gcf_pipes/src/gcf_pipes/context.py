"""A fresh Pipes context per HTTP request, and per-request forwarding of Python logging.

``open_dagster_pipes()`` keeps a process-wide singleton that stays closed after the first
request (dagster issue 22094), and redirecting stdout/stderr is process-wide too. A function
instance serves many requests, concurrently when ``THREADS`` > 1, so each request gets its own
``PipesContext`` and log records reach the context of the request that emitted them.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from dagster_pipes import (
    DAGSTER_PIPES_CONTEXT_ENV_VAR,
    DagsterPipesError,
    PipesContext,
    PipesContextData,
    PipesContextLoader,
    PipesException,
    PipesParams,
    PipesParamsLoader,
)

from gcf_pipes.bootstrap import PipesBootstrap
from gcf_pipes.errors import RequestError
from gcf_pipes.logs import CurrentRequestLogHandler, request_log_handler
from gcf_pipes.redact import Redactor
from gcf_pipes.writer import PipesCloudStorageMessageWriter

# Causes and contexts reported with an exception (the chain is never this long in practice).
_MAX_CHAINED_EXCEPTIONS = 8

# Loggers whose records never go to Dagster: transport chatter (and the writer's own HTTP calls).
_NOT_FORWARDED = ("urllib3", "google", "gunicorn", "werkzeug", "dagster-pipes")

_current_context: ContextVar[PipesContext | None] = ContextVar("pipes_context", default=None)


class PipesLoggingBridge(logging.Handler):
    """Forwards log records to the Pipes context of the request that emitted them."""

    def forwards(self, record: logging.LogRecord) -> bool:
        """Whether ``record`` goes to a request's Pipes context (and so to stdout from there)."""
        context = _current_context.get()
        return (
            context is not None
            and not context.is_closed
            and record.levelno >= self.level
            and not record.name.startswith(_NOT_FORWARDED)
        )

    def emit(self, record: logging.LogRecord) -> None:
        context = _current_context.get()
        if context is None or not self.forwards(record):
            return
        try:
            context.log.log(record.levelno, record.getMessage())
        except Exception:  # noqa: BLE001 - logging must never break the request
            self.handleError(record)


_bridge = PipesLoggingBridge(level=logging.INFO)
_not_bridged = CurrentRequestLogHandler()
_not_bridged.addFilter(lambda record: not _bridge.forwards(record))


def install_logging_bridge(logger: logging.Logger | None = None) -> None:
    """Attach the bridge (once) so business-logic ``logging`` calls reach Dagster, and write
    every record it does not forward as a structured line on stdout, in a request or not (a
    warning after the request's Pipes context closed, the writer thread's, transport
    warnings): once the root logger has a handler, Python's last-resort output shows none."""
    target = logger or logging.getLogger()
    for handler in (_bridge, _not_bridged):
        if handler not in target.handlers:
            target.addHandler(handler)
    if target.level == logging.NOTSET or target.level > logging.INFO:
        target.setLevel(logging.INFO)


class PipesBootstrapParamsLoader(PipesParamsLoader):
    """Hands ``PipesContext`` the checked bootstrap params, never the raw request values."""

    def __init__(self, bootstrap: PipesBootstrap):
        self._bootstrap = bootstrap

    def is_dagster_pipes_process(self) -> bool:
        return True

    def load_context_params(self) -> PipesParams:
        return {"data": self._bootstrap.context_data}

    def load_messages_params(self) -> PipesParams:
        return self._bootstrap.messages_params


class PipesCheckedContextLoader(PipesContextLoader):
    """Yields context data that was loaded and checked already; it opens nothing."""

    def __init__(self, data: PipesContextData):
        self._data = data

    @contextmanager
    def load_context(self, params: PipesParams) -> Iterator[PipesContextData]:
        yield self._data


def _caller_must_define(name: str, field: str) -> property:
    """``PipesContext.<name>``, with "undefined for this step" as the caller's error (400)."""
    original: property = getattr(PipesContext, name)

    def get(self: PipesContext) -> Any:
        try:
            return original.fget(self) if original.fget else None
        except DagsterPipesError as exc:
            qualified = f"{DAGSTER_PIPES_CONTEXT_ENV_VAR}.{field}"
            raise RequestError(f"{qualified}: {exc}", field=qualified) from None

    return property(get, doc=original.__doc__)


class RequestPipesContext(PipesContext):
    """A ``PipesContext`` for one request: when the job asks for something the request's
    context does not define (the asset of a step with several, the partition of an
    unpartitioned step), that is a :class:`RequestError` naming the field, not a crash."""

    asset_key = _caller_must_define("asset_key", "asset_keys")
    asset_keys = _caller_must_define("asset_keys", "asset_keys")
    code_version = _caller_must_define("code_version", "asset_keys")
    code_version_by_asset_key = _caller_must_define(
        "code_version_by_asset_key", "code_version_by_asset_key"
    )
    provenance = _caller_must_define("provenance", "asset_keys")
    provenance_by_asset_key = _caller_must_define(
        "provenance_by_asset_key", "provenance_by_asset_key"
    )
    partition_key = _caller_must_define("partition_key", "partition_key")
    partition_key_range = _caller_must_define("partition_key_range", "partition_key_range")
    partition_time_window = _caller_must_define("partition_time_window", "partition_key_range")

    def get_extra(self, key: str) -> Any:
        try:
            return super().get_extra(key)
        except DagsterPipesError as exc:
            field = f"{DAGSTER_PIPES_CONTEXT_ENV_VAR}.extras.{key}"
            raise RequestError(f"{field}: {exc}", field=field) from None


def refusal_exception(exc: RequestError, redactor: Redactor) -> PipesException:
    """A refusal as the ``closed`` message reports it: the text of its HTTP answer, no stack
    and no chained errors (they would show the function's code and paths to the caller)."""
    return {
        "name": type(exc).__name__,
        "message": redactor.text(exc.message),
        "stack": [],
        "cause": None,
        "context": None,
    }


def pipes_exception(exc: BaseException, redactor: Redactor, depth: int = 0) -> PipesException:
    """The ``closed`` message's exception (as ``PipesContext`` builds it), redacted; a
    refusal's is :func:`refusal_exception`."""
    if isinstance(exc, RequestError):
        return refusal_exception(exc, redactor)

    def chained(inner: BaseException | None) -> PipesException | None:
        if inner is None or depth >= _MAX_CHAINED_EXCEPTIONS:
            return None
        return pipes_exception(inner, redactor, depth + 1)

    return {
        "name": type(exc).__name__,
        "message": redactor.text("".join(traceback.format_exception_only(exc))),
        "stack": [redactor.text(line) for line in traceback.format_tb(exc.__traceback__)],
        "cause": chained(exc.__cause__),
        "context": chained(exc.__context__),
    }


@contextmanager
def open_request_pipes(
    bootstrap: PipesBootstrap,
    writer: PipesCloudStorageMessageWriter,
    redactor: Redactor | None = None,
) -> Iterator[PipesContext]:
    """Open a Pipes context for one request; closing it flushes every message to GCS.

    The context is closed with the exception (if any) raised inside the block, environment
    values redacted, so Dagster receives the remote error in the ``closed`` message.
    """
    context = RequestPipesContext(
        params_loader=PipesBootstrapParamsLoader(bootstrap),
        context_loader=PipesCheckedContextLoader(bootstrap.context_data),
        message_writer=writer,
    )
    context.log.addHandler(request_log_handler())  # its lines reach Cloud Logging too
    token = _current_context.set(context)
    try:
        try:
            yield context
        except BaseException as exc:
            context.close(pipes_exception(exc, redactor or Redactor.from_env()))
            raise
        context.close()
    finally:
        _current_context.reset(token)
